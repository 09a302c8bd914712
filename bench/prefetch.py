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

from bench.guests import page_costs, run_guest

IVY = ("--read-ownership", "ivy")
WAYS = (("off", IVY), ("on", IVY + ("--prefetch",)))
ACCESSES = {"read_seq": "(a) sequential remote read", "read_rand": "(b) random-order remote read"}


def bench_prefetch(build: str, hz: float, repeat: int) -> dict[str, Any]:
    first_touch: list[float] = []
    walk_one: list[float] = []
    access: dict[str, dict[str, list[float]]] = {a: {"off": [], "on": []} for a in ACCESSES}
    walk: dict[str, list[float]] = {"off": [], "on": []}

    def walk_rate(run: Any) -> float:
        return 3 * run.fields["mib"] / (run.fields["cycles"] / hz)

    for _ in range(repeat):
        first_touch.append(page_costs(run_guest(build, "pagecost", 1, 1), hz)["first_touch"]["median_us"])
        walk_one.append(walk_rate(run_guest(build, "pagewalk", 2, 1)))
        for way, extra in WAYS:
            costs = page_costs(run_guest(build, "pagecost", 2, 2, extra=extra), hz)
            for a in ACCESSES:
                access[a][way].append(costs[a]["median_us"])
            walk[way].append(walk_rate(run_guest(build, "pagewalk", 2, 2, extra=extra)))
    ft, w1 = statistics.median(first_touch), statistics.median(walk_one)
    out: dict[str, Any] = {"runs": repeat, "first_touch_one_node_us": ft, "pagewalk_one_node_mib_s": w1}
    for a, label in ACCESSES.items():
        off, on = statistics.median(access[a]["off"]), statistics.median(access[a]["on"])
        out[a] = {"label": label, "off_us": off, "on_us": on, "on_vs_off": on / off, "better": "lower",
                  "off_vs_first_touch": off / ft, "on_vs_first_touch": on / ft, "all_runs": access[a]}
    off, on = statistics.median(walk["off"]), statistics.median(walk["on"])
    out["pagewalk"] = {"label": "pagewalk on 2 nodes", "off_mib_s": off, "on_mib_s": on, "on_vs_off": on / off,
                       "better": "higher", "off_vs_one_node": off / w1, "on_vs_one_node": on / w1,
                       "all_runs": walk}
    return out


def print_prefetch(r: dict[str, Any]) -> None:
    print(f"\n== prefetch: 2 nodes, ivy reads, on against off, median of {r['runs']} alternating run(s)")
    print(f"{'access':40s} {'off':>10s} {'on':>10s} {'on / off':>26s} {'/ 1-node first touch (off, on)':>32s}")
    for a in ACCESSES:
        row = r[a]
        print(f"{row['label']:40s} {row['off_us']:7.1f} us {row['on_us']:7.1f} us "
              f"{row['on_vs_off']:8.2f} x (lower is better) "
              f"{row['off_vs_first_touch']:8.2f} x, {row['on_vs_first_touch']:5.2f} x"
              + (" (target (a): <= 1.0)" if a == "read_seq" else ""))
    w = r["pagewalk"]
    print(f"{w['label']:40s} {w['off_mib_s']:5.1f} MiB/s {w['on_mib_s']:5.1f} MiB/s "
          f"{w['on_vs_off']:8.2f} x (higher is better) "
          f"{w['off_vs_one_node']:8.2f} x, {w['on_vs_one_node']:5.2f} x of 1 node (target: >= 0.25)")


def main() -> int:
    from bench.guests import build_bench_guests, tsc_hz
    import sys
    quick = "--quick" in sys.argv[1:]
    build = build_bench_guests(quick)
    print_prefetch(bench_prefetch(build, tsc_hz(), 1 if quick else 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
