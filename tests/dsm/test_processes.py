"""Real node processes on loopback sharing RAM through the DSM (no KVM).

Each node is a separate process (hypervisor/devkit/worker.py) with its
own memfd; threads in it touch the guest view from C, so every shared byte
they see arrived through userfaultfd faults and TCP frames.
"""
from __future__ import annotations

import signal

import pytest

from hypervisor.devkit.cluster import Cluster
from hypervisor.native_consts import ENGINE_TYPES, PAGE_SIZE



def check_counters(cluster: Cluster, threads: int, iters: int) -> None:
    expected = cluster.nnodes * threads * iters
    for w in cluster.workers:  # every node reads the same totals through its own guest view
        assert w.call("read", offsets=[0, 8, PAGE_SIZE])["values"] == [expected] * 3


def check_clean_stop(cluster: Cluster) -> list[dict]:
    stats = [r["stats"] for r in cluster.stop_all()]
    for s in stats:
        assert s["error"] is None, s["error"]
        assert s["threads_after_stop"] == 1, "a DSM thread outlived stop()"
    for t in ENGINE_TYPES:  # nothing lost or invented on the wire
        assert sum(s["messages_sent"][t.name] for s in stats) == sum(s["messages_received"][t.name] for s in stats), t
    assert sum(s["faults"]["remote"] for s in stats) > 0
    assert sum(s["latency"]["count"] for s in stats) == sum(s["faults"]["local"] + s["faults"]["remote"]
                                                           for s in stats)
    return stats


# Batching is on by default; once without it, since it changes when frames leave.
@pytest.mark.parametrize("nnodes, batch", [(2, True), (3, True), (4, True), (3, False)])
def test_nodes_share_ram_exactly(nnodes: int, batch: bool) -> None:
    with Cluster(nnodes, pages=256, options={"batch": batch}) as cluster:
        cluster.run_all(workload="counter", threads=2, iters=3000)
        check_counters(cluster, threads=2, iters=3000)
        published = cluster.run_all(workload="publish", rounds=15)
        assert all(r["bad"] == [] for r in published), published
        disjoint = cluster.run_all(workload="disjoint", threads=2, rounds=3)
        assert all(r["bad"] == 0 for r in disjoint), disjoint
        stats = check_clean_stop(cluster)
    # The workloads really went through the protocol: invalidations and data replies happened.
    assert sum(s["messages_sent"]["INVALIDATE"] for s in stats) > 0
    assert sum(s["replies_with_data"] for s in stats) > 0


@pytest.mark.parametrize("read_ownership", ["giantvm", "ivy"])
@pytest.mark.parametrize("manager", ["dynamic", "central", "fixed"])
def test_every_protocol_option(read_ownership: str, manager: str) -> None:
    options = {"read_ownership": read_ownership, "manager": manager}
    with Cluster(3, pages=128, options=options) as cluster:
        cluster.run_all(workload="counter", threads=2, iters=1000)
        check_counters(cluster, threads=2, iters=1000)
        published = cluster.run_all(workload="publish", rounds=8)
        assert all(r["bad"] == [] for r in published), published
        stats = check_clean_stop(cluster)
    if manager != "dynamic":
        # Requests go through a manager, which forwards them to the owner.
        assert sum(s["forwards"] for s in stats) > 0


def test_node0_image_pages_travel_with_their_bytes() -> None:
    """Pages node 0 loaded before start (version 1) reach other nodes with their bytes."""
    with Cluster(3, pages=64, image={40: 1234, 41: 99}) as cluster:
        for w in cluster.workers[1:]:
            assert w.call("read", offsets=[40 * PAGE_SIZE, 41 * PAGE_SIZE, 42 * PAGE_SIZE])["values"] == [1234, 99, 0]
        check_clean_stop(cluster)


def test_killed_peer_is_named_within_5s() -> None:
    with Cluster(2, pages=64) as cluster:
        node0, node1 = cluster.workers
        node1.call("run", workload="write_pages", pages_list=[5], value=77)
        node1.kill(signal.SIGKILL)
        r = node0.call("wait_failed", seconds=5.0)
        assert r["failed"] and r["elapsed"] < 5.0, r
        assert "node 1" in r["error"], r["error"]


def test_silent_peer_named_with_the_page_waited_for() -> None:
    with Cluster(2, pages=64) as cluster:
        node0, node1 = cluster.workers
        node1.call("run", workload="write_pages", pages_list=[6], value=1)  # node 1 owns page 6
        node1.kill(signal.SIGSTOP)
        node0.call("run", workload="touch_timed", pages_list=[6], write=0, background=True)
        r = node0.call("wait_failed", seconds=5.0)
        assert r["failed"] and r["elapsed"] < 5.0, r
        assert "node 1 silent for 2." in r["error"] and "page 0x6 (read)" in r["error"], r["error"]
        # The thread stuck in the fault was released when the node stopped.
        assert node0.call("join", seconds=5.0)["alive"] is False
        stats = node0.call("stop")["stats"]
        assert stats["threads_after_stop"] == 1
        node1.kill(signal.SIGKILL)


def test_all_nodes_fault_one_page_at_once() -> None:
    """Every node writes the same page at the same moment, repeatedly: all complete, total exact."""
    with Cluster(4, pages=32) as cluster:
        results = cluster.run_all(workload="counter", threads=3, iters=500)
        assert all(r["ok"] for r in results)
        check_counters(cluster, threads=3, iters=500)
        stats = check_clean_stop(cluster)
    assert sum(s["parked"] for s in stats) == sum(s["unparked"] for s in stats)


def test_contended_page_makes_progress_on_every_node() -> None:
    """4 nodes x 2 threads take turns on one word of one page, yielding the CPU after
    each locked increment, so nearly every increment needs the page brought back.
    The hold window lets each woken thread run its access before the page leaves
    again: every node finishes, in bounded time, with the exact total."""
    nnodes, threads, iters = 4, 2, 1500
    with Cluster(nnodes, pages=32) as cluster:
        results = cluster.run_all(timeout=60.0, workload="hammer", threads=threads, iters=iters, page=5)
        assert all(r["ok"] for r in results)
        for w in cluster.workers:
            assert w.call("read", offsets=[5 * PAGE_SIZE])["values"] == [nnodes * threads * iters]
        stats = check_clean_stop(cluster)
    assert sum(s["held"] for s in stats) > 0, "no request met a hold window: the page never changed hands"
