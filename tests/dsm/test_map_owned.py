"""Node 0 maps what it owns up front (DsmOptions.map_owned): no fault for a page nobody else touched,
and the protocol still takes such a page away correctly when another node asks for it."""
from __future__ import annotations

import time

import pytest

from hypervisor._ivy_testkit import lib as kit
from hypervisor.dsm import DsmError, DsmNode, DsmOptions
from hypervisor.memory import GuestRam
from hypervisor.native_consts import PAGE_SIZE, REPLY_DATA, REPLY_OWNERSHIP
from tests.dsm.sealed_peer import sealed_pair
from tests.dsm.test_runtime import READ, REPLY, WRITE, expected_page, frame, recv_frame, toucher

NPAGES = 64


def settled_faults(node: DsmNode, kind: str, want: int) -> int:
    """The fault counter once it reaches `want` (within 2 s): the loop counts a fault after the
    grant has already woken its thread, so a read right after the access may be one behind."""
    deadline = time.monotonic() + 2
    while node.stats()["faults"][kind] < want and time.monotonic() < deadline:
        time.sleep(0.005)
    return node.stats()["faults"][kind]


@pytest.fixture
def ram():
    r = GuestRam(NPAGES * PAGE_SIZE)
    yield r
    r.close()


def test_node0_touches_every_page_without_a_fault(ram: GuestRam) -> None:
    with DsmNode(0, 1, ram, {}, DsmOptions(map_owned=True)) as node:
        node.start()
        s = node.stats()
        assert s["mapped_up_front"] == NPAGES
        # One run of pages, one ioctl: "large ranges", not a page at a time.
        assert s["uffd"]["continues"] == 1
        assert all(node.access(p) == 2 for p in range(NPAGES))
        kit.ivy_test_fill(ram.guest_addr, NPAGES * PAGE_SIZE, 5)
        assert kit.ivy_test_verify(ram.vmm_addr, NPAGES * PAGE_SIZE, 5) == -1
        f = node.stats()["faults"]
        assert sum(f.values()) == 0, f


def test_without_the_option_every_first_touch_faults(ram: GuestRam) -> None:
    with DsmNode(0, 1, ram, {}, DsmOptions(map_owned=False)) as node:
        node.start()
        assert node.stats()["mapped_up_front"] == 0
        kit.ivy_test_fill(ram.guest_addr, NPAGES * PAGE_SIZE, 5)
        assert settled_faults(node, "local", NPAGES) == NPAGES


def test_only_node0_maps_up_front(ram: GuestRam) -> None:
    theirs, ours = sealed_pair()
    node = DsmNode(1, 2, ram, {0: theirs}, DsmOptions(map_owned=True))
    try:
        node.start()
        assert node.stats()["mapped_up_front"] == 0
        assert all(node.access(p) == 0 for p in range(NPAGES))
    finally:
        node.close()
        ours.close()


@pytest.fixture
def mapped_owner(ram: GuestRam):
    """Node 0 of 2, pages mapped up front, the first 8 loaded with known bytes; node 1 is the test."""
    for page in range(8):
        kit.ivy_test_fill(ram.vmm_addr + page * PAGE_SIZE, PAGE_SIZE, 300 + page)
    theirs, ours = sealed_pair()
    ours.settimeout(5)
    node = DsmNode(0, 2, ram, {1: theirs}, DsmOptions(map_owned=True))
    node.mark_loaded(range(8))
    node.start()
    yield node, ours
    node.close()
    ours.close()


def test_a_page_written_without_a_fault_travels_with_its_bytes(mapped_owner, ram: GuestRam) -> None:
    """Node 0's store raised no fault, so the engine never saw it: the page's version moved on at
    start, and a node whose copy is the boot-time zeros (version 0) gets the bytes."""
    node, peer = mapped_owner
    addr = ram.guest_addr + 20 * PAGE_SIZE
    kit.ivy_test_store64(addr, 0xfeed)
    assert node.stats()["faults"]["write"] == 0
    peer.sendall(frame(READ, 20, 1, 1, version=0, txid=41))
    reply = recv_frame(peer)
    assert (reply["type"], reply["page"], reply["txid"], reply["version"]) == (REPLY, 20, 41, 1)
    assert reply["flags"] == REPLY_DATA | REPLY_OWNERSHIP
    assert int.from_bytes(reply["data"][:8], "little") == 0xfeed
    # Node 0 keeps a read copy, write-protected now: its next store faults.
    assert node.access(20) == 1
    assert node.stats()["uffd"]["wrprotects"] == 1


def test_a_loaded_page_served_for_a_write_is_zapped(mapped_owner, ram: GuestRam) -> None:
    node, peer = mapped_owner
    peer.sendall(frame(WRITE, 3, 1, 1, version=0, txid=42))
    reply = recv_frame(peer)
    assert (reply["type"], reply["txid"], reply["version"]) == (REPLY, 42, 2)  # loaded: 1, mapped: 2
    assert reply["data"] == expected_page(303)
    assert node.access(3) == 0 and node.stats()["uffd"]["zaps"] == 1
    # The zapped page faults again and node 0 asks node 1, the owner now.
    t = toucher(ram.guest_addr + 3 * PAGE_SIZE)
    again = recv_frame(peer)
    assert (again["type"], again["page"], again["requester"], again["version"]) == (READ, 3, 0, 2)
    peer.sendall(frame(REPLY, 3, 0, 1, version=3, copyset=2, txid=again["txid"],
                       flags=REPLY_DATA | REPLY_OWNERSHIP, payload=b"\x33" * PAGE_SIZE))
    t.join(5)
    assert not t.is_alive()
    assert kit.ivy_test_load64(ram.guest_addr + 3 * PAGE_SIZE) == int.from_bytes(b"\x33" * 8, "little")
    assert node.error is None


def test_dsm_thread_priority_is_applied(ram: GuestRam) -> None:
    """DsmOptions.dsm_priority (measured to lose, off by default) really makes the loop SCHED_FIFO."""
    import os

    with DsmNode(0, 1, ram, {}, DsmOptions(dsm_priority=3)) as node:
        node.start()
        tids = [int(t) for t in os.listdir("/proc/self/task")
                if open(f"/proc/self/task/{t}/comm").read().strip() == "ivy-dsm-0"]
        assert len(tids) == 1
        assert os.sched_getscheduler(tids[0]) == os.SCHED_FIFO
        assert os.sched_getparam(tids[0]).sched_priority == 3
    with DsmNode(0, 1, ram, {}) as node:
        node.start()
        tids = [int(t) for t in os.listdir("/proc/self/task")
                if open(f"/proc/self/task/{t}/comm").read().strip() == "ivy-dsm-0"]
        assert [os.sched_getscheduler(t) for t in tids] == [os.SCHED_OTHER]
    with pytest.raises(DsmError, match="dsm_priority 100"):
        DsmOptions(dsm_priority=100)
