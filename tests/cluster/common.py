"""Running ivyvm clusters from tests: the CLI as a user runs it, and its processes."""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hypervisor import GuestResult, run_guest
from hypervisor.status import Status
from tests.conftest import ROOT, guest_elf

IVYVM = [sys.executable, "-m", "hypervisor.cli"]
SECRET = "cluster-test-secret-0123456789abcdef"
DETECTION_BOUND = 5.0      # issue 4: every other node stops within 5 s of a loss
START_BOUND = 30.0         # a spin guest prints its line well within this on a loaded machine


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str
    seconds: float


def passing_guest(name: str, vcpus: int = 2, nodes: int = 2, **options: object) -> GuestResult:
    """The guest `name` spanning `nodes` with these `ivyvm run` options: it must end with its own
    PASS line and status 0 (its data checked); the result, for what else the test wants of it."""
    result = run_guest(guest_elf(name), vcpus=vcpus, nodes=nodes, timeout=120, **options)
    assert result.verdict is not None and result.verdict.startswith(f"PASS {name}"), result
    assert result.status == 0, result.stderr
    return result


def run_cli(*args: str, timeout: float = 90.0, env: dict[str, str] | None = None) -> Outcome:
    start = time.monotonic()
    proc = subprocess.run(IVYVM + list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def verdict(out: Outcome, name: str) -> str:
    lines = [line for line in out.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert lines, f"{name}: no verdict; status {out.status}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return lines[-1]


def write_cluster(directory: Path, image: Path | str, vcpus: int, addresses: list[str], mem: str = "64M",
                  extra: str = "") -> Path:
    lines = ["[cluster]", f'image = "{image}"', f"vcpus = {vcpus}", f'mem = "{mem}"', extra]
    for address in addresses:
        lines += ["[[node]]", f'address = "{address}"']
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_node(config: Path, node: int, secret: str = SECRET, netns: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, IVYVM_SECRET=secret, PYTHONPATH=str(ROOT))
    argv = IVYVM + ["node", "--config", str(config), "--id", str(node)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns] + argv
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[Outcome]:
    """Wait for every process; kill what outlives `timeout` (and fail loudly about it)."""
    deadline = time.monotonic() + timeout
    outcomes = []
    for proc in procs:
        start = time.monotonic()
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"node process {proc.args} still ran after {timeout} s; stderr: {err}")
        outcomes.append(Outcome(proc.returncode, out, err, time.monotonic() - start))
    return outcomes


@dataclass
class Exit:
    status: int
    stdout: str
    stderr: str
    after: float            # seconds from the moment of reference to this process's exit


def wait_for_output(proc: subprocess.Popen[str], text: str, bound: float) -> str:
    """Read proc's stdout, without blocking past `bound`, until it contains `text`."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + bound
    seen = b""
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no {text!r} on stdout within {bound} s (status {proc.returncode}); "
                                 f"stdout: {seen.decode(errors='replace')!r}; stderr: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        seen += chunk
    return seen.decode(errors="replace")


def await_exits(procs: list[subprocess.Popen[str]], since: float, bound: float) -> list[Exit]:
    """Wait for every process; each exit time is measured from `since`. Kill and fail past `bound`."""
    ended: dict[int, float] = {}
    deadline = since + bound
    while len(ended) < len(procs) and time.monotonic() < deadline:
        for index, proc in enumerate(procs):
            if index not in ended and proc.poll() is not None:
                ended[index] = time.monotonic() - since
        time.sleep(0.01)
    late = [proc for index, proc in enumerate(procs) if index not in ended]
    for proc in late:
        os.killpg(proc.pid, signal.SIGKILL)
    exits = []
    for index, proc in enumerate(procs):
        out, err = proc.communicate()
        exits.append(Exit(proc.returncode, out or "", err or "", ended.get(index, float("inf"))))
    if late:
        raise AssertionError(f"still running {bound} s later: {[p.args for p in late]}; "
                             f"stderr: {[e.stderr for e in exits]}")
    return exits



def start_scripted_member(config: Path, script: str, script_args: list[str]) -> subprocess.Popen[str]:
    """Node 1 of `config` as `python -c script *script_args node ...`: a node that misbehaves on purpose."""
    env = dict(os.environ, IVYVM_SECRET=SECRET, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", script, *script_args, "node", "--config", str(config),
                             "--id", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_with_scripted_member(directory: Path, script: str, script_args: list[str], bound: float) -> list[Exit]:
    """A 2-node spin cluster whose node 1 is `python -c script *script_args node ...` (a node that
    misbehaves on purpose); both exits, each checked for status 8 and no traceback."""
    ports = free_port_pairs(2)
    config = write_cluster(directory, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports])
    head = start_node(config, 0)
    member = start_scripted_member(config, script, script_args)
    try:
        exits = await_exits([head, member], since=time.monotonic(), bound=bound)
    finally:
        for proc in (head, member):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for exit in exits:
        assert "Traceback" not in exit.stderr, exit.stderr
        assert exit.status == Status.CLUSTER, exit.stderr
    return exits

# Node 0's start-up progress ("node 0: waiting for node 1 at ...", once a second
# while nodes join): said on a slow start, never a failure line.
PROGRESS_PREFIX = "ivyvm: node 0: waiting for node "


def lines_of(text: str) -> list[str]:
    """The lines a node said, without start-up progress lines."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith(PROGRESS_PREFIX)]


def free_port_pairs(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports P with P and P+1 both free now (DSM and default control port), for hand-written configs."""
    ports: list[int] = []
    holders: list[socket.socket] = []
    try:
        while len(ports) < count:
            first = socket.socket()
            first.bind((host, 0))
            port = first.getsockname()[1]
            second = socket.socket()
            try:
                second.bind((host, port + 1))
            except OSError:
                first.close()
                second.close()
                continue
            holders += [first, second]
            ports.append(port)
    finally:
        for sock in holders:
            sock.close()
    return ports


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text`: what a test left running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


__all__ = ["Outcome", "Exit", "run_cli", "verdict", "write_cluster", "start_node", "finish",
           "processes_mentioning", "wait_for_output", "await_exits", "lines_of", "guest_elf", "SECRET",
           "DETECTION_BOUND", "START_BOUND", "free_port_pairs", "PROGRESS_PREFIX"]
