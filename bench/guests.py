"""Guest-level benchmarks: what a page costs a guest, and whole workloads, on 1 node and on several.

Each guest prints its own measurements (key=value, TSC cycles from rdtsc,
which every vCPU of every node reads from one host clock here). Every figure
is a ratio against a baseline run in the same invocation, one run of each
alternating with the other, because these machines are noisy.
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypervisor.native_consts import PAGE_SIZE

ROOT = Path(__file__).resolve().parent.parent
IVYVM = [sys.executable, "-m", "hypervisor.cli"]
# The test builds are sized to finish fast; benchmarks want runs long enough
# that start-up and first touches do not dominate, so they get their own build.
BENCH_BUILD = "build-bench"
# MP_ROUNDS_PER_CPU=8: 64 rounds on 8 vCPUs, so the run's CPU time is not mostly start-up (cpu_floor).
BENCH_DEFS = ("-DSPANNING_ITERS=20000 -DDISJOINT_PASSES=5000 -DPINGPONG_ROUNDS=1000 -DPAGEWALK_MIB=16 "
              "-DPAGECOST_PAGES=2048 -DMP_ROUNDS_PER_CPU=8")
QUICK_BUILD = "build-bench-quick"
QUICK_DEFS = ("-DSPANNING_ITERS=2000 -DDISJOINT_PASSES=200 -DPINGPONG_ROUNDS=100 -DPAGEWALK_MIB=2 "
              "-DPAGECOST_PAGES=256")
MIB = 1 << 20

# pagecost's phases, in its own words (guest/programs/pagecost.c).
PHASES = {
    "first_touch": "first touch of a fresh page",
    "read_seq": "(a) sequential remote read",
    "read_rand": "(b) random-order remote read",
    "write_inval": "(c) write that invalidates one copy",
    "rmw": "(d) migratory read-modify-write",
}

# Issue 10's targets: (key, what is compared, target, which direction is better).
TARGETS = (
    ("first_touch_node0", "node 0's first touch of a never-shared page / the same on 1 node without DSM", 1.2, "lower"),
    ("read_rand_vs_floor", "(b) random-order remote read / the guest floor (e)", 1.2, "lower"),
    ("read_seq_vs_first_touch", "(a) sequential remote read / a first touch on 1 node", 1.0, "lower"),
    ("rmw_vs_read_rand", "(d) migratory read-modify-write / (b) random-order remote read", 1.2, "lower"),
    ("write_inval_vs_read_rand", "(c) write that invalidates one copy / (b) random-order remote read", 1.0, "lower"),
    ("pagewalk_2_vs_1", "pagewalk throughput, 2 nodes / 1 node", 0.25, "higher"),
    ("mp8_vs_1", "message passing, 8 vCPUs: time on 8 nodes / on 1 node", 15.0, "lower"),
    # The same targets with the option built for them on (off by default; bench/prefetch.py and
    # bench/migratory.py measure them, in this run, against the same baselines).
    ("read_seq_vs_first_touch_prefetch", "  the same (a), with --read-ownership ivy --prefetch", 1.0, "lower"),
    ("rmw_vs_read_rand_migratory", "  the same (d) / (b), with --migratory (write-soon reads)", 1.2, "lower"),
    ("pagewalk_2_vs_1_prefetch", "  the same pagewalk, with --read-ownership ivy --prefetch", 0.25, "higher"),
)


@dataclass
class GuestRun:
    name: str
    vcpus: int
    nodes: int
    wall_s: float
    fields: dict[str, int]
    cpu_s: float = 0.0      # user + system time of every process of the run (the nodes are waited for)
    medians: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, list[int]] = field(default_factory=dict)
    node_stats: list[dict[str, float]] = field(default_factory=list)


def build_bench_guests(quick: bool) -> str:
    build, defs = (QUICK_BUILD, QUICK_DEFS) if quick else (BENCH_BUILD, BENCH_DEFS)
    subprocess.run(["make", "-s", "-C", str(ROOT / "guest"), f"BUILD={build}", f"GUEST_DEFS={defs}"], check=True)
    return build


def run_guest(build: str, name: str, vcpus: int, nodes: int, timeout: float = 300.0,
              extra: tuple[str, ...] = ()) -> GuestRun:
    elf = ROOT / "guest" / build / f"{name}.elf"
    with tempfile.TemporaryDirectory(prefix="ivyvm-bench-") as scratch:
        stats_json = Path(scratch) / "stats.json"
        argv = IVYVM + ["run", str(elf), "--vcpus", str(vcpus)] + (
            ["--nodes", str(nodes), "--stats-json", str(stats_json)] if nodes > 1 else [])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(argv + list(extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        profile = json.loads(stats_json.read_text()) if stats_json.exists() else {"nodes": []}
    lines = proc.stdout.splitlines()
    verdict = next((line for line in lines if line.startswith(("PASS", "FAIL"))), "")
    if proc.returncode != 0 or not verdict.startswith("PASS"):
        raise RuntimeError(f"guest {name} with {vcpus} vCPUs on {nodes} node(s) failed with status "
                           f"{proc.returncode}: {verdict or proc.stderr.strip()[-300:]}")
    run = GuestRun(name, vcpus, nodes, wall, {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", verdict)},
                   cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    for line in lines:
        if line.startswith("MEDIAN "):
            run.medians = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
        elif line.startswith("HIST "):
            label, _, counts = line[5:].partition(":")
            run.histograms[label] = [int(c) for c in counts.split()]
    for n in profile["nodes"]:  # docs/profile.md, the --stats-json schema
        run.node_stats.append({
            "node": n["node"], "remote_faults": n["faults"]["remote"], "local_faults": n["faults"]["local"],
            "mean_fault_us": n["latency"]["mean_ns"] / 1000, "p50_fault_us": n["latency"]["p50_ns"] / 1000,
            "messages_sent": sum(m["sent"] for m in n["messages"].values()), "sends": n["sends"],
            "kib_sent": sum(m["bytes_sent"] for m in n["messages"].values()) / 1024,
            "vcpu_blocked_s": sum(v["blocked_ns"] for v in n["vcpu_blocked"]) / 1e9,
            "vcpu_faults": sum(v["faults"] for v in n["vcpu_blocked"])})
    run.node_stats.sort(key=lambda s: s["node"])
    return run


def _host_rdtsc() -> Any:
    """rdtsc callable from Python: ten bytes of machine code in an executable page."""
    code = bytes.fromhex("0f31" "48c1e220" "4809d0" "c3")  # rdtsc; shl rdx,32; or rax,rdx; ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    function = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)
    function._page = page  # type: ignore[attr-defined]  # keep the mapping alive
    return function


def tsc_hz() -> float:
    """The host TSC rate (guests read the same clock), to turn guest cycles into seconds."""
    rdtsc = _host_rdtsc()
    t0, c0 = time.perf_counter(), rdtsc()
    time.sleep(0.2)
    t1, c1 = time.perf_counter(), rdtsc()
    return (c1 - c0) / (t1 - t0)


def page_costs(run: GuestRun, hz: float) -> dict[str, dict[str, float]]:
    """Per phase: one access's median and mean in us, and pages per second as MiB/s."""
    pages = run.fields["pages"]
    out = {}
    for phase in PHASES:
        seconds = run.fields[phase] / hz
        out[phase] = {"median_us": run.medians[phase] / hz * 1e6, "mean_us": seconds / pages * 1e6,
                      "mib_per_s": pages * PAGE_SIZE / MIB / seconds if seconds else float("inf")}
    return out


def pagewalk_mib_s(run: GuestRun, hz: float) -> float:
    """pagewalk's throughput: its region written, moved and moved back (three passes) per second."""
    return 3 * run.fields["mib"] / (run.fields["cycles"] / hz)


def _median_of(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {phase: {k: statistics.median(r[phase][k] for r in runs) for k in runs[0][phase]} for phase in runs[0]}


def bench_page_costs(build: str, hz: float, repeat: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """pagecost on 1 node (1 vCPU, no DSM) and on 2 nodes, alternating; medians over the runs."""
    one, two, hist1, hist2, stats2 = [], [], {}, {}, []
    for _ in range(repeat):
        r1 = run_guest(build, "pagecost", 1, 1, extra=extra)
        r2 = run_guest(build, "pagecost", 2, 2, extra=extra)
        one.append(page_costs(r1, hz))
        two.append(page_costs(r2, hz))
        hist1, hist2 = r1.histograms, r2.histograms
        stats2.append(r2.node_stats)
    return {"pages": r2.fields["pages"], "runs": repeat, "one_node": _median_of(one), "two_nodes": _median_of(two),
            "all_runs": {"one_node": one, "two_nodes": two},
            # log2 buckets of TSC cycles from the last run, for the plots
            "histograms_cycles": {"one_node": hist1, "two_nodes": hist2},
            "node_stats_two_nodes": stats2}


def bench_workloads(build: str, hz: float, mp_nodes: tuple[int, ...]) -> dict[str, Any]:
    """Whole guests on 1 node against the same on several, one run of each."""
    out: dict[str, Any] = {}

    def rate(run: GuestRun, amount: float) -> float:
        return amount / (run.fields["cycles"] / hz)

    one, two = run_guest(build, "spanning_counter", 2, 1), run_guest(build, "spanning_counter", 2, 2)
    out["spanning_counter"] = {"label": "contended counter (spanning_counter), 2 vCPUs", "unit": "increments/s",
                               "better": "higher", "one_node": rate(one, one.fields["ops"]),
                               "many_nodes": rate(two, two.fields["ops"]), "nodes": 2}
    one, two = run_guest(build, "pagewalk", 2, 1), run_guest(build, "pagewalk", 2, 2)
    out["pagewalk"] = {"label": f"pagewalk, {one.fields['mib']} MiB written, moved and moved back", "unit": "MiB/s",
                       "better": "higher", "one_node": pagewalk_mib_s(one, hz),
                       "many_nodes": pagewalk_mib_s(two, hz), "nodes": 2,
                       "faults": fault_share(two, two.fields["mib"] * MIB // PAGE_SIZE, hz)}
    one, two = run_guest(build, "ipi_pingpong", 2, 1), run_guest(build, "ipi_pingpong", 2, 2)
    out["ipi_pingpong"] = {"label": "interrupt round trip between 2 vCPUs", "unit": "us", "better": "lower",
                           "one_node": one.fields["cycles_per_round"] / hz * 1e6,
                           "many_nodes": two.fields["cycles_per_round"] / hz * 1e6, "nodes": 2}
    base, one, two = (run_guest(build, "disjoint", 1, 1), run_guest(build, "disjoint", 2, 1),
                      run_guest(build, "disjoint", 2, 2))
    out["disjoint"] = {"label": "disjoint pages, 2 vCPUs (1 vCPU alone: "
                                f"{rate(base, base.fields['ops']) / 1e6:.1f} M increments/s)",
                       "unit": "increments/s", "better": "higher", "one_node": rate(one, one.fields["ops"]),
                       "many_nodes": rate(two, two.fields["ops"]), "nodes": 2}
    for n in mp_nodes:
        one, many = run_guest(build, "mp_litmus", n, 1), run_guest(build, "mp_litmus", n, n)
        # Start-up and shut-down of as many nodes; the cheaper of two, as start-up CPU time varies.
        idle = min((run_guest(build, "hello", n, n) for _ in range(2)), key=lambda run: run.cpu_s)
        out[f"mp_litmus_{n}"] = {"label": f"message passing (mp_litmus), {n} vCPUs, {many.fields['rounds']} rounds "
                                          f"of {many.fields['pages']} pages", "unit": "ms", "better": "lower",
                                 "one_node": one.fields["cycles"] / hz * 1e3,
                                 "many_nodes": many.fields["cycles"] / hz * 1e3,
                                 "nodes": n, "cpu_floor": cpu_floor(one, many, idle, hz)}
    return out


def fault_share(run: GuestRun, pages: int, hz: float) -> dict[str, float]:
    """Where a spanning run's time went, from its nodes' own counters: faults per page of the
    region, and the share of the guest's time its vCPUs spent blocked in them."""
    faults = sum(s["remote_faults"] + s["local_faults"] for s in run.node_stats)
    blocked = sum(s["vcpu_blocked_s"] for s in run.node_stats)
    vcpu_faults = sum(s["vcpu_faults"] for s in run.node_stats)
    return {"faults_per_page": faults / pages,
            "remote_per_page": sum(s["remote_faults"] for s in run.node_stats) / pages,
            "blocked_share": blocked / (run.fields["cycles"] / hz),
            "us_per_vcpu_fault": blocked / max(1, vcpu_faults) * 1e6}


def cpu_floor(one: GuestRun, many: GuestRun, idle: GuestRun, hz: float) -> dict[str, float]:
    """What the host's CPUs alone allow: the CPU time the spanning run took beyond an idle guest's
    start-up on as many nodes, per remote fault, and the time those faults need with every CPU busy,
    against the one-node run. A floor ratio above the target means the target needs cheaper faults
    (or fewer), not better overlap."""
    faults = sum(s["remote_faults"] for s in many.node_stats)
    cpu = max(0.0, many.cpu_s - idle.cpu_s)
    cpus = len(os.sched_getaffinity(0))
    busy_ms = cpu / cpus * 1e3
    return {"remote_faults": faults, "cpu_us_per_remote_fault": cpu / max(1, faults) * 1e6, "cpus": cpus,
            "all_cpus_busy_ms": busy_ms, "floor_vs_1": busy_ms / (one.fields["cycles"] / hz * 1e3)}


def targets(costs: dict[str, Any], workloads: dict[str, Any], core_read_us: float,
            migratory: dict[str, Any] | None = None, prefetch: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    one, two = costs["one_node"], costs["two_nodes"]
    floor_e = one["first_touch"]["median_us"] + core_read_us
    rand = two["read_rand"]["median_us"]
    values = {
        "first_touch_node0": two["first_touch"]["median_us"] / one["first_touch"]["median_us"],
        "read_rand_vs_floor": rand / floor_e,
        "read_seq_vs_first_touch": two["read_seq"]["median_us"] / one["first_touch"]["median_us"],
        "rmw_vs_read_rand": two["rmw"]["median_us"] / rand,
        "write_inval_vs_read_rand": two["write_inval"]["median_us"] / rand,
    }
    if "pagewalk" in workloads:
        values["pagewalk_2_vs_1"] = workloads["pagewalk"]["many_nodes"] / workloads["pagewalk"]["one_node"]
    if "mp_litmus_8" in workloads:
        values["mp8_vs_1"] = workloads["mp_litmus_8"]["many_nodes"] / workloads["mp_litmus_8"]["one_node"]
    if prefetch:
        values["read_seq_vs_first_touch_prefetch"] = prefetch["read_seq"]["on_vs_first_touch"]
        values["pagewalk_2_vs_1_prefetch"] = prefetch["pagewalk"]["on_vs_one_node"]
    if migratory:
        values["rmw_vs_read_rand_migratory"] = migratory["rmw_vs_read_rand"]["on"]
    out = []
    for key, label, target, better in TARGETS:
        if key in values:
            got = values[key]
            met = got <= target if better == "lower" else got >= target
            out.append({"key": key, "label": label, "ratio": got, "target": target, "better": better, "met": met})
    return out


def alternating_runs(quick: bool) -> int:
    """How many runs each way a figure is the median of; a quick run (a smoke test) takes one."""
    return 1 if quick else 3


def bench_guests(core_read_us: float, core_placement: str, quick: bool = False) -> dict[str, Any]:
    build = build_bench_guests(quick)
    hz = tsc_hz()
    costs = bench_page_costs(build, hz, alternating_runs(quick))
    workloads = bench_workloads(build, hz, (4,) if quick else (4, 8))
    from bench.migratory import bench_migratory  # it builds on this module's runner
    migratory = bench_migratory(build, hz, alternating_runs(quick))
    from bench.prefetch import bench_prefetch
    prefetch = bench_prefetch(build, hz, alternating_runs(quick))
    from bench.batch import bench_batch
    batch = bench_batch(build, hz, alternating_runs(quick), quick)
    floor_e = costs["one_node"]["first_touch"]["median_us"] + core_read_us
    return {"tsc_hz": hz, "page_costs": costs, "workloads": workloads,
            "floor_e": {"first_touch_one_node_us": costs["one_node"]["first_touch"]["median_us"],
                        "core_remote_read_us": core_read_us, "core_placement": core_placement, "us": floor_e},
            "targets": targets(costs, workloads, core_read_us, migratory, prefetch), "migratory": migratory, "prefetch": prefetch,
            "batch": batch}


def _ratio_text(got: float, better: str) -> str:
    return f"{got:.2f} x ({better} is better)"


def print_guest_tables(r: dict[str, Any]) -> None:
    costs, floor = r["page_costs"], r["floor_e"]
    print(f"\n== guest-level page costs: pagecost, {costs['pages']} pages per access kind, median of "
          f"{costs['runs']} alternating run(s)")
    print("   2 nodes: vCPU 0 on node 0 makes the access, vCPU 1 on node 1 wrote the pages; 1 node: 1 vCPU, no DSM")
    print(f"{'access':50s} {'where':8s} {'median/page':>12s} {'mean/page':>11s} {'throughput':>13s}")
    rows = [("first_touch", "one_node", "1 node")] + [(p, "two_nodes", "2 nodes") for p in PHASES]
    for phase, key, where in rows:
        c = costs[key][phase]
        label = PHASES[phase] + (" (node 0, never shared)" if phase == "first_touch" and key == "two_nodes" else "")
        print(f"{label:50s} {where:8s} {c['median_us']:9.1f} us {c['mean_us']:8.1f} us {c['mib_per_s']:8.1f} MiB/s")
    print(f"{'(e) guest floor: first touch on 1 node':50s} {'':8s} {floor['first_touch_one_node_us']:9.1f} us")
    print(f"{'    + core remote read fault (' + floor['core_placement'] + ')':50s} {'':8s} "
          f"{floor['core_remote_read_us']:9.1f} us")
    print(f"{'    = floor (e)':50s} {'':8s} {floor['us']:9.1f} us")

    print(f"\n== whole guests: 1 node against several (one run each)")
    print(f"{'workload':64s} {'1 node':>16s} {'N nodes':>20s} {'N nodes / 1 node':>28s}")
    for w in r["workloads"].values():
        fmt = (lambda v: f"{v:,.1f} {w['unit']}") if w["unit"] != "increments/s" else (
            lambda v: f"{v / 1e6:,.1f} M incr/s")
        print(f"{w['label']:64s} {fmt(w['one_node']):>16s} {fmt(w['many_nodes']) + ' (' + str(w['nodes']) + ')':>20s} "
              f"{_ratio_text(w['many_nodes'] / w['one_node'], w['better']):>28s}")

    for w in r["workloads"].values():
        if "faults" in w:
            f = w["faults"]
            print(f"  {w['nodes']} nodes: {f['faults_per_page']:.2f} faults per page ({f['remote_per_page']:.2f} "
                  f"remote), {f['us_per_vcpu_fault']:.0f} us each as the vCPU waits; the vCPUs were blocked in "
                  f"faults {100 * f['blocked_share']:.0f} % of the run (lower is better)")
        if "cpu_floor" in w:
            f = w["cpu_floor"]
            print(f"  {w['nodes']} nodes: {f['cpu_us_per_remote_fault']:.0f} us of CPU per remote fault beyond "
                  f"start-up ({f['remote_faults']} faults); on {f['cpus']} CPUs, all busy, that is at least "
                  f"{f['all_cpus_busy_ms']:.0f} ms = {f['floor_vs_1']:.1f} x one node (lower is better)")

    if "migratory" in r:
        from bench.migratory import print_migratory
        print_migratory(r["migratory"])
    if "prefetch" in r:
        from bench.prefetch import print_prefetch
        print_prefetch(r["prefetch"])
    if "batch" in r:
        from bench.batch import print_batch
        print_batch(r["batch"])

    print("\n== issue 10 targets (ratios within this run)")
    print(f"{'what':80s} {'ratio':>7s} {'target':>10s} {'better':>7s}  verdict")
    for t in r["targets"]:
        bound = ("<= " if t["better"] == "lower" else ">= ") + f"{t['target']:g} x"
        print(f"{t['label']:80s} {t['ratio']:6.2f}x {bound:>10s} {t['better']:>7s}  {'met' if t['met'] else 'missed'}")
