"""Prefetch (docs/protocol.md, "Prefetch") on two real DSM nodes: a sequential
run of read faults brings the following pages as read copies before the
reader touches them, the values read are the last written, and a later
write still invalidates the prefetched copies."""
from __future__ import annotations

import time

import pytest

from hypervisor._ivy_testkit import lib as kit
from hypervisor.dsm import DsmError, DsmOptions
from hypervisor.memory import GuestRam
from hypervisor.native_consts import PAGE_SIZE
from tests.dsm.sealed_peer import running_pair

NPAGES = 64
IVY_PREFETCH = DsmOptions(read_ownership="ivy", prefetch=True)


def settled(cond, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.002)
    return cond()


@pytest.fixture
def pair():
    with running_pair(NPAGES, IVY_PREFETCH) as nodes_and_rams:
        yield nodes_and_rams


def word(ram: GuestRam, page: int) -> int:
    return ram.guest_addr + page * PAGE_SIZE + 8


def test_a_sequential_read_run_is_served_ahead_and_reads_are_exact(pair) -> None:
    (n0, n1), (r0, r1) = pair
    for page in range(NPAGES):
        kit.ivy_test_store64(word(r0, page), 1000 + page)
    for page in range(NPAGES):
        # Give the replies asked for ahead time to land, as a slower reader would.
        settled(lambda: n1.access(page) > 0, 0.05)
        assert kit.ivy_test_load64(word(r1, page)) == 1000 + page
    s = n1.stats()
    assert s["prefetched"] > NPAGES // 2, s
    assert s["faults"]["remote"] + s["prefetched"] <= NPAGES, s
    assert s["faults"]["remote"] < NPAGES // 2, s
    # The copies are ordinary read copies: the owner's write invalidates them.
    kit.ivy_test_store64(word(r0, 40), 7)
    assert n1.access(40) == 0
    assert kit.ivy_test_load64(word(r1, 40)) == 7


def test_random_reads_shrink_the_window_and_stay_exact(pair) -> None:
    (n0, n1), (r0, r1) = pair
    order = [(7 * i) % NPAGES for i in range(NPAGES)]  # 7 is coprime with 64: every page once, never in a run
    for page in range(NPAGES):
        kit.ivy_test_store64(word(r0, page), 5000 + page)
    for page in order:
        assert kit.ivy_test_load64(word(r1, page)) == 5000 + page
    s = n1.stats()
    assert s["prefetches"] <= 2, s  # at most the first page's guess, never a grown window


def test_prefetch_needs_ivy_reads() -> None:
    with pytest.raises(DsmError, match="prefetch needs ivy reads"):
        DsmOptions(prefetch=True)
