"""`make bench`: the DSM core's figures, then the guest-level ones, one JSON, latency plots.

    python -m bench.run [--json bench/results/bench.json] [--plots bench/results] [--quick]

Every figure is a ratio against a baseline measured in the same run (the
machines are noisy): the DSM core against a bare userfaultfd fault and a bare
TCP round trip, guests on several nodes against the same guests on 1 node.
Around the guest-level figures the host's load is measured (bench/hostload.py)
and a warning printed if they are unreliable.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import dsm_bench, guests, hostload, netns_bench, plots

HERE = Path(__file__).resolve().parent


def core_read_fault(core: dict) -> tuple[float, str]:
    """The core's remote read fault for the guest floor (e): per-node placement if it ran (nodes on
    separate CPUs, as the guest's two nodes run), else the shared one."""
    placements = core["placements"]
    name = "per-node" if "per-node" in placements else next(iter(placements))
    return placements[name]["default"]["read_fault"]["median_us"], f"{name} placement"


def draw(core: dict, guest_results: dict, out: Path) -> None:
    missing = plots.matplotlib_missing()
    if missing:
        print(f"\n{missing}")
        return
    out.mkdir(parents=True, exist_ok=True)
    written = plots.core_latencies(core, out) + plots.guest_page_costs(guest_results, out)
    print(f"\nlatency plots: {', '.join(str(p.relative_to(HERE.parent)) if p.is_relative_to(HERE.parent) else str(p) for p in written)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--plots", type=Path, default=HERE / "results", help="directory for the PNG latency plots")
    parser.add_argument("--quick", action="store_true", help="fewer samples and smaller guests: a smoke run")
    args = parser.parse_args(argv)

    status, core = dsm_bench.collect(["--quick", "--repeat", "1"] if args.quick else [])
    if status != 0 or core is None:
        return status or 1

    read_us, placement = core_read_fault(core)
    before = hostload.Snapshot.take()
    guest_results = guests.bench_guests(read_us, placement, quick=args.quick)
    host = hostload.verdict(before, hostload.Snapshot.take())
    guests.print_guest_tables(guest_results)
    print("\n" + hostload.describe(host))
    draw(core, guest_results, args.plots)
    network = netns_bench.collect(args.quick)     # the emulated network between nodes (root only)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"dsm": core, "guests": guest_results, "host": host, "netns": network},
                                        indent=2))
        print(f"\nall results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
