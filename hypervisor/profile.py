"""`--stats` and `--stats-json`: each node's DSM profile, as a table and as JSON.

A node builds its report when it stops (`node_report`), from the DSM core's
counters (hypervisor.dsm.DsmNode.stats), its per-vCPU blocked time
(DsmNode.vcpus) and a coarse time series of faults its control plane
sampled (`FaultSampler`). `ivyvm run --nodes N` has every node write its
report to a file, then prints them in node order (`format_table`) and joins
them into one document (`document`). SCHEMA describes that document;
`check(document)` is the validator the tests use. docs/profile.md explains
how to read all of it.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Iterable

from .dsm import DsmNode
from .native_consts import PAGE_SIZE, WireType

SCHEMA_NAME = "ivyvm-stats/1"
SAMPLE_SECONDS = 0.1           # the fault time series' first interval
MAX_SAMPLES = 3000             # then pairs merge and the interval doubles: bounded memory
HOT_PAGES = 64                 # pages per node in the report (the table shows the first few)
PERCENTILES = (50, 90, 99)
MESSAGE_NAMES = tuple(t.name for t in WireType)
NO_DSM_LINE = ("--stats: nothing to report: with one node the guest's RAM is plain local memory, "
               "no page fault goes through the DSM (use --nodes 2 or more)")


class FaultSampler:
    """Faults read by the DSM core, counted per interval by a control-plane thread (not per fault)."""

    def __init__(self, dsm: DsmNode, interval: float = SAMPLE_SECONDS) -> None:
        self._dsm = dsm
        self.interval = interval
        self.counts: list[int] = []
        self._last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-sampler", daemon=True)

    def start(self) -> "FaultSampler":
        self._last = self._dsm.faults_read()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        total = self._dsm.faults_read()
        self.counts.append(total - self._last)
        self._last = total
        if len(self.counts) >= MAX_SAMPLES:
            self.counts = [a + b for a, b in zip(self.counts[0::2], self.counts[1::2])]
            self.interval *= 2
            self._stop.wait(0)    # the next wait uses the new interval

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        return {"interval_s": self.interval, "faults": list(self.counts)}


def percentile_bounds(histogram: dict[int, int], count: int, max_ns: int = 0) -> dict[str, int]:
    """p50/p90/p99 as the upper bound (ns) of the log2 bucket holding that rank: a bound, not a value.

    The largest latency seen (max_ns) bounds every percentile too, so the top bucket's bound is cut to it."""
    bounds: dict[str, int] = {}
    if not count:
        return {f"p{p}_ns": 0 for p in PERCENTILES}
    for p in PERCENTILES:
        rank, seen = -(-count * p // 100), 0      # the ceil(count * p / 100)-th latency
        for low in sorted(histogram):
            seen += histogram[low]
            if seen >= rank:
                bounds[f"p{p}_ns"] = min(2 * low, max_ns) if max_ns else 2 * low
                break
    return bounds


def node_report(node: int, vcpus: Iterable[int], dsm: DsmNode, run_seconds: float,
                timeline: dict[str, Any] | None) -> dict[str, Any]:
    """One node's object of the stats document (see SCHEMA)."""
    stats = dsm.stats()
    latency = stats["latency"]
    histogram = latency["histogram_ns"]
    blocked = []
    run_ns = max(1, int(run_seconds * 1e9))
    for v in sorted(dsm.vcpus(), key=lambda v: v["vcpu"]):
        total = v["blocked_ns"] + (v["waiting_ns"] if v["waiting"] else 0)
        blocked.append({"vcpu": v["vcpu"], "faults": v["faults"], "blocked_ns": total, "max_ns": v["max_ns"],
                        "share": round(total / run_ns, 6)})
    return {
        "node": node,
        "vcpus": list(vcpus),
        "run_seconds": round(run_seconds, 6),
        "faults": stats["faults"],
        "latency": {"count": latency["count"], "mean_ns": latency["mean_ns"], "max_ns": latency["max_ns"],
                    **percentile_bounds(histogram, latency["count"], latency["max_ns"]),
                    "histogram": [[low, n] for low, n in sorted(histogram.items())]},
        "messages": {name: {"sent": stats["messages_sent"][name], "received": stats["messages_received"][name],
                            "bytes_sent": stats["bytes_sent"][name],
                            "bytes_received": stats["bytes_received"][name]}
                     for name in MESSAGE_NAMES},
        "forwards": stats["forwards"],
        "reply_hops": stats["reply_hops"],
        "replies_with_data": stats["replies_with_data"],
        "replies_elided": stats["replies_elided"],
        "parked": stats["parked"],
        "held": stats["held"],
        "sends": stats["sends"],
        "vcpu_blocked": blocked,
        "hot_pages": [{"address": page * PAGE_SIZE, "faults": n} for page, n in dsm.top_pages(HOT_PAGES)],
        "timeline": timeline or {"interval_s": SAMPLE_SECONDS, "faults": []},
        "error": stats["error"],
    }


def document(nodes: list[dict[str, Any]], note: str | None = None) -> dict[str, Any]:
    """The --stats-json file: every node's object, in node order."""
    doc: dict[str, Any] = {"schema": SCHEMA_NAME, "nodes": sorted(nodes, key=lambda n: n["node"])}
    if note is not None:
        doc["note"] = note
    return doc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


# --- the table --------------------------------------------------------------------
def _us(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.1f} us"
    return f"{ns / 1e6:.1f} ms" if ns < 1_000_000_000 else f"{ns / 1e9:.2f} s"


def _bytes(n: int) -> str:
    if n < 10 << 10:
        return f"{n} B"
    return f"{n / 1024:.0f} KiB" if n < 10 << 20 else f"{n / (1 << 20):.1f} MiB"


def format_node(report: dict[str, Any], hot: int = 5) -> list[str]:
    f, lat = report["faults"], report["latency"]
    vcpus = ", ".join(map(str, report["vcpus"]))
    lines = [f"node {report['node']} (vCPUs {vcpus}), {report['run_seconds']:.2f} s"
             + (f", stopped by: {report['error']}" if report["error"] else "")]
    lines.append(f"  faults        {f['read']} read, {f['write']} write, {f['wp']} write-protect; "
                 f"{f['remote']} remote, {f['local']} local; {f['spurious']} spurious, "
                 f"{f['duplicate']} while already fetching")
    if lat["count"]:
        lines.append(f"  latency       {lat['count']} timed: mean {_us(lat['mean_ns'])}, p50 <= {_us(lat['p50_ns'])}, "
                     f"p90 <= {_us(lat['p90_ns'])}, p99 <= {_us(lat['p99_ns'])}, max {_us(lat['max_ns'])} "
                     "(p: upper bounds of log2 buckets)")
    else:
        lines.append("  latency       no fault was timed")
    lines.append("  messages      type          sent  received    bytes out     bytes in")
    for name, m in report["messages"].items():
        if m["sent"] or m["received"]:
            lines.append(f"                {name:<10} {m['sent']:>7} {m['received']:>9} {_bytes(m['bytes_sent']):>12} "
                         f"{_bytes(m['bytes_received']):>12}")
    replies = report["replies_with_data"] + report["replies_elided"]
    hops = report["reply_hops"] / replies if replies else 0.0
    lines.append(f"  forwarding    {report['forwards']} requests passed on, {hops:.2f} hops per reply received; "
                 f"{report['replies_elided']} of {replies} replies without bytes (versions matched)")
    frames = sum(m["sent"] for m in report["messages"].values())
    lines.append(f"  sends         {report['sends']} send() calls carried the {frames} frames sent (batching: docs/dsm.md)")
    for v in report["vcpu_blocked"]:
        lines.append(f"  vCPU {v['vcpu']:<3}      blocked {_us(v['blocked_ns'])} in {v['faults']} faults, "
                     f"{100 * v['share']:.1f}% of the run, longest {_us(v['max_ns'])}")
    if report["hot_pages"]:
        pages = ", ".join(f"{p['address']:#x} ({p['faults']})" for p in report["hot_pages"][:hot])
        lines.append(f"  hottest pages {pages}   (guest-physical address, faults)")
    return lines


def format_table(reports: list[dict[str, Any]], missing: Iterable[int] = ()) -> str:
    """Every node's profile, node 0 first; `missing` nodes left no report."""
    lines = [f"DSM profile of {len(reports) + len(list(missing))} nodes"]
    by_node = {r["node"]: r for r in reports}
    for node in sorted(set(by_node) | set(missing)):
        if node in by_node:
            lines += format_node(by_node[node])
        else:
            lines.append(f"node {node}: no statistics (it did not stop cleanly)")
    return "\n".join(lines)


# --- the schema -------------------------------------------------------------------
# A small JSON-schema-like description: a type name, or {key: spec} for an
# object with exactly these keys, or [spec] for a list of spec. "?" prefix:
# may be null. Documented in docs/profile.md; `check` enforces it.
COUNTS = {"read": "int", "write": "int", "wp": "int", "spurious": "int", "duplicate": "int",
          "local": "int", "remote": "int"}
NODE_SCHEMA: dict[str, Any] = {
    "node": "int", "vcpus": ["int"], "run_seconds": "number",
    "faults": COUNTS,
    "latency": {"count": "int", "mean_ns": "int", "max_ns": "int", "p50_ns": "int", "p90_ns": "int",
                "p99_ns": "int", "histogram": [["int"]]},
    "messages": {name: {"sent": "int", "received": "int", "bytes_sent": "int", "bytes_received": "int"}
                 for name in MESSAGE_NAMES},
    "forwards": "int", "reply_hops": "int", "replies_with_data": "int", "replies_elided": "int",
    "parked": "int", "held": "int", "sends": "int",
    "vcpu_blocked": [{"vcpu": "int", "faults": "int", "blocked_ns": "int", "max_ns": "int", "share": "number"}],
    "hot_pages": [{"address": "int", "faults": "int"}],
    "timeline": {"interval_s": "number", "faults": ["int"]},
    "error": "?str",
}
SCHEMA: dict[str, Any] = {"schema": "str", "nodes": [NODE_SCHEMA], "note": "optional str"}


class SchemaError(ValueError):
    """A stats document that does not match SCHEMA; the message names the path."""


def check(value: Any, spec: Any = None, path: str = "$") -> None:
    if spec is None:
        spec = SCHEMA
    if isinstance(spec, str):
        if spec.startswith("?") and value is None:
            return
        kind = spec.lstrip("?").replace("optional ", "")
        ok = {"int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
              "number": isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
              "str": isinstance(value, str)}[kind]
        if not ok:
            raise SchemaError(f"{path}: expected {kind}, got {value!r}")
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check(item, spec[0], f"{path}[{i}]")
        return
    if not isinstance(value, dict):
        raise SchemaError(f"{path}: expected an object, got {type(value).__name__}")
    required = {k for k, v in spec.items() if not (isinstance(v, str) and v.startswith("optional "))}
    missing, extra = required - set(value), set(value) - set(spec)
    if missing or extra:
        raise SchemaError(f"{path}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    for key, item in value.items():
        check(item, spec[key], f"{path}.{key}")
    if path == "$" and value.get("schema") != SCHEMA_NAME:
        raise SchemaError(f"$.schema: expected {SCHEMA_NAME!r}, got {value.get('schema')!r}")


def load(path: Path) -> dict[str, Any]:
    """A stats document from a file, checked against SCHEMA."""
    doc = json.loads(path.read_text())
    check(doc)
    return doc

