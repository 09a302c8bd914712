"""How a guest would fare between real hosts: the remote read fault and `pagewalk` at 0, 100 and 500 us.

    python -m bench.netns_bench [--json out.json] [--quick]

Each delay gets a fresh emulated network (hypervisor/netns.py: two
namespaces behind the C link emulator, --delay one-way). Two figures per
delay: the DSM core's remote read fault (two DSM worker processes, node 0
reads pages node 1 has written, as bench/dsm_bench.py's read fault), and
the `pagewalk` guest's bulk transfer on 2 vCPUs, 2 nodes (every page
crosses twice). Each is reported against the same figure at 0 us through the
same emulator, measured in this run, and against the same thing on
loopback, so the emulator's own cost shows too. A remote read fault is one
round trip, so it should cost about 2 x delay more than at 0 us.
Needs root, ip and /dev/net/tun; without them it says so and reports
nothing. A benchmark, not a test: it never fails on a figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.floors import summary
from bench.guests import build_bench_guests, tsc_hz
from hypervisor import netns, run_guest
from hypervisor.devkit.cluster import Cluster

DELAYS_US = (0, 100, 500)
ROOT = Path(__file__).resolve().parent.parent
FIRST_PAGE = 64


def read_faults(npages: int, hosts: list[str] | None = None, prefixes: list[list[str]] | None = None) -> dict:
    """Node 1 writes `npages` pages, then node 0 reads each once: every read is a remote fault."""
    pages = list(range(FIRST_PAGE, FIRST_PAGE + npages))
    with Cluster(2, pages=FIRST_PAGE + npages + 8, hosts=hosts, prefixes=prefixes) as cluster:
        reader, owner = cluster.workers
        owner.call("run", workload="write_pages", pages_list=pages)
        ns = reader.call("run", workload="touch_timed", pages_list=pages, write=0, timeout=300)["ns"]
        errors = [r["stats"]["error"] for r in cluster.stop_all() if r["stats"]["error"]]
    if errors:
        raise RuntimeError(f"the DSM failed: {errors}")
    return summary(ns)


def pagewalk(hz: float, build: str, **network: Any) -> dict:
    elf = ROOT / "guest" / build / "pagewalk.elf"
    result = run_guest(elf, vcpus=2, nodes=2, timeout=600, **network)
    fields = dict(item.split("=", 1) for item in (result.verdict or "").split()[2:] if "=" in item)
    if not (result.verdict or "").startswith("PASS"):
        raise RuntimeError(f"pagewalk failed: {result.verdict or result.console[-300:]}")
    seconds = int(fields["cycles"]) / hz
    return {"mib_per_s": 3 * int(fields["mib"]) / seconds, "seconds": seconds}


def measure(quick: bool) -> dict[str, Any]:
    npages = 100 if quick else 400
    build = build_bench_guests(quick)          # quick: the smaller guests of the smoke run
    hz = tsc_hz()
    results: dict[str, Any] = {"loopback": {"read_fault": read_faults(npages), "pagewalk": pagewalk(hz, build)}}
    for delay in DELAYS_US:
        with netns.EmulatedNetwork(2, netns.Shaping(delay_ns=delay * 1000)) as network:
            prefixes = [["ip", "netns", "exec", name] for name in network.names]
            fault = read_faults(npages, network.addresses, prefixes)
        results[f"{delay}us"] = {"read_fault": fault, "pagewalk": pagewalk(hz, build, netns=True,
                                                                          delay=f"{delay}us")}
    return results


def print_table(results: dict[str, Any]) -> None:
    print("\nemulated network between 2 nodes (--netns --delay D, one-way); ratios against --netns at 0 us, "
          "same run")
    base = results["0us"]
    loop = results["loopback"]
    print(f"  {'':14s} {'remote read fault (median)':>34s}   {'pagewalk (higher is better)':>34s}")
    print(f"  {'loopback':14s} {loop['read_fault']['median_us']:10.1f} us "
          f"({loop['read_fault']['median_us'] / base['read_fault']['median_us']:.2f}x)            "
          f"{loop['pagewalk']['mib_per_s']:10.1f} MiB/s "
          f"({loop['pagewalk']['mib_per_s'] / base['pagewalk']['mib_per_s']:.2f}x)")
    for delay in DELAYS_US:
        row = results[f"{delay}us"]
        fault, walk = row["read_fault"]["median_us"], row["pagewalk"]["mib_per_s"]
        extra = fault - base["read_fault"]["median_us"]
        print(f"  {f'{delay} us delay':14s} {fault:10.1f} us ({fault / base['read_fault']['median_us']:.2f}x, "
              f"+{extra:.0f} us for 2x{delay} us) {walk:10.1f} MiB/s ({walk / base['pagewalk']['mib_per_s']:.2f}x)")


def collect(quick: bool = False) -> dict[str, Any]:
    """Measure and print the table; what was measured (or why nothing was)."""
    try:
        netns.check_available()
    except netns.NetnsError as err:
        print(f"\nemulated network: skipped ({err})")
        return {"skipped": str(err)}
    results = measure(quick)
    print_table(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="fewer faults: a smoke run")
    args = parser.parse_args(argv)
    results = collect(args.quick)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
