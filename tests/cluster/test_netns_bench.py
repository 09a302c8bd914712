"""The emulated-network part of `make bench` runs and reports every figure (harness only: no speed asserted)."""
from __future__ import annotations

import json
from pathlib import Path

from bench import netns_bench
from tests.conftest import requires_kvm, requires_netns


@requires_kvm
@requires_netns
def test_quick_run_reports_every_delay(tmp_path: Path) -> None:
    out = tmp_path / "netns.json"
    assert netns_bench.main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(["loopback"] + [f"{d}us" for d in netns_bench.DELAYS_US])
    for row in results.values():
        assert row["read_fault"]["n"] == 100 and row["read_fault"]["median_us"] > 0
        assert row["pagewalk"]["mib_per_s"] > 0
    # A round trip cannot beat the delay it crosses twice.
    assert results["500us"]["read_fault"]["min_us"] >= 1000
