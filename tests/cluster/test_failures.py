"""Issue 4, failure handling: a spanning guest must end cleanly whatever breaks.

A node killed mid-run, a refused handshake (wrong secret, other image, other
RAM size), a guest error or the exit port on a node other than node 0,
Ctrl-C or SIGTERM to `ivyvm run --nodes N`: each must end with its one
documented line and exit status within its bound, and leave no process
behind. The guests are small programs of guest/programs: `spin` keeps the
DSM busy on every link forever (it prints "spinning" once every vCPU runs),
`faulty_remote` and `exit_remote` act on the last vCPU, which runs on the
last node.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.common import (DETECTION_BOUND, IVYVM, SECRET, START_BOUND, Exit, await_exits, free_port_pairs,
                                  guest_elf, lines_of, processes_mentioning, run_cli, start_node, wait_for_output,
                                  write_cluster)
from hypervisor.status import Status
from tests.conftest import ROOT, requires_kvm

STATUS_GUEST_IO = Status.GUEST_IO
STATUS_CLUSTER = Status.CLUSTER
STATUS_INTERRUPTED = Status.INTERRUPTED
SETUP_TIMEOUT = 3.0        # [cluster] setup_timeout for the refused-handshake tests
STOP_BOUND = 5.0           # Ctrl-C, SIGTERM: "within a few seconds"


def node_pids(supervisor: subprocess.Popen[str], nnodes: int, bound: float = 5.0) -> dict[int, int]:
    """The `ivyvm node` children of one `ivyvm run --nodes N`, by node id, found in /proc by parent."""
    deadline = time.monotonic() + bound
    while True:
        found: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == supervisor.pid and "node" in argv and "--id" in argv:
                found[int(argv[argv.index("--id") + 1])] = int(entry.name)
        if len(found) == nnodes or time.monotonic() > deadline:
            assert sorted(found) == list(range(nnodes)), f"node processes found: {found}"
            return found
        time.sleep(0.05)


def start_run(*args: str) -> subprocess.Popen[str]:
    """`ivyvm run ...` as a user starts it, in its own process group (as a shell job is)."""
    return subprocess.Popen(IVYVM + ["run", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def assert_nothing_left(*marks: str) -> None:
    # A killed child can take a moment to be reaped by its parent's exit.
    deadline = time.monotonic() + 2.0
    while any(processes_mentioning(mark) for mark in marks) and time.monotonic() < deadline:
        time.sleep(0.05)
    for mark in marks:
        assert not processes_mentioning(mark), f"processes still mention {mark}: {processes_mentioning(mark)}"


def config_dir_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return str(Path(argv[argv.index("--config") + 1]).parent)


def assert_names_lost_node(stderr: str, survivors: list[int], victim: int) -> None:
    """Every survivor said exactly one line, and it names the node that was lost."""
    lines = lines_of(stderr)
    for node in survivors:
        own = [line for line in lines if line.startswith(f"ivyvm: node {node}:")]
        assert len(own) == 1, f"node {node} should say exactly one line; stderr:\n{stderr}"
        assert re.search(rf"\bnode {victim}\b", own[0].split(":", 2)[2]), \
            f"node {node}'s line does not name node {victim}: {own[0]}"


# --- a node killed -------------------------------------------------------------

KILLS = [(1, 2), (0, 2), (1, 3), (0, 3), (2, 3)]


@requires_kvm
@pytest.mark.parametrize("victim, nnodes", KILLS, ids=[f"node{v}-of-{n}" for v, n in KILLS])
def test_kill_9_of_a_node_under_ivyvm_run(victim: int, nnodes: int) -> None:
    run = start_run(str(guest_elf("spin")), "--vcpus", str(nnodes), "--nodes", str(nnodes))
    try:
        wait_for_output(run, "spinning", START_BOUND)
        pids = node_pids(run, nnodes)
        scratch = config_dir_of(pids[0])
        time.sleep(0.2)
        os.kill(pids[victim], signal.SIGKILL)
        killed = time.monotonic()
        (exit,) = await_exits([run], killed, DETECTION_BOUND)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert exit.status == STATUS_CLUSTER, exit.stderr
    survivors = [n for n in range(nnodes) if n != victim]
    assert_names_lost_node(exit.stderr, survivors, victim)
    if victim == 0:
        assert "node 0 was killed by SIGKILL" in exit.stderr
    print(f"kill -9 node {victim} of {nnodes}: ivyvm run exited after {exit.after:.2f} s")
    assert_nothing_left(scratch)


@requires_kvm
@pytest.mark.parametrize("victim, nnodes", KILLS, ids=[f"node{v}-of-{n}" for v, n in KILLS])
def test_kill_9_of_a_separately_started_node(tmp_path: Path, victim: int, nnodes: int) -> None:
    ports = free_port_pairs(nnodes)
    config = write_cluster(tmp_path, guest_elf("spin"), nnodes, [f"127.0.0.1:{p}" for p in ports])
    procs = [start_node(config, node) for node in range(nnodes)]
    try:
        wait_for_output(procs[0], "spinning", START_BOUND)
        time.sleep(0.2)
        procs[victim].kill()
        killed = time.monotonic()
        survivors = [n for n in range(nnodes) if n != victim]
        exits = await_exits([procs[n] for n in survivors], killed, DETECTION_BOUND)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for node, exit in zip(survivors, exits):
        assert exit.status == STATUS_CLUSTER, f"node {node}: status {exit.status}\n{exit.stderr}"
        assert_names_lost_node(exit.stderr, [node], victim)
        assert len(lines_of(exit.stderr)) == 1, exit.stderr
        print(f"kill -9 node {victim} of {nnodes}: node {node} stopped after {exit.after:.2f} s: {exit.stderr.strip()}")
    assert_nothing_left(str(config))


FREEZES = [(0, 2), (1, 2), (1, 3)]


@requires_kvm
@pytest.mark.parametrize("victim, nnodes", FREEZES, ids=[f"node{v}-of-{n}" for v, n in FREEZES])
def test_frozen_node_is_taken_for_dead(tmp_path: Path, victim: int, nnodes: int) -> None:
    """SIGSTOP: the sockets stay open and say nothing, as when a host hangs; only silence tells.

    With 3 nodes, node 0 and node 2 both time node 1 out, about at once: whichever
    tells the other first, each must still say one line naming node 1.
    """
    ports = free_port_pairs(nnodes)
    config = write_cluster(tmp_path, guest_elf("spin"), nnodes, [f"127.0.0.1:{p}" for p in ports])
    procs = [start_node(config, node) for node in range(nnodes)]
    survivors = [n for n in range(nnodes) if n != victim]
    try:
        wait_for_output(procs[0], "spinning", START_BOUND)
        time.sleep(0.2)
        procs[victim].send_signal(signal.SIGSTOP)
        exits = await_exits([procs[n] for n in survivors], time.monotonic(), DETECTION_BOUND)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for node, exit in zip(survivors, exits):
        assert exit.status == STATUS_CLUSTER, f"node {node}: {exit.status}\n{exit.stderr}"
        assert len(lines_of(exit.stderr)) == 1, f"node {node}:\n{exit.stderr}"
        assert_names_lost_node(exit.stderr, [node], victim)
        assert f"node {victim} silent for " in exit.stderr and "waiting for" in exit.stderr, exit.stderr
        print(f"node {victim} of {nnodes} frozen: node {node} stopped after {exit.after:.2f} s: {exit.stderr.strip()}")
    assert_nothing_left(str(config))


@requires_kvm
def test_frozen_node_0_does_not_hold_ivyvm_run() -> None:
    """Node 1 notices and leaves; the supervisor must not then wait for node 0 forever."""
    run = start_run(str(guest_elf("spin")), "--vcpus", "2", "--nodes", "2")
    try:
        wait_for_output(run, "spinning", START_BOUND)
        pids = node_pids(run, 2)
        scratch = config_dir_of(pids[0])
        os.kill(pids[0], signal.SIGSTOP)
        # Node 1 notices within DETECTION_BOUND, then node 0 gets the supervisor's grace period.
        (exit,) = await_exits([run], time.monotonic(), DETECTION_BOUND + 5.0 + 3.0)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert exit.status == STATUS_CLUSTER, exit.stderr
    assert "ivyvm: node 1: node 0 silent for" in exit.stderr, exit.stderr
    assert "node 0 did not stop within" in exit.stderr, exit.stderr
    print(f"node 0 frozen: ivyvm run exited after {exit.after:.2f} s")
    assert_nothing_left(scratch)


# --- refused at setup -------------------------------------------------------------

def _two_configs(tmp_path: Path, image0: Path, image1: Path, mem1: str = "64M") -> tuple[Path, Path]:
    """One cluster file per host: identical but for what the test makes differ on node 1."""
    addresses = [f"127.0.0.1:{p}" for p in free_port_pairs(2)]
    extra = f"setup_timeout = {SETUP_TIMEOUT}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_cluster(tmp_path / "a", image0, 2, addresses, extra=extra)
    second = write_cluster(tmp_path / "b", image1, 2, addresses, mem=mem1, extra=extra)
    return first, second


def _show(*exits: Exit) -> None:
    for node, exit in enumerate(exits):
        print(f"node {node} stopped after {exit.after:.2f} s: {exit.stderr.strip()}")


def _run_pair(config0: Path, config1: Path, secret1: str = SECRET) -> tuple[Exit, Exit]:
    started = time.monotonic()
    procs = [start_node(config0, 0), start_node(config1, 1, secret=secret1)]
    try:
        exit0, exit1 = await_exits(procs, started, SETUP_TIMEOUT + 10)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return exit0, exit1


@requires_kvm
def test_wrong_secret_is_refused(tmp_path: Path) -> None:
    elf = guest_elf("spanning_counter")
    config0, config1 = _two_configs(tmp_path, elf, elf)
    exit0, exit1 = _run_pair(config0, config1, secret1="not-the-cluster-secret-at-all-0000")
    for node, exit in ((0, exit0), (1, exit1)):
        lines = lines_of(exit.stderr)
        assert exit.status == STATUS_CLUSTER, f"node {node}: {exit.status}\n{exit.stderr}"
        assert len(lines) == 1 and "authentication failed" in lines[0], f"node {node}:\n{exit.stderr}"
        assert "Traceback" not in exit.stderr
        assert exit.after < SETUP_TIMEOUT + 6, f"node {node} took {exit.after:.1f} s"
    # Node 0 connects, so it checks node 1's proof at once; node 1 accepts, and keeps
    # accepting until setup_timeout in case the real node 0 is yet to come.
    assert "node 1" in exit0.stderr and exit0.after < SETUP_TIMEOUT, exit0
    # Neither node can tell which secret is wrong: neither blames the other for not knowing it.
    assert "does not know" not in exit0.stderr + exit1.stderr, (exit0.stderr, exit1.stderr)
    assert not exit0.stdout and not exit1.stdout, "the guest ran although the handshake failed"
    _show(exit0, exit1)
    assert_nothing_left(str(config0), str(config1))


@requires_kvm
def test_different_image_is_refused(tmp_path: Path) -> None:
    config0, config1 = _two_configs(tmp_path, guest_elf("spanning_counter"), guest_elf("hello"))
    exit0, exit1 = _run_pair(config0, config1)
    assert (exit0.status, exit1.status) == (STATUS_CLUSTER, STATUS_CLUSTER), (exit0.stderr, exit1.stderr)
    (line0,) = lines_of(exit0.stderr)
    assert line0.startswith("ivyvm: node 1 runs a different guest image (sha256 "), line0
    (line1,) = lines_of(exit1.stderr)
    assert "refused by node 0" in line1 and "different guest image" in line1, line1
    assert not exit0.stdout and not exit1.stdout, "the guest ran although the images differ"
    _show(exit0, exit1)
    assert_nothing_left(str(config0), str(config1))


@requires_kvm
def test_different_ram_size_is_refused(tmp_path: Path) -> None:
    elf = guest_elf("spanning_counter")
    config0, config1 = _two_configs(tmp_path, elf, elf, mem1="32M")
    exit0, exit1 = _run_pair(config0, config1)
    for node, exit in ((0, exit0), (1, exit1)):
        assert exit.status == STATUS_CLUSTER, f"node {node}: {exit.status}\n{exit.stderr}"
        (line,) = lines_of(exit.stderr)
        assert "RAM size" in line and str(64 << 20) in line and str(32 << 20) in line, f"node {node}: {line}"
    assert not exit0.stdout and not exit1.stdout
    _show(exit0, exit1)
    assert_nothing_left(str(config0), str(config1))


# --- the guest ends it from a node other than node 0 ----------------------------------

@requires_kvm
@pytest.mark.parametrize("nnodes", [2, 3])
def test_guest_error_on_a_remote_node_is_reported_once(nnodes: int) -> None:
    elf = guest_elf("faulty_remote")
    out = run_cli("run", str(elf), "--vcpus", str(nnodes), "--nodes", str(nnodes), timeout=60)
    last = nnodes - 1
    assert out.status == STATUS_GUEST_IO, out.stderr
    lines = lines_of(out.stderr)
    assert len(lines) == 1, f"a guest error must be reported once:\n{out.stderr}"
    assert lines[0].startswith(f"ivyvm: node {last} vcpu {last}: unhandled port I/O: write of 1 byte 0x5a "
                               f"to port 0x1234"), lines[0]
    assert f"vCPU {last} writes to unassigned port" in out.stdout
    assert not processes_mentioning(str(elf))


@requires_kvm
@pytest.mark.parametrize("nnodes", [2, 3])
def test_exit_port_on_a_remote_node_stops_every_node(nnodes: int) -> None:
    elf = guest_elf("exit_remote")
    out = run_cli("run", str(elf), "--vcpus", str(nnodes), "--nodes", str(nnodes), timeout=60)
    assert out.status == 42, out.stderr
    assert f"exit_remote: vCPU {nnodes - 1} exits with status 42" in out.stdout
    assert not lines_of(out.stderr), out.stderr
    assert not processes_mentioning(str(elf))


# --- interrupted -----------------------------------------------------------------------

@requires_kvm
@pytest.mark.parametrize("nnodes", [2, 3])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_ivyvm_run_stops_every_node(signum: int, nnodes: int) -> None:
    run = start_run(str(guest_elf("spin")), "--vcpus", str(nnodes), "--nodes", str(nnodes))
    try:
        wait_for_output(run, "spinning", START_BOUND)
        pids = node_pids(run, nnodes)
        scratch = config_dir_of(pids[0])
        # Ctrl-C signals the terminal's foreground process group; the nodes are in sessions of their own.
        os.killpg(run.pid, signum)
        sent = time.monotonic()
        (exit,) = await_exits([run], sent, STOP_BOUND)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert exit.status == STATUS_INTERRUPTED, exit.stderr
    # The user knows why it stopped: one line, not one per node.
    name = signal.Signals(signum).name
    assert lines_of(exit.stderr) == [f"ivyvm: interrupted by {name}, stopping every node"], exit.stderr
    assert_nothing_left(scratch)
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), f"node process {pid} outlived ivyvm run"
    print(f"{signal.Signals(signum).name}: ivyvm run exited after {exit.after:.2f} s")


@requires_kvm
def test_kill_9_of_ivyvm_run_takes_its_nodes_along() -> None:
    """The supervisor cannot clean up after SIGKILL: its children follow it by PR_SET_PDEATHSIG."""
    run = start_run(str(guest_elf("spin")), "--vcpus", "2", "--nodes", "2")
    try:
        wait_for_output(run, "spinning", START_BOUND)
        pids = node_pids(run, 2)
        scratch = config_dir_of(pids[0])
        os.kill(run.pid, signal.SIGKILL)
        await_exits([run], time.monotonic(), STOP_BOUND)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert_nothing_left(scratch)


@requires_kvm
@pytest.mark.parametrize("target", [0, 1], ids=["node0", "node1"])
def test_ctrl_c_on_one_separately_started_node_stops_the_cluster(tmp_path: Path, target: int) -> None:
    """An operator's Ctrl-C on any host stops the guest everywhere with 130, not as a lost node."""
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports])
    procs = [start_node(config, node) for node in range(2)]
    try:
        wait_for_output(procs[0], "spinning", START_BOUND)
        procs[target].send_signal(signal.SIGINT)
        exits = await_exits(procs, time.monotonic(), STOP_BOUND)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for node, exit in enumerate(exits):
        assert exit.status == STATUS_INTERRUPTED, f"node {node}: {exit.status}\n{exit.stderr}"
        assert "Traceback" not in exit.stderr, exit.stderr
    # Each operator learns why the guest stopped, in one line, whichever host had the Ctrl-C.
    if target == 0:
        assert lines_of(exits[0].stderr) == ["ivyvm: node 0: interrupted by SIGINT"], exits[0].stderr
        assert lines_of(exits[1].stderr) == ["ivyvm: node 1: stopped by node 0: interrupted by SIGINT"], \
            exits[1].stderr
    else:
        assert lines_of(exits[0].stderr) == ["ivyvm: node 1: interrupted by SIGINT"], exits[0].stderr
        assert lines_of(exits[1].stderr) == ["ivyvm: node 1: interrupted by SIGINT"], exits[1].stderr
    assert_nothing_left(str(config))
