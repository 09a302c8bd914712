"""One guest, its vCPUs on several node processes: verdicts, console, status.

Every guest program of issue 4 runs with 2 vCPUs on 2 nodes, 4 vCPUs on 2
nodes and 3 vCPUs on 3 nodes, through hypervisor.run_guest (which runs
`ivyvm run --nodes N`'s own supervisor and code path); the --stats line is
checked through the command line itself. Nothing may be left running
afterwards.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor import run_guest
from tests.cluster.common import (finish, free_port_pairs, guest_elf, passing_guest, processes_mentioning, run_cli,
                                  start_node)
from tests.conftest import requires_kvm

SHAPES = [(2, 2), (4, 2), (3, 3)]
GUESTS = ["hello", "spanning_counter", "mp_litmus", "dekker", "ipi_pingpong", "pagewalk", "pagecost"]


@requires_kvm
@pytest.mark.parametrize("vcpus, nodes", SHAPES, ids=[f"{v}vcpu-{n}node" for v, n in SHAPES])
@pytest.mark.parametrize("name", GUESTS)
def test_guest_spanning_nodes_passes(name: str, vcpus: int, nodes: int) -> None:
    result = passing_guest(name, vcpus, nodes)
    assert f"vcpus={vcpus}" in result.verdict
    assert not processes_mentioning(str(guest_elf(name))), "a node process outlived `ivyvm run`"


@requires_kvm
def test_console_of_every_vcpu_reaches_node0_in_order() -> None:
    result = run_guest(guest_elf("hello"), vcpus=4, nodes=2, timeout=120)
    assert result.status == 0, result.stderr
    greetings = [line for line in result.lines if line.startswith("hello from")]
    # Lines arrive whole (the guest's console lock) and each vCPU's exactly once.
    assert sorted(greetings) == sorted(f"hello from vCPU {i} of 4" for i in range(4))


@requires_kvm
@pytest.mark.parametrize("options", [{"read_ownership": "ivy"}, {"manager": "central"},
                                     {"manager": "fixed"}, {"poll_us": 20, "hold_us": 0}],
                         ids=["ivy", "central", "fixed", "poll-no-hold"])
def test_protocol_options_run_a_spanning_guest(options: dict[str, object]) -> None:
    result = run_guest(guest_elf("spanning_counter"), vcpus=3, nodes=3, timeout=120, **options)
    assert result.verdict is not None and result.verdict.startswith("PASS"), result
    assert result.status == 0


@requires_kvm
def test_memtest_across_two_nodes() -> None:
    result = run_guest(guest_elf("memtest"), vcpus=2, nodes=2, timeout=120)
    assert result.verdict is not None and result.verdict.startswith("PASS memtest"), result
    assert result.status == 0


@requires_kvm
def test_stats_show_pages_moving_between_nodes() -> None:
    out = run_cli("run", str(guest_elf("spanning_counter")), "--vcpus", "2", "--nodes", "2", "--stats")
    assert out.status == 0, out.stderr
    heads = [line for line in out.stderr.splitlines() if line.startswith("node ")]
    assert [h.split(" (")[0] for h in heads] == ["node 0", "node 1"], out.stderr
    faults = [line for line in out.stderr.splitlines() if line.startswith("  faults ")]
    for node, line in enumerate(faults):
        remote = int(line.split("; ")[1].split()[0])
        # vCPU 1 runs on node 1 and starts with nothing: it must fetch code, stack and counters.
        assert remote > 0, line


@requires_kvm
def test_explicit_placement_from_the_config(tmp_path: Path) -> None:
    """GiantVM's -local-cpu: any vCPU on any node, here node 0 runs vCPUs 0 and 2."""
    port0, port1 = free_port_pairs(2)
    config = tmp_path / "cluster.toml"
    config.write_text(f"""
[cluster]
image = "{guest_elf('hello')}"
vcpus = 3
[[node]]
address = "127.0.0.1:{port0}"
vcpus = [0, 2]
[[node]]
address = "127.0.0.1:{port1}"
vcpus = [1]
""")
    head, member = start_node(config, 0), start_node(config, 1)
    outcomes = finish([head, member], timeout=60)
    assert [o.status for o in outcomes] == [0, 0], [o.stderr for o in outcomes]
    assert "PASS hello: vcpus=3" in outcomes[0].stdout
    assert sorted(line for line in outcomes[0].stdout.splitlines() if line.startswith("hello")) == \
        [f"hello from vCPU {i} of 3" for i in range(3)]
