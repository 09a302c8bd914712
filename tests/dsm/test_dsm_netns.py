"""Two hosts: DSM nodes in two network namespaces joined by a veth pair."""
from __future__ import annotations

import subprocess
from typing import Iterator

import pytest

from hypervisor import netns
from hypervisor.devkit.cluster import Cluster
from hypervisor.native_consts import PAGE_SIZE

pytestmark = pytest.mark.requires_netns  # skipped without root and `ip` (tests/conftest.py)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[list[str], list[list[str]], list[str]]]:
    """(namespace names, command prefixes, addresses) for two fresh namespaces on a private /30."""
    with netns.veth_pair() as pair:
        names = list(pair.namespaces)
        yield names, [["ip", "netns", "exec", ns] for ns in names], list(pair.addresses)


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
        ip("-n", names[1], "link", "set", netns.DEVICE, "down")
        node0.call("run", workload="touch_timed", pages_list=[7], write=0, background=True)
        r = node0.call("wait_failed", seconds=5.0)
        assert r["failed"] and r["elapsed"] < 5.0, r
        assert "node 1 silent" in r["error"] and "page 0x7" in r["error"], r["error"]
        assert node0.call("join", seconds=5.0)["alive"] is False
