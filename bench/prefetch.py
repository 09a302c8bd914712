"""Prefetch on and off in one run: what a sequential and a random-order remote
read cost a guest, and pagewalk across 2 nodes, each way (docs/protocol.md).

pagecost and pagewalk run on 2 nodes with classic Ivy reads (which prefetch
needs), with ``--prefetch`` and without, alternating, beside pagecost and
pagewalk on 1 node in the same run, the baselines of issue 10's targets:
(a) at most 1.0 x a first touch on one node, pagewalk on 2 nodes at least
0.25 x one node. Per-access figures are the median of the runs' medians;
on / off: lower is better for an access, higher for pagewalk's MiB/s.
"""
from __future__ import annotations

import statistics
from typing import Any

from bench.guests import page_costs, pagewalk_mib_s, run_guest
from bench.on_off import no_samples, print_table, row, run_alone, ways

WAYS = ways("--prefetch", base=("--read-ownership", "ivy"))
ACCESSES = {"read_seq": "(a) sequential remote read", "read_rand": "(b) random-order remote read"}


def bench_prefetch(build: str, hz: float, repeat: int) -> dict[str, Any]:
    first_touch: list[float] = []
    walk_one: list[float] = []
    access = no_samples(ACCESSES)
    walk: dict[str, list[float]] = {"off": [], "on": []}

    for _ in range(repeat):
        first_touch.append(page_costs(run_guest(build, "pagecost", 1, 1), hz)["first_touch"]["median_us"])
        walk_one.append(pagewalk_mib_s(run_guest(build, "pagewalk", 2, 1), hz))
        for way, extra in WAYS:
            costs = page_costs(run_guest(build, "pagecost", 2, 2, extra=extra), hz)
            for a in ACCESSES:
                access[a][way].append(costs[a]["median_us"])
            walk[way].append(pagewalk_mib_s(run_guest(build, "pagewalk", 2, 2, extra=extra), hz))
    ft, w1 = statistics.median(first_touch), statistics.median(walk_one)
    out: dict[str, Any] = {"runs": repeat, "first_touch_one_node_us": ft, "pagewalk_one_node_mib_s": w1}
    for a, label in ACCESSES.items():
        out[a] = row(label, access[a], against={"first_touch": ft})
    out["pagewalk"] = row("pagewalk on 2 nodes", walk, unit="mib_s", better="higher", against={"one_node": w1})
    return out


def print_prefetch(r: dict[str, Any]) -> None:
    rows = [(r[a], " (target (a): <= 1.0)" if a == "read_seq" else "") for a in ACCESSES]
    rows.append((r["pagewalk"], " of 1 node (target: >= 0.25)"))
    print_table("prefetch: 2 nodes, ivy reads", r["runs"], 40, rows, against_heading="/ 1-node first touch (off, on)")


if __name__ == "__main__":
    raise SystemExit(run_alone(bench_prefetch, print_prefetch))
