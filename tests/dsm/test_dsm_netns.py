"""Two hosts: DSM nodes in two network namespaces joined by a veth pair."""
from __future__ import annotations

import os
import subprocess
from typing import Iterator

import pytest

from hypervisor.devkit.cluster import Cluster
from hypervisor.native_consts import PAGE_SIZE

pytestmark = pytest.mark.requires_netns  # skipped without root and `ip` (tests/conftest.py)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[list[str], list[list[str]], list[str]]]:
    """(namespace names, command prefixes, addresses) for two fresh namespaces on a private /30."""
    tag = f"{os.getpid() % 100000}"
    names = [f"ivydsm{tag}a", f"ivydsm{tag}b"]
    veths = [f"ivy{tag}a", f"ivy{tag}b"]
    subnet = f"10.213.{os.getpid() % 250}"
    addrs = [f"{subnet}.1", f"{subnet}.2"]
    try:
        for ns in names:
            ip("netns", "add", ns)
        ip("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])
        for ns, veth, addr in zip(names, veths, addrs):
            ip("link", "set", veth, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", veth)
            ip("-n", ns, "link", "set", veth, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield names, [["ip", "netns", "exec", ns] for ns in names], addrs
    finally:
        for ns in names:  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", veths[0]], capture_output=True)


def test_two_hosts_share_ram(two_hosts) -> None:
    _, prefixes, addrs = two_hosts
    with Cluster(2, pages=128, hosts=addrs, prefixes=prefixes) as cluster:
        cluster.run_all(workload="counter", threads=2, iters=2000)
        for w in cluster.workers:
            assert w.call("read", offsets=[0, 8, PAGE_SIZE])["values"] == [8000] * 3
        published = cluster.run_all(workload="publish", rounds=10)
        assert all(r["bad"] == [] for r in published), published
        stats = [r["stats"] for r in cluster.stop_all()]
    assert all(s["error"] is None for s in stats)
    assert all(s["faults"]["remote"] > 0 for s in stats)


def test_cut_cable_is_detected_and_named(two_hosts) -> None:
    names, prefixes, addrs = two_hosts
    with Cluster(2, pages=32, hosts=addrs, prefixes=prefixes) as cluster:
        node0, node1 = cluster.workers
        node1.call("run", workload="write_pages", pages_list=[7], value=3)
        ip("-n", names[1], "link", "set", f"ivy{os.getpid() % 100000}b", "down")
        node0.call("run", workload="touch_timed", pages_list=[7], write=0, background=True)
        r = node0.call("wait_failed", seconds=5.0)
        assert r["failed"] and r["elapsed"] < 5.0, r
        assert "node 1 silent" in r["error"] and "page 0x7" in r["error"], r["error"]
        assert node0.call("join", seconds=5.0)["alive"] is False
