"""Migratory pages on and off in one run: what a read-modify-write of a page
handed between two nodes costs a guest, each way (docs/protocol.md).

Two guests, each run on 2 nodes with ``--migratory`` and without,
alternating: pagecost's (d), whose pages were only written by the other
node (the turn in which the pattern is learnt, so the option can only
cost), and the `migratory` guest, in which the nodes take turns to
increment every page (its later turns are the pattern the option is for).
Each figure is the median of the runs' per-access medians; the ratio is
on / off, lower is better.
"""
from __future__ import annotations

import statistics
from typing import Any

from bench.guests import page_costs, run_guest

FIGURES = {
    "pagecost_rmw": "(d) read-modify-write of a page the other node wrote (pagecost)",
    "turns_rmw": "read-modify-write, the nodes taking turns on every page (migratory)",
}


def bench_migratory(build: str, hz: float, repeat: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {f: {"off": [], "on": []} for f in FIGURES}
    for _ in range(repeat):
        for way, extra in (("off", ()), ("on", ("--migratory",))):
            pc = run_guest(build, "pagecost", 2, 2, extra=extra)
            samples["pagecost_rmw"][way].append(page_costs(pc, hz)["rmw"]["median_us"])
            turns = run_guest(build, "migratory", 2, 2, extra=extra)
            samples["turns_rmw"][way].append(turns.medians["rmw"] / hz * 1e6)
    out: dict[str, Any] = {"runs": repeat}
    for f, label in FIGURES.items():
        off, on = statistics.median(samples[f]["off"]), statistics.median(samples[f]["on"])
        out[f] = {"label": label, "off_us": off, "on_us": on, "on_vs_off": on / off, "better": "lower",
                  "all_runs": samples[f]}
    return out


def print_migratory(r: dict[str, Any]) -> None:
    print(f"\n== migratory pages: 2 nodes, on against off, median of {r['runs']} alternating run(s)")
    print(f"{'access':72s} {'off':>10s} {'on':>10s} {'on / off':>26s}")
    for f in FIGURES:
        row = r[f]
        print(f"{row['label']:72s} {row['off_us']:7.1f} us {row['on_us']:7.1f} us "
              f"{row['on_vs_off']:8.2f} x (lower is better)")
