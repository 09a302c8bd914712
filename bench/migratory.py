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

from typing import Any

from bench.guests import page_costs, run_guest
from bench.on_off import no_samples, print_table, row, run_alone, ways

FIGURES = {
    "pagecost_rmw": "(d) read-modify-write of a page the other node wrote (pagecost)",
    "turns_rmw": "read-modify-write, the nodes taking turns on every page (migratory)",
}


def bench_migratory(build: str, hz: float, repeat: int) -> dict[str, Any]:
    samples = no_samples(FIGURES)
    for _ in range(repeat):
        for way, extra in ways("--migratory"):
            pc = run_guest(build, "pagecost", 2, 2, extra=extra)
            samples["pagecost_rmw"][way].append(page_costs(pc, hz)["rmw"]["median_us"])
            turns = run_guest(build, "migratory", 2, 2, extra=extra)
            samples["turns_rmw"][way].append(turns.medians["rmw"] / hz * 1e6)
    out: dict[str, Any] = {"runs": repeat}
    for f, label in FIGURES.items():
        out[f] = row(label, samples[f])
    return out


def print_migratory(r: dict[str, Any]) -> None:
    print_table("migratory pages: 2 nodes", r["runs"], 72, [(r[f], "") for f in FIGURES])


if __name__ == "__main__":
    raise SystemExit(run_alone(bench_migratory, print_migratory))
