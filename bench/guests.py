"""Guest-level benchmarks: one guest on 1 node against the same guest on 2 nodes.

Each guest prints its own measurements on its verdict line (key=value,
cycles from rdtsc, which every vCPU of every node reads from one host
clock here). Every figure is reported as a ratio against a baseline run in
the same invocation, because these machines are noisy.
"""
from __future__ import annotations

import ctypes
import mmap
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IVYVM = [sys.executable, "-m", "hypervisor.cli"]
# The test builds are sized to finish fast; benchmarks want runs long enough
# that start-up and first touches do not dominate, so they get their own build.
BENCH_BUILD = "build-bench"
BENCH_DEFS = "-DSPANNING_ITERS=20000 -DDISJOINT_PASSES=5000 -DPINGPONG_ROUNDS=1000 -DPAGEWALK_MIB=16"


def build_bench_guests() -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "guest"), f"BUILD={BENCH_BUILD}", f"GUEST_DEFS={BENCH_DEFS}"],
                   check=True)


@dataclass
class GuestRun:
    name: str
    vcpus: int
    nodes: int
    wall_s: float
    fields: dict[str, int]


def run_guest(name: str, vcpus: int, nodes: int, timeout: float = 120.0) -> GuestRun:
    elf = ROOT / "guest" / BENCH_BUILD / f"{name}.elf"
    argv = IVYVM + ["run", str(elf), "--vcpus", str(vcpus)] + (["--nodes", str(nodes)] if nodes > 1 else [])
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    verdict = next((line for line in proc.stdout.splitlines() if line.startswith(("PASS", "FAIL"))), "")
    if proc.returncode != 0 or not verdict.startswith("PASS"):
        raise RuntimeError(f"{name} on {nodes} node(s) failed with status {proc.returncode}: "
                           f"{verdict or proc.stderr.strip()[-300:]}")
    fields = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", verdict)}
    return GuestRun(name, vcpus, nodes, wall, fields)


def _host_rdtsc() -> ctypes._CFuncPtr:
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


def bench_guests() -> dict[str, dict[str, float]]:
    build_bench_guests()
    hz = tsc_hz()
    results: dict[str, dict[str, float]] = {}

    def rate(run: GuestRun, amount: float) -> float:
        return amount / (run.fields["cycles"] / hz)

    # Contended counter: every vCPU increments one shared line.
    one = run_guest("spanning_counter", 2, 1)
    two = run_guest("spanning_counter", 2, 2)
    results["spanning_counter_ops_per_s"] = {
        "1 node": rate(one, one.fields["ops"]), "2 nodes": rate(two, two.fields["ops"])}

    # Bulk transfer: vCPU 0 writes, the last vCPU verifies and rewrites, vCPU 0 verifies.
    one = run_guest("pagewalk", 2, 1)
    two = run_guest("pagewalk", 2, 2)
    results["pagewalk_mib_per_s"] = {
        "1 node": rate(one, 3 * one.fields["mib"]), "2 nodes": rate(two, 3 * two.fields["mib"])}

    # Interrupt round trip between vCPU 0 and the last vCPU.
    one = run_guest("ipi_pingpong", 2, 1)
    two = run_guest("ipi_pingpong", 2, 2)
    results["ipi_round_trip_us"] = {
        "1 node": one.fields["cycles_per_round"] / hz * 1e6,
        "2 nodes": two.fields["cycles_per_round"] / hz * 1e6}

    # Disjoint pages: 2 vCPUs on 1 node vs 2 vCPUs on 2 nodes vs 1 vCPU.
    base = run_guest("disjoint", 1, 1)
    one = run_guest("disjoint", 2, 1)
    two = run_guest("disjoint", 2, 2)
    results["disjoint_ops_per_s"] = {
        "1 vCPU": rate(base, base.fields["ops"]),
        "2 vCPUs, 1 node": rate(one, one.fields["ops"]),
        "2 vCPUs, 2 nodes": rate(two, two.fields["ops"])}
    return results


def print_guest_table(results: dict[str, dict[str, float]]) -> None:
    print("\nguest-level figures (ratios against the first column, same run)")
    for name, row in results.items():
        cells = list(row.items())
        base = cells[0][1]
        text = "  ".join(f"{label}: {value:,.1f} ({value / base:.2f}x)" for label, value in cells)
        print(f"  {name:28s} {text}")
