"""Issue 8, section 4: a time limit for a run, and node 0 saying who it waits for.

`ivyvm run --timeout SECONDS` (and `[cluster] timeout`) stops a guest that
never ends, on one node and on several, with status 9 and one line, and
leaves no process behind. While nodes join, node 0 names once a second the
nodes it still waits for.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from hypervisor.status import Status
from tests.cluster.common import (PROGRESS_PREFIX, await_exits, free_port_pairs, guest_elf, lines_of, start_node,
                                  write_cluster)
from tests.cluster.test_failures import node_pids, start_run
from tests.conftest import requires_kvm

STATUS_TIMEOUT = 9
LIMIT = 3.0
SLACK = 1.0                # the bound: stopped within the limit + 1 s


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_status_table_documents_the_time_limit() -> None:
    from hypervisor import cli
    from hypervisor.status import Status
    assert Status.TIMEOUT == STATUS_TIMEOUT
    assert f"  {STATUS_TIMEOUT}      time limit" in cli.EXIT_STATUSES
    abi = (Path(__file__).resolve().parents[2] / "docs" / "guest-abi.md").read_text()
    assert f"| {STATUS_TIMEOUT} | time limit reached" in abi


@requires_kvm
@pytest.mark.parametrize("nnodes", [1, 2])
def test_timeout_stops_a_guest_that_spins_forever(nnodes: int) -> None:
    started = time.monotonic()
    run = start_run(str(guest_elf("spin")), "--vcpus", "2", "--nodes", str(nnodes), "--timeout", f"{LIMIT:g}")
    nodes = node_pids(run, nnodes) if nnodes > 1 else {}
    (exit,) = await_exits([run], started, LIMIT + 10)
    assert exit.status == STATUS_TIMEOUT, exit.stderr
    assert LIMIT - 0.5 <= exit.after <= LIMIT + SLACK, f"stopped after {exit.after:.2f} s"
    assert "spinning: vcpus=2" in exit.stdout, "the guest never ran"
    (line,) = lines_of(exit.stderr)
    stopped = "every node was stopped" if nnodes > 1 else "the guest was stopped"
    assert line == f"ivyvm: time limit of {LIMIT:g} s reached: {stopped}"
    assert not [pid for pid in nodes.values() if _alive(pid)], f"node processes left: {nodes}"
    print(f"{nnodes} node(s): stopped {exit.after:.2f} s after start with --timeout {LIMIT:g}")


@requires_kvm
def test_config_timeout_stops_separately_started_nodes(tmp_path: Path) -> None:
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports],
                           extra=f"timeout = {LIMIT:g}")
    started = time.monotonic()
    procs = [start_node(config, 0), start_node(config, 1)]
    exit0, exit1 = await_exits(procs, started, LIMIT + 10)
    assert (exit0.status, exit1.status) == (STATUS_TIMEOUT, STATUS_TIMEOUT), (exit0.stderr, exit1.stderr)
    assert lines_of(exit0.stderr) == [f"ivyvm: time limit of {LIMIT:g} s reached: every node was stopped"]
    assert lines_of(exit1.stderr) == [], "node 0 says it once"
    assert max(exit0.after, exit1.after) <= LIMIT + SLACK + 0.5, (exit0.after, exit1.after)


@requires_kvm
def test_node_0_names_the_nodes_it_waits_for_once_a_second(tmp_path: Path) -> None:
    ports = free_port_pairs(3)
    config = write_cluster(tmp_path, guest_elf("spin"), 3, [f"127.0.0.1:{p}" for p in ports],
                           extra="setup_timeout = 3.6")
    started = time.monotonic()
    (exit0,) = await_exits([start_node(config, 0)], started, 15)
    progress = [line for line in exit0.stderr.splitlines() if line.startswith(PROGRESS_PREFIX)]
    assert 2 <= len(progress) <= 4, exit0.stderr
    assert progress[0] == (f"ivyvm: node 0: waiting for node 1 at 127.0.0.1:{ports[1]}, "
                           f"node 2 at 127.0.0.1:{ports[2]}"), progress
    assert exit0.status == Status.CLUSTER and len(lines_of(exit0.stderr)) == 1, exit0.stderr


@requires_kvm
def test_time_limit_reached_while_nodes_join_is_status_9(tmp_path: Path) -> None:
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports],
                           extra="timeout = 1.5\nsetup_timeout = 20")
    started = time.monotonic()
    (exit0,) = await_exits([start_node(config, 0)], started, 10)
    assert exit0.status == STATUS_TIMEOUT, exit0.stderr
    assert exit0.after < 1.5 + SLACK + 0.5
    (line,) = lines_of(exit0.stderr)
    assert "time limit of 1.5 s reached while" in line, line
