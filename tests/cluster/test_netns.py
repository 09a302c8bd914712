"""Two hosts, simulated: one node in each of two network namespaces joined by a veth pair.

This is the README's "Across real hosts" setup as a user runs it: one
cluster.toml, `ivyvm node --config F --id K` on each host, the secret from
IVYVM_SECRET or secret_file, the nodes bound to their own addresses (not
loopback). The namespaces and the veth pair (hypervisor/netns.py's
veth_pair) are private to each test: named after this process's pid and a
random tag, addressed in 10.98.0.0/30 only inside them, and deleted in
`finally` whatever happens; the host's own interfaces are never touched.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from hypervisor import netns
from hypervisor.status import Status
from tests.cluster.common import (DETECTION_BOUND, IVYVM, START_BOUND, await_exits, finish, guest_elf, lines_of,
                                  processes_mentioning, start_node, verdict, wait_for_output, write_cluster)
from tests.conftest import ROOT, requires_kvm, requires_netns

def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


@contextmanager
def veth_pair() -> Iterator[netns.VethPair]:
    """Two fresh namespaces joined by a veth pair (hypervisor/netns.py), checked gone afterwards."""
    with netns.veth_pair() as pair:
        yield pair
    assert not set(pair.namespaces) & netns.namespaces(), f"namespaces {pair.namespaces} outlived the test"


def cluster_file(tmp_path: Path, pair: netns.VethPair, image: Path, vcpus: int = 2, extra: str = "") -> Path:
    return write_cluster(tmp_path, image, vcpus, [f"{a}:7000" for a in pair.addresses], extra=extra)


def assert_nothing_left(config: Path) -> None:
    assert not processes_mentioning(str(config)), f"a node process of {config} is still running"


@requires_kvm
@requires_netns
@pytest.mark.parametrize("name", ["hello", "spanning_counter", "mp_litmus", "ipi_pingpong", "dekker", "pagewalk"])
def test_spanning_guest_across_two_hosts(tmp_path: Path, name: str) -> None:
    with veth_pair() as pair:
        config = cluster_file(tmp_path, pair, guest_elf(name))
        # Node 1 first here, node 0 first in the secret_file test: either may wait for the other.
        member = start_node(config, 1, netns=pair.namespaces[1])
        head = start_node(config, 0, netns=pair.namespaces[0])
        out0, out1 = finish([head, member], timeout=60)
        line = verdict(out0, name)
        assert line.startswith(f"PASS {name}: vcpus=2"), f"{line}\nnode 0: {out0.stderr}\nnode 1: {out1.stderr}"
        assert out0.status == 0, out0.stderr
        assert out1.status == 0, out1.stderr
        assert "PASS" not in out1.stdout, "node 1 printed console output; node 0 owns the console"
        assert_nothing_left(config)


@requires_kvm
@requires_netns
def test_secret_from_secret_file_across_two_hosts(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret-for-both-hosts-0123456789\n")
    secret_file.chmod(0o600)      # a secret others can read is refused
    with veth_pair() as pair:
        config = cluster_file(tmp_path, pair, guest_elf("spanning_counter"), extra='secret_file = "secret"')
        env = {k: v for k, v in os.environ.items() if k != "IVYVM_SECRET"}
        procs = [_start_without_env_secret(config, node, pair.namespaces[node], env) for node in (0, 1)]
        out0, out1 = finish(procs, timeout=60)
        assert verdict(out0, "spanning_counter").startswith("PASS spanning_counter: vcpus=2"), out0.stderr
        assert (out0.status, out1.status) == (0, 0), (out0.stderr, out1.stderr)
        assert_nothing_left(config)


def _start_without_env_secret(config: Path, node: int, netns: str, env: dict[str, str]) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", netns, *IVYVM, "node", "--config", str(config), "--id", str(node)]
    return subprocess.Popen(argv, cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


CUTS = [(0, "down"), (1, "down"), (1, "delete")]


@requires_kvm
@requires_netns
@pytest.mark.parametrize("side, how", CUTS, ids=[f"{how}-at-node{side}" for side, how in CUTS])
def test_dropped_link_stops_both_nodes(tmp_path: Path, side: int, how: str) -> None:
    """No RST, no FIN: the link just goes quiet, so only the silence timeouts can notice."""
    with veth_pair() as pair:
        config = cluster_file(tmp_path, pair, guest_elf("spin"))
        member = start_node(config, 1, netns=pair.namespaces[1])
        head = start_node(config, 0, netns=pair.namespaces[0])
        try:
            wait_for_output(head, "spinning", START_BOUND)
            time.sleep(0.3)                  # pages are moving both ways by now
            assert head.poll() is None and member.poll() is None, "a node stopped before the link was cut"
            if how == "down":
                ip("-n", pair.namespaces[side], "link", "set", pair.devices[side], "down")
            else:
                ip("-n", pair.namespaces[side], "link", "delete", pair.devices[side])   # both ends go
            exits = await_exits([head, member], time.monotonic(), DETECTION_BOUND)
        finally:
            for proc in (head, member):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for node, exit in enumerate(exits):
            other = 1 - node
            assert exit.status == Status.CLUSTER, f"node {node}: status {exit.status}\n{exit.stderr}"
            lines = lines_of(exit.stderr)
            assert len(lines) == 1, f"node {node} should say one line, said:\n{exit.stderr}"
            said = lines[0].split(":", 2)[2]
            assert re.search(rf"\bnode {other}\b", said), f"node {node} does not name node {other}: {lines[0]}"
            assert "silent" in said and "waiting for" in said, f"node {node}: {lines[0]}"
            print(f"link {how} at node {side}: node {node} stopped after {exit.after:.2f} s: {lines[0]}")
        assert_nothing_left(config)
