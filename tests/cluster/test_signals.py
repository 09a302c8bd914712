"""SIGINT and SIGTERM on every path: one line, status 130 (issue 11, "Signals").

Paths: a single-node `ivyvm run` (used to exit 143 silently on SIGTERM),
`ivyvm run --nodes N` (its supervisor; also tests/cluster/test_failures.py),
and `ivyvm node`, as node 0 (used to say nothing on SIGINT) or another
node, running or still joining. A signal is sent once the process has its
handler (SigCgt in /proc), so what is tested is ivyvm's own window, not
the interpreter's start-up, which no program can cover.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.common import (START_BOUND, await_exits, free_port_pairs, lines_of, start_node,
                                  start_scripted_member, wait_for_output, write_cluster)
from tests.conftest import ROOT, guest_elf, requires_kvm

STATUS_INTERRUPTED = 130
STOP_BOUND = 10.0
SIGNALS = [signal.SIGINT, signal.SIGTERM]
NAMES = ["SIGINT", "SIGTERM"]
CONSOLE_SCRIPT = Path(sys.executable).parent / "ivyvm"


def handles(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (its SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signum - 1) & 1)


def wait_for_handler(proc: subprocess.Popen[str], signum: int, bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not handles(proc.pid, signum):
        assert proc.poll() is None, f"exited with {proc.returncode} before handling {signum}"
        assert time.monotonic() < deadline, f"no handler for signal {signum} within {bound} s"
        time.sleep(0.002)


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # A shell runs background jobs with SIGINT ignored and Python keeps that; these tests want Ctrl-C.
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stopped(procs: list[subprocess.Popen[str]]) -> list[tuple[int, list[str]]]:
    exits = await_exits(procs, time.monotonic(), STOP_BOUND)
    for exit in exits:
        assert "Traceback" not in exit.stderr, exit.stderr
    return [(exit.status, lines_of(exit.stderr)) for exit in exits]


@requires_kvm
@pytest.mark.parametrize("signum", SIGNALS, ids=NAMES)
def test_single_node_run(signum: int) -> None:
    run = spawn([str(CONSOLE_SCRIPT), "run", str(guest_elf("spin")), "--vcpus", "2"])
    wait_for_output(run, "spinning", START_BOUND)
    run.send_signal(signum)
    name = signal.Signals(signum).name
    assert stopped([run]) == [(STATUS_INTERRUPTED, [f"ivyvm: interrupted by {name}"])]


@requires_kvm
@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4])
def test_single_node_run_signalled_while_it_starts(delay: float) -> None:
    """From the handler's installation on (imports, image, KVM set-up, vCPU threads starting)."""
    run = spawn([str(CONSOLE_SCRIPT), "run", str(guest_elf("spin")), "--vcpus", "2"])
    wait_for_handler(run, signal.SIGTERM)
    time.sleep(delay)
    run.send_signal(signal.SIGTERM)
    assert stopped([run]) == [(STATUS_INTERRUPTED, ["ivyvm: interrupted by SIGTERM"])]


@requires_kvm
@pytest.mark.parametrize("signum", SIGNALS, ids=NAMES)
@pytest.mark.parametrize("target", [0, 1], ids=["node0", "node1"])
def test_separately_started_nodes(tmp_path: Path, target: int, signum: int) -> None:
    """Every node's operator gets one line: the signalled node's, and the other's saying why it stopped."""
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports])
    procs = [start_node(config, node) for node in range(2)]
    try:
        wait_for_output(procs[0], "spinning", START_BOUND)
        procs[target].send_signal(signum)
        outcome = stopped(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    name = signal.Signals(signum).name
    if target == 0:
        expected = [["ivyvm: node 0: interrupted by " + name],
                    ["ivyvm: node 1: stopped by node 0: interrupted by " + name]]
    else:
        expected = [["ivyvm: node 1: interrupted by " + name], ["ivyvm: node 1: interrupted by " + name]]
    assert outcome == [(STATUS_INTERRUPTED, lines) for lines in expected]


@pytest.mark.parametrize("signum", SIGNALS, ids=NAMES)
@pytest.mark.parametrize("node", [0, 1], ids=["node0", "node1"])
def test_a_node_still_waiting_for_its_peers(tmp_path: Path, node: int, signum: int) -> None:
    """Signalled during start-up (node 0 waits for node 1, or node 1 for node 0): no KVM needed for that."""
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports],
                           extra="setup_timeout = 60")
    proc = start_node(config, node)
    try:
        wait_for_handler(proc, signal.SIGTERM)
        time.sleep(1.0)                 # well into joining: listening, connecting, waiting
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        outcome = stopped([proc])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    name = signal.Signals(signum).name
    assert outcome == [(STATUS_INTERRUPTED, [f"ivyvm: node {node}: interrupted by {name}"])]


# Node 1 joins and has its first clock probe answered (node 0 has read all it sent), then
# waits for whatever node 0 sends instead of sending its second.
MEMBER_THAT_WAITS_IN_THE_JOIN = """
import sys
from hypervisor import control, tscsync
from hypervisor.control import Msg

def wait_for_node0(channel, read_tsc):
    channel.send(control.encode(Msg.TSC_PROBE, control.TSC_PROBE.pack(1)))
    assert channel.receive().type is Msg.TSC_STAMP
    print("probing", flush=True)
    raise tscsync.StoppedByHead(channel.receive())

tscsync.measure = wait_for_node0
from hypervisor.cli import main
sys.exit(main(sys.argv[1:]))
"""


@requires_kvm
@pytest.mark.parametrize("signum", SIGNALS, ids=NAMES)
def test_node0_signalled_while_a_node_joins_tells_it_why(tmp_path: Path, signum: int) -> None:
    """Node 1 hears STOP with node 0's reason, not a reset link (CI once saw a supervised node say that)."""
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports])
    head = start_node(config, 0)
    member = start_scripted_member(config, MEMBER_THAT_WAITS_IN_THE_JOIN, [])
    try:
        wait_for_output(member, "probing", START_BOUND)
        head.send_signal(signum)
        outcome = stopped([head, member])
    finally:
        for proc in (head, member):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    name = signal.Signals(signum).name
    assert outcome == [(STATUS_INTERRUPTED, [f"ivyvm: node 0: interrupted by {name}"]),
                       (STATUS_INTERRUPTED, [f"ivyvm: node 1: stopped by node 0: interrupted by {name}"])]


@requires_kvm
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
def test_ivyvm_run_nodes_signalled_while_it_starts(delay: float) -> None:
    """The supervisor, signalled while it starts its nodes: one line, nothing left behind."""
    run = spawn([str(CONSOLE_SCRIPT), "run", str(guest_elf("spin")), "--vcpus", "2", "--nodes", "2"])
    wait_for_handler(run, signal.SIGTERM)
    time.sleep(delay)
    run.send_signal(signal.SIGTERM)
    ((status, lines),) = stopped([run])
    assert status == STATUS_INTERRUPTED
    # Before its nodes exist it has nothing to stop, so the line may lack ", stopping every node".
    assert lines in (["ivyvm: interrupted by SIGTERM"], ["ivyvm: interrupted by SIGTERM, stopping every node"]), lines


@requires_kvm
def test_a_second_ctrl_c_while_stopping_adds_nothing() -> None:
    """Impatient users press Ctrl-C twice: the clean-up still runs, and still says one line."""
    run = spawn([str(CONSOLE_SCRIPT), "run", str(guest_elf("spin")), "--vcpus", "2", "--nodes", "2"])
    wait_for_output(run, "spinning", START_BOUND)
    run.send_signal(signal.SIGINT)
    time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    assert stopped([run]) == [(STATUS_INTERRUPTED, ["ivyvm: interrupted by SIGINT, stopping every node"])]

