"""Issue 8, section 3: `--stats` and `--stats-json` of a real spanning guest, and of one node."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypervisor import profile
from tests.cluster.common import guest_elf, lines_of, run_cli
from tests.conftest import requires_kvm

MEM = 64 << 20


@requires_kvm
@pytest.mark.parametrize("nnodes", [2, 3])
def test_stats_json_matches_its_schema_and_the_table(tmp_path: Path, nnodes: int) -> None:
    out_file = tmp_path / "stats.json"
    out = run_cli("run", str(guest_elf("spanning_counter")), "--vcpus", str(nnodes), "--nodes", str(nnodes),
                  "--stats", "--stats-json", str(out_file))
    assert out.status == 0, out.stderr
    doc = profile.load(out_file)            # raises unless it matches the schema
    nodes = doc["nodes"]
    assert [n["node"] for n in nodes] == list(range(nnodes))
    assert [n["vcpus"] for n in nodes] == [[k] for k in range(nnodes)]
    # The table on stderr is the same data, node 0 first.
    heads = [line for line in out.stderr.splitlines() if line.startswith("node ")]
    assert [h.split(" (")[0] for h in heads] == [f"node {k}" for k in range(nnodes)], out.stderr
    for report in nodes:
        f, lat = report["faults"], report["latency"]
        assert f"  faults        {f['read']} read, {f['write']} write, {f['wp']} write-protect; " \
               f"{f['remote']} remote, {f['local']} local;" in out.stderr
        assert sum(n for _, n in lat["histogram"]) == lat["count"] > 0
        assert lat["p50_ns"] <= lat["p90_ns"] <= lat["p99_ns"] <= max(lat["max_ns"], 1)
        assert all(low & (low - 1) == 0 for low, _ in lat["histogram"]), "buckets start at powers of two"
        # Every vCPU's thread registered: its faults and blocked time are its own.
        (blocked,) = report["vcpu_blocked"]
        assert blocked["vcpu"] == report["node"] and blocked["faults"] > 0
        assert 0 < blocked["blocked_ns"] <= report["run_seconds"] * 1e9
        assert blocked["share"] == pytest.approx(blocked["blocked_ns"] / (report["run_seconds"] * 1e9), rel=1e-3)
        assert f"  vCPU {blocked['vcpu']:<3}      blocked " in out.stderr
        assert report["hot_pages"] and all(p["address"] % 4096 == 0 and 0 <= p["address"] < MEM
                                           for p in report["hot_pages"])
        assert f"{report['hot_pages'][0]['address']:#x} ({report['hot_pages'][0]['faults']})" in out.stderr
        assert sum(report["timeline"]["faults"]) <= f["read"] + f["write"] + f["wp"]
        assert report["error"] is None
    # Nodes other than 0 start with nothing: their vCPU fetched its pages remotely.
    assert all(n["faults"]["remote"] > 0 for n in nodes[1:])
    # What one node sent, the others received (messages are counted at both ends).
    for kind in ("READ", "WRITE", "REPLY", "INVALIDATE", "INV_ACK"):
        assert sum(n["messages"][kind]["sent"] for n in nodes) == sum(n["messages"][kind]["received"] for n in nodes)


@requires_kvm
def test_stats_on_one_node_say_why_there_is_nothing_to_report(tmp_path: Path) -> None:
    out_file = tmp_path / "stats.json"
    out = run_cli("run", str(guest_elf("hello")), "--vcpus", "2", "--stats", "--stats-json", str(out_file))
    assert out.status == 0, out.stderr
    assert lines_of(out.stderr) == [f"ivyvm: {profile.NO_DSM_LINE}"]
    doc = json.loads(out_file.read_text())
    profile.check(doc)
    assert doc["nodes"] == [] and doc["note"] == profile.NO_DSM_LINE
