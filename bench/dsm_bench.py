"""DSM benchmark: fault latencies and ping-pong against floors measured in the same run.

    python -m bench.dsm_bench [--json out.json] [--quick] [--placement shared|per-node|both]

Two node processes on loopback (hypervisor/devkit/worker.py), in two
placements (bench/floors.py): `shared`, both nodes on one CPU, where every
microsecond the DSM spends on either side is on the fault's critical path;
and `per-node`, a CPU for each node, as nodes on separate hosts run. Each
placement has its own floors, measured the same way: a bare userfaultfd MINOR
fault round trip and a bare TCP round trip carrying 4 KiB (also through
epoll_wait + non-blocking recv, the shape an event loop must use), and a
bound, not a floor: a whole remote read fault built from the bare mechanisms
by one thread (docs/dsm.md). Then: remote read fault, remote write fault,
write fault that invalidates one copy, and the ownership ping-pong of one
page, each compared with its floor; contention on one word by 4 nodes with
the hold window off and on (DsmOptions.hold_us); and every protocol option
against the default on three nodes. This is a benchmark, not a test: it
prints figures and never fails on them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.floors import Placement, fault_bound, mechanisms, summary, tcp_floor, uffd_floor
from bench.sealcost import BLOCK_PAGES, PAIRS, crypto_alone, paired
from hypervisor.devkit.cluster import Cluster
from hypervisor.dsm import DsmOptions
from hypervisor.native_consts import ENGINE_TYPES, PAGE_SIZE
TARGETS = {"read_fault_vs_floor": 1.25, "pingpong_vs_floor": 1.3, "traced_read_fault_vs_untraced": 1.10,
           "read_fault_sealed_vs_unsealed": 1.05}
# The trace ring of the traced runs (native/trace.h): room for every record of a scenario.
TRACE_RECORDS = 1 << 16
LATENCIES = ("read_fault", "write_fault", "write_after_read", "pingpong")


def with_samples(ns: list[int]) -> dict[str, Any]:
    """summary() plus every warm sample in us (bench/plots.py draws them; stripped from all_runs)."""
    return {**summary(ns), "samples_us": [round(x / 1000, 2) for x in ns[len(ns) // 10:]]}


def without_samples(result: dict[str, Any]) -> dict[str, Any]:
    return {k: ({kk: vv for kk, vv in v.items() if kk != "samples_us"} if isinstance(v, dict) else v)
            for k, v in result.items()}


def sent_total(cluster: Cluster) -> int:
    # Snapshot of engine messages sent so far by every node (stats are live).
    total = 0
    for w in cluster.workers:
        total += sum(w.call("stats")["stats"]["messages_sent"][t.name] for t in ENGINE_TYPES)
    return total


def scenario(nnodes: int, npages: int, options: dict[str, Any] | None, pingpong_rounds: int,
             where: Placement, insecure_plaintext: bool = False) -> dict[str, Any]:
    """Node 1 owns the pages; the faulting node is 0 (2 nodes) or 2 (3 nodes: its requests start at
    node 0, the initial owner and central manager, so forwarding and managers show).
    `insecure_plaintext`: DSM frames unsealed, the baseline that prices encryption (bench only)."""
    pages = 64 + 2 * npages + 8
    a = list(range(64, 64 + npages))
    b = list(range(64 + npages, 64 + 2 * npages))
    result: dict[str, Any] = {}
    with Cluster(nnodes, pages=pages, options=options, cpus=where.node_cpus(nnodes),
                 insecure_plaintext=insecure_plaintext) as cluster:
        reader, owner = cluster.workers[0 if nnodes == 2 else 2], cluster.workers[1]
        owner.call("run", workload="write_pages", pages_list=a + b)   # node 1 owns A and B, modified
        m0 = sent_total(cluster)
        read = reader.call("run", workload="touch_timed", pages_list=a, write=0)["ns"]
        m1 = sent_total(cluster)
        inval = reader.call("run", workload="touch_timed", pages_list=a, write=1)["ns"]
        m2 = sent_total(cluster)
        write = reader.call("run", workload="touch_timed", pages_list=b, write=1)["ns"]
        m3 = sent_total(cluster)
        result["read_fault"] = {**with_samples(read), "messages_per_fault": (m1 - m0) / len(a)}
        result["write_after_read"] = {**with_samples(inval), "messages_per_fault": (m2 - m1) / len(a)}
        result["write_fault"] = {**with_samples(write), "messages_per_fault": (m3 - m2) / len(b)}
        if pingpong_rounds:
            page = pages - 1
            for w in cluster.workers[:2]:
                w.send("run", workload="pingpong", rounds=pingpong_rounds, page=page)
            ns = [cluster.workers[i].recv(120)["ns"] for i in range(2)]
            per_round = ns[0][pingpong_rounds // 10:] + ns[1][pingpong_rounds // 10:]
            # Each entry spans one full round: the page came here once and went away once.
            result["pingpong"] = {**with_samples(per_round), "handoffs_per_s": 2e9 / statistics.median(per_round)}
        stats = [r["stats"] for r in cluster.stop_all()]
        result["errors"] = [s["error"] for s in stats if s["error"]]
        result["trace_records"] = sum(s["trace_records"] for s in stats)
        result["hops_per_remote_fault"] = sum(s["reply_hops"] for s in stats) / max(
            1, sum(s["faults"]["remote"] for s in stats))
    return result


def contention(options: dict[str, Any], where: Placement, nnodes: int = 4, iters: int = 3000) -> dict[str, Any]:
    """One thread per node, locked increments on one word, the CPU yielded after each: nearly
    every increment needs the page brought back. Hand-offs per increment above 1 are
    wasted (the page left before the woken thread ran), below 1 the hold window batched."""
    with Cluster(nnodes, pages=32, options=options, cpus=where.node_cpus(nnodes)) as cluster:
        t0 = time.monotonic()
        cluster.run_all(timeout=120.0, workload="hammer", threads=1, iters=iters, page=5)
        seconds = time.monotonic() - t0
        total = cluster.workers[0].call("read", offsets=[5 * PAGE_SIZE])["values"][0]
        stats = [r["stats"] for r in cluster.stop_all()]
    increments = nnodes * iters
    return {"seconds": seconds, "increments_per_s": increments / seconds, "exact": total == increments,
            "handoffs_per_increment": sum(s["faults"]["remote"] for s in stats) / increments,
            "held": sum(s["held"] for s in stats), "holds_cut": sum(s["holds_cut"] for s in stats),
            "errors": [s["error"] for s in stats if s["error"]]}


def measure_placement(where: Placement, base: dict[str, Any], n: int, npages: int, rounds: int,
                      repeat: int, seal_pairs: tuple[int, int] = (PAIRS, BLOCK_PAGES)) -> dict[str, Any]:
    """Floors, bound and the 2-node run, alternated `repeat` times (the host is noisy); the best
    run of each figure is kept. The cost of encryption is a paired estimate of its own
    (bench/sealcost.py): sealed and unsealed read faults in short alternating blocks."""
    faults, tcps, tcps_epoll, bounds, runs, traced = [], [], [], [], [], []
    for _ in range(repeat):
        faults.append(uffd_floor(n, where))
        tcps.append(tcp_floor(n, where))
        tcps_epoll.append(tcp_floor(n, where, epoll=True))
        bounds.append(fault_bound(n, where))
        runs.append(scenario(2, npages, base, rounds, where))
        # The same faults with every node tracing (ivyvm run --trace): what recording costs.
        traced.append(scenario(2, npages, {**base, "trace_records": TRACE_RECORDS}, 0, where))
    # Frames unsealed (bench only) against sealed, block by block: what encryption costs.
    seal = paired(where, base, *seal_pairs)
    crypto = crypto_alone(where)   # the part of that no link code can avoid
    best = lambda rs: min(rs, key=lambda r: r["median_us"])  # noqa: E731
    fault, tcp, tcp_epoll, bound = best(faults), best(tcps), best(tcps_epoll), best(bounds)
    main_run: dict[str, Any] = {key: best([r[key] for r in runs]) for key in LATENCIES}
    main_run["errors"] = [e for r in runs + traced for e in r["errors"]] + seal["errors"]
    main_run["hops_per_remote_fault"] = runs[0]["hops_per_remote_fault"]
    main_run["all_runs"] = [without_samples(r) for r in runs]
    main_run["read_fault_traced"] = {k: v for k, v in best([r["read_fault"] for r in traced]).items()
                                     if k != "samples_us"}
    main_run["traced_runs"] = [without_samples(r) for r in traced]
    floor = fault["median_us"] + tcp["median_us"]
    # The same with the round trip made the way an event loop must (epoll_wait, then a
    # non-blocking recv): what a single-threaded loop cannot avoid paying.
    floor_epoll = fault["median_us"] + tcp_epoll["median_us"]
    # A hand-off is a remote write fault: the taker faults once and the page crosses the wire
    # once. A round is two hand-offs that cannot overlap: each side's request waits for the
    # other side's write.
    read, pingpong = main_run["read_fault"]["median_us"], main_run["pingpong"]["median_us"]
    return {
        "placement": {"name": where.name, "label": where.label, "cpus": list(where.cpus)},
        "floors": {"uffd_fault": fault, "tcp_rtt_4k": tcp, "tcp_rtt_4k_epoll": tcp_epoll,
                   "remote_fault_floor_us": floor, "remote_fault_floor_epoll_us": floor_epoll,
                   "remote_fault_bound": bound,
                   "all_runs": {"uffd_fault": faults, "tcp_rtt_4k": tcps, "tcp_rtt_4k_epoll": tcps_epoll,
                                "remote_fault_bound": bounds}},
        "default": main_run,
        "unsealed": {"read_fault": seal["unsealed"], "read_fault_sealed": seal["sealed"],
                     "ratio_iqr": seal["ratio_iqr"], "pair_ratios": seal["pair_ratios"],
                     "pairs": seal["pairs"], "block_pages": seal["block_pages"],
                     "crypto_alone": crypto,
                     "crypto_vs_unsealed_fault": crypto["per_read_fault_us"] / seal["unsealed"]["median_us"]},
        "ratios": {
            "read_fault_sealed_vs_unsealed": seal["ratio"],
            "read_fault_vs_floor": read / floor,
            "write_fault_vs_floor": main_run["write_fault"]["median_us"] / floor,
            "pingpong_vs_floor": pingpong / (2 * floor),
            "read_fault_vs_epoll_floor": read / floor_epoll,
            "pingpong_vs_epoll_floor": pingpong / (2 * floor_epoll),
            "bound_vs_floor": bound["median_us"] / floor,
            "read_fault_vs_bound": read / bound["median_us"],
            "traced_read_fault_vs_untraced": main_run["read_fault_traced"]["median_us"] / read,
        },
        "over_floor_us": {"read_fault": read - floor, "pingpong_per_handoff": pingpong / 2 - floor},
    }


def verdict(got: float, target: float) -> str:
    return f"{got:.2f} x ({'met' if got <= target else 'missed'})"


def print_placement(r: dict[str, Any]) -> None:
    fl, ra = r["floors"], r["ratios"]
    floor, main_run = fl["remote_fault_floor_us"], r["default"]
    print(f"\n== placement {r['placement']['name']}: {r['placement']['label']}")
    print(f"{'floor':34s} {'median':>10s} {'p99':>10s}   (times in us; every ratio: lower is better)")
    for key, label in (("uffd_fault", "bare userfaultfd fault"), ("tcp_rtt_4k", "bare TCP RTT, 4 KiB back"),
                       ("tcp_rtt_4k_epoll", "bare TCP RTT via epoll_wait+recv")):
        print(f"{label:34s} {fl[key]['median_us']:10.1f} {fl[key]['p99_us']:10.1f}")
    print(f"{'fault + RTT':34s} {floor:10.1f}")
    print(f"{'fault + RTT via epoll':34s} {fl['remote_fault_floor_epoll_us']:10.1f}")
    bound = fl["remote_fault_bound"]
    print(f"{'bound: bare remote fault, 1 thread':34s} {bound['median_us']:10.1f} {bound['p99_us']:10.1f} "
          f"{ra['bound_vs_floor']:8.2f} x floor (not a floor: see docs/dsm.md)")
    if "mechanisms" in r:
        print("steps the floors lack, each alone (median us):")
        for name, m in r["mechanisms"].items():
            print(f"  {name:44s} {m['median_us']:10.2f}")
    print(f"{'2 nodes, default (giantvm/dynamic)':34s} {'median us':>10s} {'p99 us':>10s} {'x floor':>8s} "
          f"{'messages per fault':>19s}")
    for key, label in (("read_fault", "remote read fault"), ("write_fault", "remote write fault"),
                       ("write_after_read", "write after read (invalidate)")):
        m = main_run[key]
        ratio = f"{m['median_us'] / floor:8.2f}" if key != "write_after_read" else f"{'':8s}"
        print(f"{label:34s} {m['median_us']:10.1f} {m['p99_us']:10.1f} {ratio} {m['messages_per_fault']:19.2f}")
    m, ratio = main_run["read_fault_traced"], ra["traced_read_fault_vs_untraced"]
    print(f"{'remote read fault, tracing on':34s} {m['median_us']:10.1f} {m['p99_us']:10.1f} {m['median_us'] / floor:8.2f} "
          f"{m['messages_per_fault']:19.2f}   ({ratio:.2f} x tracing off, lower is better; target "
          f"<= {TARGETS['traced_read_fault_vs_untraced']}: {'met' if ratio <= TARGETS['traced_read_fault_vs_untraced'] else 'missed'})")
    un, ratio = r["unsealed"], ra["read_fault_sealed_vs_unsealed"]
    m, (q1, q3) = un["read_fault"], un["ratio_iqr"]
    print(f"{'remote read fault, frames unsealed':34s} {m['median_us']:10.1f} {m['p99_us']:10.1f} {m['median_us'] / floor:8.2f} "
          f"{'':19s}   (sealed = {ratio:.3f} x this, median of {un['pairs']} paired blocks of "
          f"{un['block_pages']} faults, IQR {q1:.3f}-{q3:.3f}; lower is better; bench-only switch; "
          f"target <= {TARGETS['read_fault_sealed_vs_unsealed']}: "
          f"{'met' if ratio <= TARGETS['read_fault_sealed_vs_unsealed'] else 'missed'})")
    c = un["crypto_alone"]
    print(f"  crypto alone, each call after {c['gap_us']} us idle (median us): "
          + ", ".join(f"{name} {st['median_us']:.2f}" for name, st in c["steps"].items())
          + f"; a read fault's four: {c['per_read_fault_us']:.1f} us = {un['crypto_vs_unsealed_fault']:.3f} x "
          f"the unsealed fault (the inherent part of the cost; lower is better)")
    pp = main_run["pingpong"]
    print(f"{'ping-pong round (2 hand-offs)':34s} {pp['median_us']:10.1f} {pp['p99_us']:10.1f} "
          f"{ra['pingpong_vs_floor']:8.2f}   ({pp['handoffs_per_s']:.0f} hand-offs/s)")
    print(f"targets: read fault <= {TARGETS['read_fault_vs_floor']} x floor: "
          f"{verdict(ra['read_fault_vs_floor'], TARGETS['read_fault_vs_floor'])}; ping-pong <= "
          f"{TARGETS['pingpong_vs_floor']} x floor: {verdict(ra['pingpong_vs_floor'], TARGETS['pingpong_vs_floor'])}")
    print(f"read fault: {r['over_floor_us']['read_fault']:.1f} us over the floor (lower is better), "
          f"{ra['read_fault_vs_bound']:.2f} x "
          f"the bound; against the epoll floor: read fault {ra['read_fault_vs_epoll_floor']:.2f} x, "
          f"ping-pong {ra['pingpong_vs_epoll_floor']:.2f} x")


def print_rest(results: dict[str, Any]) -> None:
    print(f"\ncontention: 4 nodes x 1 thread, yielding locked increments on one word "
          f"(placement {results['shared_placement']})")
    print(f"{'hold window':>12s} {'increments/s':>13s} {'hand-offs per increment':>24s} {'requests held':>14s} "
          f"{'holds cut short':>16s} {'total exact':>12s}")
    for h, c in results["contention"].items():
        print(f"{h + ' us':>12s} {c['increments_per_s']:13.0f} {c['handoffs_per_increment']:24.2f} {c['held']:14d} "
              f"{c['holds_cut']:16d} {'yes' if c['exact'] else 'NO':>12s}")
    print("  (increments/s: higher is better; hand-offs per increment: lower is better)")
    print("\n3 nodes: node 1 owns the pages, node 2 faults; node 0 was the first owner (central manager)")
    print("  (median us and messages per fault, lower is better; hops: forwards per remote fault)")
    print(f"{'read ownership/manager':22s} {'read us':>8s} {'msgs':>5s} {'write us':>9s} {'msgs':>5s} "
          f"{'write after read us':>20s} {'msgs':>5s} {'hops':>5s}")
    for name, r in results["options"].items():
        print(f"{name:22s} {r['read_fault']['median_us']:8.1f} {r['read_fault']['messages_per_fault']:5.2f} "
              f"{r['write_fault']['median_us']:9.1f} {r['write_fault']['messages_per_fault']:5.2f} "
              f"{r['write_after_read']['median_us']:20.1f} {r['write_after_read']['messages_per_fault']:5.2f} "
              f"{r['hops_per_remote_fault']:5.2f}")
    if len(results["placements"]) > 1:
        print(f"\n{'targets':30s}" + "".join(f"{name:>18s}" for name in results["placements"]))
        for key, label in (("read_fault_vs_floor", "read fault"), ("pingpong_vs_floor", "ping-pong")):
            cells = "".join(f"{verdict(p['ratios'][key], TARGETS[key]):>18s}" for p in results["placements"].values())
            print(f"{label + f' <= {TARGETS[key]} x floor':30s}{cells}")


def shared_placement(cpus: list[int]) -> Placement:
    return Placement("shared", f"every node on CPU {cpus[0]}: the serving node's work is on the "
                     "faulting node's critical path", (cpus[0],))


def placements(cpus: list[int], which: str) -> tuple[list[Placement], str | None]:
    chosen = [shared_placement(cpus)] if which in ("shared", "both") else []
    note = None
    if which in ("per-node", "both"):
        if len(cpus) < 2:
            note = f"placement per-node skipped: it needs 2 CPUs and has only CPU {cpus[0]}"
        else:
            chosen.append(Placement("per-node", f"node 0 on CPU {cpus[0]}, node 1 on CPU {cpus[1]}, as on "
                                    "separate hosts: the sides run concurrently, a message wakes an idle CPU",
                                    (cpus[0], cpus[1])))
    return chosen, note


def parse_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(c for c in range(int(lo), int(hi or lo) + 1) if c not in cpus)
    return cpus


def main(argv: list[str] | None = None) -> int:
    return collect(argv)[0]


def collect(argv: list[str] | None = None) -> tuple[int, dict[str, Any] | None]:
    """Run the benchmark; (exit status, every result)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--poll-us", type=int, default=None, help="DsmOptions.poll_us for every node")
    ap.add_argument("--hold-us", type=int, default=None, help="DsmOptions.hold_us for every node")
    ap.add_argument("--repeat", type=int, default=3, help="alternate floors and the 2-node run this often; best kept")
    ap.add_argument("--placement", choices=("shared", "per-node", "both"), default="both",
                    help="where the two nodes run (default both, one after the other)")
    ap.add_argument("--cpus", default=None,
                    help="CPUs to use, e.g. 0,1: the first is the shared CPU and node 0's, the second node 1's "
                         "(default: the first two this process may use)")
    args = ap.parse_args(argv)
    saved = os.sched_getaffinity(0)
    try:
        cpus = parse_cpus(args.cpus) if args.cpus else sorted(saved)[:2]
        os.sched_setaffinity(0, set(cpus))  # also checks that they exist and are allowed
    except (ValueError, OSError) as err:
        print(f"dsm_bench: --cpus {args.cpus!r}: not a usable CPU list ({err})", file=sys.stderr)
        return 2, None
    try:
        return run(args, cpus)
    finally:
        os.sched_setaffinity(0, saved)  # a caller (bench/run.py) goes on with its own benchmarks


def run(args: argparse.Namespace, cpus: list[int]) -> tuple[int, dict[str, Any]]:
    base: dict[str, Any] = {} if args.poll_us is None else {"poll_us": args.poll_us}
    if args.hold_us is not None:
        base["hold_us"] = args.hold_us
    n = 300 if args.quick else 2000
    npages = 100 if args.quick else 1000
    rounds = 300 if args.quick else 3000
    chosen, note = placements(cpus, args.placement)
    hold_default = DsmOptions().hold_us
    print(f"DSM core: hold window {base.get('hold_us', hold_default)} us; best of {args.repeat} alternating runs "
          f"per placement; load average {os.getloadavg()[0]:.1f} (other work on the host inflates everything)")
    if note:
        print(note)
    results: dict[str, Any] = {"placements": {}, "targets": TARGETS, "options": {}}
    for where in chosen:
        results["placements"][where.name] = measure_placement(where, base, n, npages, rounds, args.repeat,
                                                                (4, 50) if args.quick else (PAIRS, BLOCK_PAGES))
        if where.name == "shared":  # what the steps a floor lacks cost here, each alone
            results["placements"][where.name]["mechanisms"] = mechanisms(npages, where)
        print_placement(results["placements"][where.name])

    # Contention and the protocol options compare runs with each other; one CPU for every node
    # makes them steadiest.
    shared = shared_placement(cpus)
    results["shared_placement"] = f"shared, CPU {cpus[0]}"
    holds = sorted({0, base.get("hold_us", hold_default)})
    results["contention"] = {str(h): contention({**base, "hold_us": h}, shared, iters=500 if args.quick else 3000)
                             for h in holds}
    for ro in ("giantvm", "ivy"):
        for mgr in ("dynamic", "central", "fixed"):
            results["options"][f"{ro}/{mgr}"] = without_samples(scenario(3, npages // 2, {
                **base, "read_ownership": ro, "manager": mgr}, 0, shared))
    results["load_average"] = os.getloadavg()
    results["cpus"] = cpus
    print_rest(results)
    errors = [e for r in [*(p["default"] for p in results["placements"].values()), *results["options"].values(),
                          *results["contention"].values()] for e in r["errors"]]
    for e in errors:
        print(f"node error: {e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return (1 if errors else 0), results


if __name__ == "__main__":
    raise SystemExit(main())
