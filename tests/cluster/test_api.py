"""hypervisor.run_guest: results, one exception per failure class, time limits, on one node and several."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import hypervisor
from hypervisor import api
from tests.cluster.common import guest_elf, processes_mentioning
from tests.conftest import ROOT, requires_kvm

NODES = [1, 2]


@requires_kvm
@pytest.mark.parametrize("nodes", NODES)
def test_result_carries_status_console_and_per_node_stats(nodes: int) -> None:
    result = hypervisor.run_guest(guest_elf("spanning_counter"), vcpus=2, nodes=nodes, timeout=120)
    assert result.status == 0
    assert result.verdict is not None and result.verdict.startswith("PASS spanning_counter: vcpus=2"), result
    assert [s["node"] for s in result.stats] == list(range(nodes))
    assert sorted(v for s in result.stats for v in s["vcpus"]) == [0, 1]
    if nodes == 1:
        assert result.stats[0]["dsm"] is None
    else:
        # vCPU 1 on node 1 starts with nothing: it fetches code, stack and counters.
        assert result.stats[1]["dsm"]["faults"]["remote"] > 0, result.stats


@requires_kvm
def test_options_are_the_command_lines() -> None:
    result = hypervisor.run_guest(guest_elf("spanning_counter"), vcpus=3, nodes=3, read_ownership="ivy",
                                  manager="central", poll_us=20, hold_us=0, timeout=120)
    assert result.verdict is not None and result.verdict.startswith("PASS"), result


def test_command_line_spelling() -> None:
    argv = api.command_line("g.elf", 2, 2, "128M", {"hold_us": 0, "verbose": True, "stats": False,
                                                     "poll_us": None})
    assert argv[2:] == ["--vcpus", "2", "--nodes", "2", "--mem", "128M", "--hold-us", "0", "--verbose"]
    assert Path(argv[1]).is_absolute()


@pytest.mark.parametrize("kwargs, needle", [
    ({"frobnicate": 1}, "unrecognized arguments: --frobnicate 1"),
    ({"vcpus": 0}, "vCPU count 0 outside 1..64"),
    ({"mem": "3M"}, "--mem"),
    ({"timeout": 0}, "--timeout"),
])
def test_bad_arguments_raise_usage_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(hypervisor.UsageError) as info:
        hypervisor.run_guest("g.elf", **kwargs)
    assert info.value.status == 2 and needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_more_nodes_than_vcpus_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(hypervisor.UsageError, match="--nodes 2 is more than --vcpus 1"):
        hypervisor.run_guest(tmp_path / "g.elf", vcpus=1, nodes=2)


@pytest.mark.parametrize("nodes", NODES)
def test_refused_image(tmp_path: Path, nodes: int) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(hypervisor.ImageRefused) as info:
        hypervisor.run_guest(bad, vcpus=2, nodes=nodes)
    assert info.value.status == 3
    assert str(info.value) == f"ivyvm: {bad}: not an ELF file (bad magic)"


@requires_kvm
@pytest.mark.parametrize("nodes", NODES)
def test_guest_error_carries_the_cli_line_and_the_console(nodes: int) -> None:
    with pytest.raises(hypervisor.GuestError) as info:
        hypervisor.run_guest(guest_elf("faulty_remote"), vcpus=2, nodes=nodes, timeout=120)
    err = info.value
    assert err.status == 4
    where = "node 1 vcpu 1" if nodes == 2 else "vcpu 1"
    assert str(err).startswith(f"ivyvm: {where}: unhandled port I/O"), str(err)
    assert str(err).count("\n") == 0, "one line, as the CLI says it"
    assert "faulty_remote: vCPU 1 writes to unassigned port 0x1234" in err.console


@requires_kvm
def test_triple_fault_is_a_guest_error() -> None:
    with pytest.raises(hypervisor.GuestError) as info:
        hypervisor.run_guest(guest_elf("faulty_triple"))
    assert info.value.status == 5


@requires_kvm
@pytest.mark.parametrize("nodes", NODES)
def test_timeout_stops_every_node(nodes: int) -> None:
    elf = guest_elf("spin")
    with pytest.raises(hypervisor.GuestTimeout) as info:
        hypervisor.run_guest(elf, vcpus=2, nodes=nodes, timeout=3)
    assert isinstance(info.value, TimeoutError)
    assert "time limit of 3 s reached" in str(info.value)
    assert "spinning" in info.value.console
    assert not processes_mentioning(str(elf)), "a node outlived the time limit"


@pytest.fixture(scope="module")
def exits_with_8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The starter, changed to exit with 8 (the cluster-error status) by its own choice."""
    copy = tmp_path_factory.mktemp("exit8") / "starter"
    shutil.copytree(ROOT / "guest" / "starter", copy, ignore=shutil.ignore_patterns("*.o", "*.elf"))
    main = copy / "main.c"
    main.write_text(main.read_text().replace("return ok ? 0 : 1;", "return ok ? 8 : 1;"))
    subprocess.run(["make", "-s", "-C", str(copy)], check=True, capture_output=True, timeout=120)
    return copy / "starter.elf"


@requires_kvm
@pytest.mark.parametrize("nodes", NODES)
def test_a_status_the_guest_wrote_is_never_an_exception(exits_with_8: Path, nodes: int) -> None:
    result = hypervisor.run_guest(exits_with_8, vcpus=2, nodes=nodes, timeout=120)
    assert result.status == 8
    assert result.lines[-1] == "PASS starter: 2 vCPUs, 64 MiB"


def test_cluster_error_from_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the supervisor says and exits with decides the class (here a stand-in supervisor)."""
    real = subprocess.Popen

    def fake(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        script = "echo console; echo 'ivyvm: node 0: node 1 left while idle' >&2; exit 8"
        return real(["sh", "-c", script], **kwargs)   # type: ignore[arg-type]

    monkeypatch.setattr(api.subprocess, "Popen", fake)
    with pytest.raises(hypervisor.ClusterError) as info:
        hypervisor.run_guest(guest_elf("hello"), vcpus=2, nodes=2)
    assert (info.value.status, str(info.value), info.value.console) == \
        (8, "ivyvm: node 0: node 1 left while idle", "console\n")
