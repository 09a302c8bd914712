"""`ivyvm run --nodes N --netns`: every node in its own namespace, links delayed and lossy, always cleaned up.

Namespace names carry the supervisor's pid and a random tag, so concurrent
runs never share one; each test checks that the ones its run made are gone.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hypervisor import netns, run_guest
from tests.cluster.common import IVYVM, guest_elf, processes_mentioning, wait_for_output
from tests.conftest import ROOT, requires_kvm, requires_netns

SPANNING = ["hello", "spanning_counter", "mp_litmus", "dekker", "ipi_pingpong", "pagewalk"]
CLEANUP_BOUND = 15.0       # seconds for the helper to notice its supervisor is gone and delete


def ours(pid: int) -> set[str]:
    return {name for name in netns.namespaces() if name.startswith(f"{netns.PREFIX}{pid}-")}


def wait_until(predicate, bound: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@requires_kvm
@requires_netns
@pytest.mark.parametrize("shaping", [{"delay": "200us"}, {"loss": "1%"}], ids=["delay-200us", "loss-1pct"])
@pytest.mark.parametrize("name", SPANNING)
def test_spanning_guest_exact_under_delay_and_loss(name: str, shaping: dict[str, str]) -> None:
    result = run_guest(guest_elf(name), vcpus=2, nodes=2, netns=True, timeout=180, **shaping)
    assert result.verdict is not None and result.verdict.startswith(f"PASS {name}: vcpus=2"), result
    assert result.status == 0
    assert result.stats[1]["dsm"]["faults"]["remote"] > 0, "node 1 never fetched a page over the link"
    # Only this run's: other test sessions on the host may hold namespaces of their own meanwhile.
    assert result.supervisor_pid is not None
    assert not ours(result.supervisor_pid), f"namespaces outlived the run: {ours(result.supervisor_pid)}"


@requires_kvm
@requires_netns
def test_three_nodes_all_shaping_options() -> None:
    result = run_guest(guest_elf("spanning_counter"), vcpus=3, nodes=3, netns=True, delay="100us",
                       jitter="20us", loss="0.1%", rate="1gbit", timeout=180)
    assert result.verdict is not None and result.verdict.startswith("PASS spanning_counter: vcpus=3"), result


def start_supervisor(name: str, *options: str) -> subprocess.Popen[str]:
    argv = IVYVM + ["run", str(guest_elf(name)), "--vcpus", "2", "--nodes", "2", "--netns", *options]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def helper_pids(names: set[str]) -> list[int]:
    return sorted({pid for name in names for pid in processes_mentioning(name)})


@requires_kvm
@requires_netns
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_namespaces_removed_when_the_supervisor_is_stopped(how: signal.Signals) -> None:
    elf = str(guest_elf("spin"))
    proc = start_supervisor("spin", "--delay", "100us")
    try:
        wait_for_output(proc, "spinning", 60)
        made = ours(proc.pid)
        assert len(made) == 2, made
        proc.send_signal(how)
        status = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == (-signal.SIGKILL if how == signal.SIGKILL else 130), (status, proc.stderr.read())
    assert wait_until(lambda: not (ours(proc.pid) & made), CLEANUP_BOUND), f"left behind: {ours(proc.pid)}"
    assert wait_until(lambda: not processes_mentioning(elf), CLEANUP_BOUND), "a node outlived its supervisor"


@requires_kvm
@requires_netns
def test_the_next_run_sweeps_what_a_killed_supervisor_and_helper_left() -> None:
    proc = start_supervisor("spin")
    try:
        wait_for_output(proc, "spinning", 60)
        made = ours(proc.pid)
        helpers = helper_pids(made)
        assert helpers, "no link emulator process found"
        for pid in helpers:            # the helper first, so nobody is left to clean up
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ours(proc.pid) == made, "nothing should have cleaned up yet"
    result = run_guest(guest_elf("hello"), vcpus=2, nodes=2, netns=True, timeout=120)
    assert result.status == 0
    assert not ours(proc.pid), "the next --netns run did not sweep a dead supervisor's namespaces"


@pytest.mark.parametrize("argv, needle", [
    (["--delay", "100us"], "--delay: link shaping needs --netns"),
    (["--loss", "1%", "--rate", "1gbit"], "--loss, --rate: link shaping needs --netns"),
])
def test_shaping_needs_netns(argv: list[str], needle: str, tmp_path: Path) -> None:
    proc = subprocess.run(IVYVM + ["run", str(tmp_path / "g.elf"), "--vcpus", "2", "--nodes", "2", *argv],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr == f"ivyvm: {needle}\n", proc.stderr


def test_netns_needs_several_nodes(tmp_path: Path) -> None:
    proc = subprocess.run(IVYVM + ["run", str(tmp_path / "g.elf"), "--netns"], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--nodes 2 or more" in proc.stderr


@pytest.mark.parametrize("option, value, needle", [
    ("--delay", "100", "invalid time"), ("--delay", "20s", "more than 10 s"), ("--jitter", "-1us", "invalid time"),
    ("--loss", "0.1", "invalid loss"), ("--loss", "101%", "invalid loss"), ("--rate", "fast", "invalid rate"),
    ("--rate", "1bit", "below 8kbit"),
])
def test_bad_shaping_values(option: str, value: str, needle: str) -> None:
    proc = subprocess.run(IVYVM + ["run", "g.elf", "--nodes", "2", "--vcpus", "2", "--netns", f"{option}={value}"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr


def test_parsers() -> None:
    assert netns.parse_time("100us") == 100_000
    assert netns.parse_time("0.5ms") == 500_000
    assert netns.parse_time("250ns") == 250
    assert netns.parse_loss("0.1%") == 1_000_000
    assert netns.parse_loss("100%") == 10**9
    assert netns.parse_rate("1gbit") == 10**9
    assert netns.parse_rate("100Mbit") == 10**8


@requires_kvm
def test_without_root_one_line_and_the_usage_status() -> None:
    if os.geteuid() != 0:
        argv = IVYVM
    else:
        # Not root, but able to read a checkout that lives in a private (0700) directory.
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", *IVYVM]
    proc = subprocess.run(argv + ["run", str(guest_elf("hello")), "--vcpus", "2", "--nodes", "2", "--netns"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert (proc.returncode, proc.stderr) == (2, "ivyvm: --netns needs root (network namespaces and TAP devices)\n")


@requires_kvm
@requires_netns
def test_without_ip_one_line_and_the_usage_status() -> None:
    proc = subprocess.run(IVYVM + ["run", str(guest_elf("hello")), "--vcpus", "2", "--nodes", "2", "--netns"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PATH="/nonexistent"))
    assert (proc.returncode, proc.stderr) == (2, "ivyvm: --netns needs the ip command (iproute2)\n")
