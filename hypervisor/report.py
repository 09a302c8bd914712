"""`ivyvm report STATS.json [TRACE]`: the profile of `--stats-json` drawn as PNG files.

Three figures, written next to STATS.json (or into --output DIR):
  latency.png   each node's fault-latency histogram (the DSM's log2 buckets);
  timeline.png  faults over time per node: from TRACE's fault slices when a
                trace (`--trace`, Chrome JSON) is given, else from the
                per-node series sampled every 0.1 s during the run;
  pages.png     a page x node heat map of faults (the hottest pages of every node).
matplotlib is an optional extra (`pip install 'ivyvm[plot]'`; `make setup`
installs it); without it the command says so in one line, status 7.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .profile import SchemaError, load

MISSING_PLOT = ("ivyvm report draws with matplotlib, which is not installed: "
                "pip install 'ivyvm[plot]' (make setup installs it)")
TRACE_BINS = 50                # a trace's faults are counted in this many intervals
MIN_BIN_SECONDS = 0.0001


class ReportError(Exception):
    """A stats or trace file that cannot be drawn; the message is the user's one line."""


def read_inputs(stats: Path, trace: Path | None) -> tuple[dict[str, Any], dict[int, list[float]] | None]:
    try:
        doc = load(stats)
    except OSError as err:
        raise ReportError(f"cannot read {stats}: {err.strerror or err}") from None
    except (ValueError, SchemaError) as err:
        raise ReportError(f"{stats} is not an ivyvm --stats-json file: {err}") from None
    if not doc["nodes"]:
        raise ReportError(f"{stats} holds no node's statistics ({doc.get('note', 'empty')})")
    return doc, None if trace is None else fault_times(trace)


def fault_times(trace: Path) -> dict[int, list[float]]:
    """Seconds from the trace's first fault of every vCPU fault slice, per node (Chrome JSON, hypervisor.trace)."""
    try:
        events = json.loads(trace.read_text())
    except OSError as err:
        raise ReportError(f"cannot read {trace}: {err.strerror or err}") from None
    except ValueError as err:
        raise ReportError(f"{trace} is not a JSON trace: {err}") from None
    if isinstance(events, dict):
        events = events.get("traceEvents")
    if not isinstance(events, list):
        raise ReportError(f"{trace} has no traceEvents list")
    starts: dict[int, list[float]] = {}
    for event in events:
        if isinstance(event, dict) and event.get("ph") == "X" and event.get("cat") == "vcpu":
            if isinstance(event.get("pid"), int) and isinstance(event.get("ts"), (int, float)):
                starts.setdefault(event["pid"], []).append(event["ts"] / 1e6)
    if not starts:
        raise ReportError(f"{trace} holds no vCPU fault slices")
    first = min(min(ts) for ts in starts.values())
    return {node: sorted(t - first for t in ts) for node, ts in starts.items()}


def draw(doc: dict[str, Any], trace_faults: dict[int, list[float]] | None, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")            # files only, no display
    from matplotlib import pyplot as plt

    nodes = doc["nodes"]
    paths = []
    fig, axes = plt.subplots(len(nodes), 1, figsize=(8, 2.2 * len(nodes) + 0.6), squeeze=False)
    for ax, node in zip(axes[:, 0], nodes):
        hist = node["latency"]["histogram"]
        ax.bar([f"{_us(low)}" for low, _ in hist], [n for _, n in hist], color="tab:blue")
        ax.set_title(f"node {node['node']}: {node['latency']['count']} faults timed", fontsize=9)
        ax.set_ylabel("faults")
        ax.tick_params(axis="x", labelsize=7, rotation=45)
    axes[-1, 0].set_xlabel("fault latency, bucket lower bound (bucket: [b, 2b))")
    paths.append(_save(fig, out_dir / "latency.png", plt))

    fig, ax = plt.subplots(figsize=(8, 3.5))
    span = max((max(ts, default=0.0) for ts in (trace_faults or {}).values()), default=0.0)
    for node in nodes:
        if trace_faults is not None:
            times = trace_faults.get(node["node"], [])
            step = max(span / TRACE_BINS, MIN_BIN_SECONDS)    # a short run still gets several bins
            counts = [0] * (int(span / step) + 1)
            for t in times:
                counts[int(t / step)] += 1
        else:
            counts, step = node["timeline"]["faults"], node["timeline"]["interval_s"]
        ax.step([i * step for i in range(len(counts))], [c / step for c in counts], where="post", marker=".",
                label=f"node {node['node']}")
    source = "trace fault slices" if trace_faults is not None else "sampled by each node"
    ax.set_title(f"faults per second ({source})", fontsize=9)
    ax.set_xlabel("seconds since the vCPUs started" if trace_faults is None else "seconds since the first fault")
    ax.set_ylabel("faults / s")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "timeline.png", plt))

    pages = sorted({p["address"] for node in nodes for p in node["hot_pages"]})
    counts_by = {node["node"]: {p["address"]: p["faults"] for p in node["hot_pages"]} for node in nodes}
    grid = [[counts_by[node["node"]].get(page, 0) for node in nodes] for page in pages] or [[0] * len(nodes)]
    fig, ax = plt.subplots(figsize=(2 + 1.2 * len(nodes), 1.5 + 0.18 * max(1, len(pages))))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(nodes)), [f"node {n['node']}" for n in nodes], fontsize=8)
    ax.set_yticks(range(len(pages)), [f"{p:#x}" for p in pages], fontsize=6)
    ax.set_ylabel("guest-physical page")
    ax.set_title("faults per page and node (each node's hottest pages)", fontsize=9)
    fig.colorbar(image, ax=ax, label="faults")
    paths.append(_save(fig, out_dir / "pages.png", plt))
    return paths


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _us(ns: int) -> str:
    return f"{ns / 1000:g} us" if ns < 1_000_000 else f"{ns / 1e6:g} ms"
