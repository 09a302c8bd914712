"""Batching on and off in one run: what it does to the DSM core's remote read fault and
ping-pong, and to guests whose nodes send bursts (docs/dsm.md, "Batching").

With batching a node's second and later frames to one peer in one pass of its
event loop leave in one send() (DsmOptions.batch); the first goes at once, so
a lone fault's request and reply are never held back. The core scenarios
(bench/dsm_bench.py, each placement) and the guests run with ``--no-batch``
and ``--batch``, alternating: pagecost (a)-(d) on 2 nodes, with GiantVM reads
and with ivy reads and ``--prefetch`` (whose windows are the bursts), pagewalk
with prefetch, and the message-passing guest with 4 vCPUs on 4 nodes. Each
figure is the median of the runs' medians; on / off: lower is better for a
latency or a run's time, higher for pagewalk's MiB/s.
"""
from __future__ import annotations

import os
import statistics
import sys
from typing import Any

from bench.dsm_bench import placements, scenario
from bench.guests import PHASES, page_costs, pagewalk_mib_s, run_guest
from bench.on_off import no_samples, print_table, row, run_alone
from hypervisor.devkit.cluster import Cluster

ACCESSES = tuple(p for p in PHASES if p != "first_touch")     # (a)-(d)
OFF, ON = ("--no-batch",), ("--batch",)
PREFETCH = ("--read-ownership", "ivy", "--prefetch")
GUEST_WAYS = (("off", OFF), ("on", ON))
CORE = ("read_fault", "pingpong")


def bench_core(repeat: int, quick: bool) -> dict[str, Any]:
    """The core's read fault and ping-pong, batching off and on, per placement."""
    npages, rounds = (100, 300) if quick else (500, 1500)
    chosen, _ = placements(sorted(os.sched_getaffinity(0)), "both")
    out: dict[str, Any] = {}
    for where in chosen:
        samples = no_samples(CORE)
        for _ in range(repeat):
            for way, batch in (("off", False), ("on", True)):
                r = scenario(2, npages, {"batch": batch}, rounds, where)
                if r["errors"]:
                    raise RuntimeError(f"core scenario, batch {batch}: {r['errors']}")
                for figure in CORE:
                    samples[figure][way].append(r[figure]["median_us"])
        out[where.name] = {f: row(f"core {f.replace('_', ' ')} ({where.name} CPUs)", samples[f]) for f in CORE}
    return out


# The batch's bound (DsmOptions.batch_bytes) against batching off: a sequential read of every page
# with prefetch on 2 node processes, so the owner answers windows of up to 32 READs at once.
# Smaller bounds send sooner (the second reply of a window waits for fewer seals), larger ones
# send less often. 0 is the runtime's default, IVY_RT_BATCH_BYTES (8 KiB).
BOUNDS = (4 << 10, 0, 32 << 10, 128 << 10)


def bench_bound(repeat: int, quick: bool) -> dict[str, Any]:
    npages = 200 if quick else 2000
    where = placements(sorted(os.sched_getaffinity(0)), "both")[0][-1]   # per-node when there are 2 CPUs
    ways = {"off": {"batch": False}} | {f"{b >> 10 or 'default'}": {"batch_bytes": b} for b in BOUNDS}
    totals: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(repeat):
        for way, extra in ways.items():
            with Cluster(2, pages=npages + 64, options={"read_ownership": "ivy", "prefetch": True, **extra},
                         cpus=where.node_cpus(2)) as cluster:
                cluster.workers[1].call("run", workload="write_pages", pages_list=list(range(64, 64 + npages)))
                ns = cluster.workers[0].call("run", workload="touch_timed", pages_list=list(range(64, 64 + npages)),
                                             write=0)["ns"]
                errors = [r["stats"]["error"] for r in cluster.stop_all() if r["stats"]["error"]]
            if errors:
                raise RuntimeError(f"bound {way}: {errors}")
            totals[way].append(sum(ns) / len(ns) / 1000)
    off = statistics.median(totals["off"])
    return {"placement": where.name, "pages": npages,
            "us_per_page": {way: statistics.median(v) for way, v in totals.items()},
            "vs_off": {way: statistics.median(v) / off for way, v in totals.items()}, "all_runs": totals}


def bench_batch(build: str, hz: float, repeat: int, quick: bool = False) -> dict[str, Any]:
    costs = {"giantvm": no_samples(ACCESSES), "prefetch": no_samples(ACCESSES)}
    walk: dict[str, list[float]] = {"off": [], "on": []}
    mp4: dict[str, list[float]] = {"off": [], "on": []}
    # send() calls per frame sent, per guest and way: 1.00 means nothing was batched, so a
    # difference in that guest's figures is the host's noise, not batching.
    sends: dict[str, dict[str, list[float]]] = no_samples(("pagecost", "pagecost_prefetch", "pagewalk", "mp4"))

    def sends_per_frame(run: Any) -> float:
        return sum(s["sends"] for s in run.node_stats) / max(1, sum(s["messages_sent"] for s in run.node_stats))

    for _ in range(repeat):
        for way, flag in GUEST_WAYS:
            for kind, base in (("giantvm", ()), ("prefetch", PREFETCH)):
                run = run_guest(build, "pagecost", 2, 2, extra=base + flag)
                for a, c in page_costs(run, hz).items():
                    if a in ACCESSES:
                        costs[kind][a][way].append(c["median_us"])
                sends["pagecost" if kind == "giantvm" else "pagecost_prefetch"][way].append(sends_per_frame(run))
            w = run_guest(build, "pagewalk", 2, 2, extra=PREFETCH + flag)
            walk[way].append(pagewalk_mib_s(w, hz))
            sends["pagewalk"][way].append(sends_per_frame(w))
            m = run_guest(build, "mp_litmus", 4, 4, extra=flag)
            mp4[way].append(m.fields["cycles"] / hz * 1e3)
            sends["mp4"][way].append(sends_per_frame(m))
    out: dict[str, Any] = {"runs": repeat, "core": bench_core(repeat, quick), "bound": bench_bound(repeat, quick)}
    for kind, label in (("giantvm", "2 nodes"), ("prefetch", "2 nodes, ivy reads, prefetch")):
        out[kind] = {a: row(f"{PHASES[a]} ({label})", costs[kind][a]) for a in ACCESSES}
    out["pagewalk"] = row("pagewalk, 2 nodes, prefetch", walk, unit="mib_s", better="higher")
    out["sends_per_frame"] = {guest: {way: statistics.median(v) for way, v in s.items()}
                              for guest, s in sends.items()}
    out["mp4"] = row("message passing (mp_litmus), 4 vCPUs on 4 nodes", mp4, unit="ms")
    return out


def print_batch(r: dict[str, Any]) -> None:
    rows = [(c, "") for place in r["core"].values() for c in place.values()]
    rows += [(r[kind][a], "") for kind in ("giantvm", "prefetch") for a in ACCESSES]
    rows += [(r["pagewalk"], ""), (r["mp4"], "")]
    print_table("batching", r["runs"], 68, rows)
    print("send() calls per frame sent, off / on (1.00: nothing batched): " + ", ".join(
        f"{guest} {s['off']:.2f} / {s['on']:.2f}" for guest, s in r["sends_per_frame"].items()))
    b = r["bound"]
    cells = ", ".join(f"{way if way in ('off', 'default') else way + ' KiB'} {us:.1f} us ({b['vs_off'][way]:.2f} x)"
                      for way, us in b["us_per_page"].items())
    print(f"the bound: a sequential read of {b['pages']} pages with prefetch ({b['placement']} CPUs), mean per page, "
          f"against off (lower is better): {cells}")


if __name__ == "__main__":
    QUICK = "--quick" in sys.argv[1:]
    raise SystemExit(run_alone(lambda build, hz, repeat: bench_batch(build, hz, repeat, QUICK), print_batch))
