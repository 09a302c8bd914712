"""`ivyvm run --trace`, `ivyvm node --trace` / `[cluster] trace`, and `ivyvm trace merge`, as a user runs them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hypervisor import trace
from hypervisor.config import ConfigError, load_config
from tests.cluster.common import finish, free_port_pairs, guest_elf, run_cli, start_node, verdict, write_cluster
from tests.conftest import requires_kvm
from tests.trace_check import Graph, check_messages, check_remote_faults

TIMING = re.compile(r" (cycles|write|verify_rewrite|verify)=\d+")   # pagewalk's timings, which vary run to run


def result(out) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return out.status, TIMING.sub("", verdict(out, "guest"))


def check_spanning_trace(path: Path, nodes: int) -> dict:
    loaded = json.loads(path.read_text())
    g = Graph(loaded)
    assert check_messages(g) > 0
    paths = check_remote_faults(g)
    assert len(paths) >= 100, "pagewalk moves thousands of pages between the nodes"
    assert {p[0][0] for p in paths} == set(range(nodes)), "every node's vCPU had remote faults"
    for n in range(nodes):
        assert g.names[(n, trace.DSM_TID)] == "DSM event loop"
    assert {name for name in g.names.values() if name.startswith("vCPU")} == {"vCPU 0", "vCPU 1"}
    info = loaded["otherData"]["ivyvm"]
    assert info["unpaired_receives"] == 0 and info["clamped_arrows"] == 0
    assert info["faults"] == len(g.slices("vcpu"))
    return info


@requires_kvm
def test_run_trace_shows_every_remote_fault_and_changes_no_result(tmp_path: Path) -> None:
    out_file = tmp_path / "out.json"
    plain = run_cli("run", str(guest_elf("pagewalk")), "--vcpus", "2", "--nodes", "2", timeout=180)
    traced = run_cli("run", str(guest_elf("pagewalk")), "--vcpus", "2", "--nodes", "2", "--trace", str(out_file),
                     timeout=180)
    assert result(plain) == result(traced) and plain.status == 0, (plain.stderr, traced.stderr)
    assert "PASS pagewalk" in verdict(traced, "pagewalk")
    info = check_spanning_trace(out_file, 2)
    assert f"{info['faults']} faults and {info['messages']} messages of 2 nodes written to {out_file}" in traced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]      # the nodes' parts are gone
    counted = run_cli("run", str(guest_elf("spanning_counter")), "--vcpus", "2", "--nodes", "2", timeout=120)
    counted_traced = run_cli("run", str(guest_elf("spanning_counter")), "--vcpus", "2", "--nodes", "2",
                             "--trace", str(tmp_path / "c.json"), timeout=120)
    strip = lambda out: (out.status, re.sub(r" cycles=\d+", "", verdict(out, "spanning_counter")))  # noqa: E731
    assert strip(counted) == strip(counted_traced) and counted.status == 0


@requires_kvm
def test_nodes_write_their_own_files_and_merge_joins_them(tmp_path: Path) -> None:
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("pagewalk"), 2, [f"127.0.0.1:{p}" for p in ports],
                           extra='trace = "run.json"')
    outcomes = finish([start_node(config, 0), start_node(config, 1)], timeout=120)
    assert [o.status for o in outcomes] == [0, 0], [o.stderr for o in outcomes]
    parts = [tmp_path / "run.node0.json", tmp_path / "run.node1.json"]
    member = trace.read_node_trace(parts[1])
    # Node 1 measured its clock against node 0's over the control channel's heartbeats.
    assert member.clock is not None and member.clock["samples"] >= 1 and member.clock["rtt_ns"] > 0
    assert abs(member.clock["offset_ns"]) <= member.clock["rtt_ns"]   # one host: the clocks are one clock
    merged = run_cli("trace", "merge", *map(str, parts), "-o", str(tmp_path / "merged.json"))
    assert merged.status == 0 and merged.stderr.count("\n") == 1, merged.stderr
    check_spanning_trace(tmp_path / "merged.json", 2)


def test_trace_options_report_bad_input_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{")
    cases = [
        (["run", str(guest_elf("hello")), "--vcpus", "2", "--nodes", "2", "--trace", "/nonexistent/dir/t.json"],
         "directory /nonexistent/dir does not exist"),
        (["run", str(guest_elf("hello")), "--nodes", "1", "--trace", str(tmp_path)], "is a directory"),
        (["trace", "merge", str(tmp_path / "none.json"), "-o", str(tmp_path / "o.json")], "cannot read"),
        (["trace", "merge", str(junk), "-o", str(tmp_path / "o.json")], "not a node trace (not JSON)"),
        (["trace", "merge", str(junk), "-o", "/nonexistent/o.json"], "does not exist"),
        (["trace", "merge", "-o", str(tmp_path / "o.json")], "the following arguments are required"),
    ]
    for argv, why in cases:
        out = run_cli(*argv)
        assert out.status == 2 and out.stderr.count("\n") == 1 and why in out.stderr, (argv, out.stderr)
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "o.json").exists()


@requires_kvm
def test_single_node_run_says_it_has_no_dsm_to_trace(tmp_path: Path) -> None:
    out = run_cli("run", str(guest_elf("hello")), "--vcpus", "2", "--trace", str(tmp_path / "t.json"))
    assert out.status == 0 and "PASS hello" in out.stdout
    assert out.stderr.count("\n") == 1 and "single-node run does not use" in out.stderr
    assert not (tmp_path / "t.json").exists()


def test_config_trace_names_each_nodes_file(tmp_path: Path) -> None:
    config = write_cluster(tmp_path, "guest.elf", 2, ["127.0.0.1:7000", "127.0.0.1:7010"], extra='trace = "t/x.json"')
    loaded = load_config(config)
    assert loaded.trace == tmp_path / "t" / "x.json"
    assert trace.part_path(loaded.trace, 1) == tmp_path / "t" / "x.node1.json"
    bad = write_cluster(tmp_path, "guest.elf", 2, ["127.0.0.1:7000", "127.0.0.1:7010"], extra="trace = 3")
    with pytest.raises(ConfigError, match="trace must be a file name"):
        load_config(bad)
