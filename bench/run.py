"""`make bench`: the DSM core's figures, then the guest-level ones, one JSON.

    python -m bench.run [--json bench/results/bench.json] [--quick]

Every figure is a ratio against a baseline measured in the same run (the
machines are noisy): the DSM core against a bare userfaultfd fault and a bare
TCP round trip, guests on 2 nodes against the same guests on 1 node.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench import dsm_bench, guests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        core_json = Path(scratch) / "dsm.json"
        status = dsm_bench.main(["--json", str(core_json)] + (["--quick"] if args.quick else []))
        if status != 0:
            return status
        core = json.loads(core_json.read_text())

    guest_results = guests.bench_guests()
    guests.print_guest_table(guest_results)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"dsm": core, "guests": guest_results}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
