"""`make bench` keeps working: a quick run of the DSM benchmark reports every figure.

This checks the harness, not the speed: no figure is held to a target here
(speed goals live in `make bench`, never in a test). What is checked is what
does not depend on the host: every placement the CPUs allow ran, every
figure exists and is a time, the message counts are the protocol's, and the
contended counter came out exact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bench import dsm_bench, plots
from bench.floors import MECHANISMS


def test_quick_run_reports_every_figure_of_every_placement(tmp_path: Path) -> None:
    out = tmp_path / "dsm.json"
    assert dsm_bench.main(["--quick", "--repeat", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())

    expected = ["shared", "per-node"] if len(os.sched_getaffinity(0)) >= 2 else ["shared"]
    assert list(results["placements"]) == expected
    for name, placement in results["placements"].items():
        floors = placement["floors"]
        for key in ("uffd_fault", "tcp_rtt_4k", "tcp_rtt_4k_epoll", "remote_fault_bound"):
            assert floors[key]["median_us"] > 0, (name, key)
        assert floors["remote_fault_floor_us"] == floors["uffd_fault"]["median_us"] + floors["tcp_rtt_4k"]["median_us"]
        run = placement["default"]
        assert run["errors"] == [], (name, run["errors"])
        for key in dsm_bench.LATENCIES:
            assert 0 < run[key]["median_us"] <= run[key]["p99_us"], (name, key)
            # every warm sample is kept for the plots, once (not in every run's copy)
            assert min(run[key]["samples_us"]) >= run[key]["min_us"] - 0.01, (name, key)
            assert all("samples_us" not in r[key] for r in run["all_runs"]), (name, key)
        # 2 nodes: a fault is a request and its reply; the write after a read is the
        # reader, now owner, invalidating the old owner's copy and taking its ack.
        for key in ("read_fault", "write_fault", "write_after_read"):
            assert run[key]["messages_per_fault"] == 2.0, (name, key)
        assert placement["ratios"]["read_fault_vs_floor"] > 0
        # The same read faults with every node tracing: the records were really taken.
        assert run["read_fault_traced"]["messages_per_fault"] == 2.0 and placement["ratios"]["traced_read_fault_vs_untraced"] > 0
        assert all(r["trace_records"] > 0 for r in run["traced_runs"]) and all(r["trace_records"] == 0 for r in run["all_runs"])
        assert placement["unsealed"]["read_fault"]["messages_per_fault"] == 2.0, name
        assert placement["ratios"]["read_fault_sealed_vs_unsealed"] > 0
        seal = placement["unsealed"]
        assert seal["read_fault_sealed"]["messages_per_fault"] == 2.0 and len(seal["pair_ratios"]) == seal["pairs"]
        assert seal["ratio_iqr"][0] <= placement["ratios"]["read_fault_sealed_vs_unsealed"] <= seal["ratio_iqr"][1]
        assert all(s["median_us"] > 0 for s in seal["crypto_alone"]["steps"].values()), name
    assert list(results["placements"]["shared"]["mechanisms"]) == list(MECHANISMS)
    assert all(m["median_us"] > 0 for m in results["placements"]["shared"]["mechanisms"].values())

    assert results["contention"] and all(c["exact"] and not c["errors"] for c in results["contention"].values())
    assert len(results["options"]) == 6
    for name, option in results["options"].items():
        assert not option["errors"], (name, option["errors"])
        assert option["read_fault"]["messages_per_fault"] >= 2.0, name

    missing = plots.matplotlib_missing()
    if missing:
        assert "\n" not in missing and "matplotlib" in missing
    else:
        written = plots.core_latencies(results, tmp_path)
        assert [p.name for p in written] == [f"core-latency-{name}.png" for name in expected]
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
