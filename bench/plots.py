"""Fault-latency distributions of `make bench` as PNG files (matplotlib, the optional extra `plot`).

Two kinds: the DSM core's faults raised by a plain thread (every sample, per
placement), and the guest's per-page access costs from pagecost (its log2
histograms of TSC cycles, 1 node against 2 nodes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

CORE_LABELS = {"read_fault": "remote read fault", "write_fault": "remote write fault",
               "write_after_read": "write after read (invalidates one copy)",
               "pingpong": "ping-pong round (2 hand-offs)"}


def matplotlib_missing() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'ivyvm[plot]'): no latency plots drawn"
    return None


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def core_latencies(core: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per placement: the distribution of each core fault kind, in us, log scale."""
    plt = _pyplot()
    written = []
    for name, placement in core["placements"].items():
        run = placement["default"]
        kinds = [k for k in CORE_LABELS if run.get(k, {}).get("samples_us")]
        if not kinds:
            continue
        fig, axes = plt.subplots(len(kinds), 1, figsize=(8, 2.2 * len(kinds)), squeeze=False)
        for ax, kind in zip(axes[:, 0], kinds):
            samples = run[kind]["samples_us"]
            lo, hi = max(min(samples), 0.1), max(samples)
            bins = [lo * (hi / lo) ** (i / 60) for i in range(61)] if hi > lo else 20
            ax.hist(samples, bins=bins, color="tab:blue")
            ax.set_xscale("log")
            ax.axvline(run[kind]["median_us"], color="tab:red", label=f"median {run[kind]['median_us']:.1f} us")
            ax.set_title(CORE_LABELS[kind], fontsize=10)
            ax.set_ylabel("faults")
            ax.legend(fontsize=8)
        axes[-1, 0].set_xlabel("latency (us, log scale)")
        fig.suptitle(f"DSM core, 2 nodes, placement {name}", fontsize=11)
        fig.tight_layout()
        path = out / f"core-latency-{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def guest_page_costs(guests: dict[str, Any], out: Path) -> list[Path]:
    """One PNG: per access kind, how many pages cost each power of two of microseconds."""
    plt = _pyplot()
    hz = guests["tsc_hz"]
    hists = guests["page_costs"]["histograms_cycles"]
    phases = list(hists["two_nodes"])
    fig, axes = plt.subplots(len(phases), 1, figsize=(8, 2.0 * len(phases)), squeeze=False)
    for ax, phase in zip(axes[:, 0], phases):
        for where, colour in (("one_node", "tab:green"), ("two_nodes", "tab:blue")):
            counts = hists[where].get(phase, [])
            xs = [(1 << b) / hz * 1e6 for b in range(len(counts))]
            ax.bar([x for x, c in zip(xs, counts) if c], [c for c in counts if c],
                   width=[x * 0.9 for x, c in zip(xs, counts) if c], align="edge", alpha=0.6, color=colour,
                   label="1 node, no DSM" if where == "one_node" else "2 nodes")
        ax.set_xscale("log")
        ax.set_title(phase.replace("_", " "), fontsize=10)
        ax.set_ylabel("pages")
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("one access (us, log scale; bars are powers of two of TSC cycles)")
    fig.suptitle("guest page costs (pagecost)", fontsize=11)
    fig.tight_layout()
    path = out / "guest-page-costs.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]
