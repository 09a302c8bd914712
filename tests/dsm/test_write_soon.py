"""The write-soon predictor (docs/protocol.md, "Migratory pages") on two real
DSM nodes: once node 0's remote reads are seen to be followed by writes, its
read faults go out hinted, and a page node 1 alone holds is granted writable
at once: the read-modify-write takes one round trip, no invalidation and no
second fault. A read-only pattern then stops the hints, and every value read
and written is exact throughout."""
from __future__ import annotations

import pytest

from hypervisor._ivy_testkit import lib as kit
from hypervisor.dsm import DsmNode, DsmOptions
from hypervisor.memory import GuestRam
from hypervisor.native_consts import PAGE_SIZE
from tests.dsm.sealed_peer import running_pair

NPAGES = 96
SHUFFLED = [(37 * i) % NPAGES for i in range(NPAGES)]  # 37 is coprime with 96: each page once


@pytest.fixture(params=[True, False], ids=["migratory", "no-migratory"])
def pair(request):
    with running_pair(NPAGES, DsmOptions(migratory=request.param)) as (nodes, rams):
        yield nodes, rams, request.param


def word(ram: GuestRam, page: int) -> int:
    return ram.guest_addr + page * PAGE_SIZE + 8 * (page % 16)


def rmw(ram: GuestRam, page: int) -> int:
    value = kit.ivy_test_load64(word(ram, page))
    kit.ivy_test_store64(word(ram, page), value + 1)
    return value


def counts(node: DsmNode) -> tuple[int, int, int, int, int]:
    s = node.stats()
    sent = s["messages_sent"]
    return (sent["READ"], sent["WRITE"], sent["INVALIDATE"], s["faults"]["wp"] + s["faults"]["write"],
            s["hinted_reads"])


def test_hinted_read_modify_write_takes_one_round_trip(pair) -> None:
    (n0, n1), (r0, r1), migratory = pair
    for page in range(NPAGES):
        kit.ivy_test_store64(word(r1, page), 100 + page)  # node 1 owns every page, alone
    deltas = []
    for page in SHUFFLED:
        before = counts(n0)
        assert rmw(r0, page) == 100 + page
        deltas.append(tuple(b - a for a, b in zip(before, counts(n0))))
    # Each read-modify-write: (READs, WRITEs, INVALIDATEs, write faults, hinted READs) it cost node 0.
    plain, hinted = (1, 0, 1, 1, 0), (1, 0, 0, 0, 1)
    if migratory:
        # A few plain ones teach the predictor; from then on every one is hinted and granted writable.
        assert set(deltas) == {plain, hinted}, set(deltas)
        first_hinted = deltas.index(hinted)
        assert first_hinted <= 8 and set(deltas[first_hinted:]) == {hinted}, deltas
        s = n0.stats()
        assert s["writable_grants"] == s["hinted_reads"] == NPAGES - first_hinted
    else:
        assert set(deltas) == {plain} and n0.stats()["hinted_reads"] == 0
    for page in range(NPAGES):  # node 1 reads every increment back
        assert kit.ivy_test_load64(word(r1, page)) == 101 + page


def test_a_read_only_pattern_stops_the_hints(pair) -> None:
    (n0, n1), (r0, r1), migratory = pair
    half = NPAGES // 2
    for page in range(NPAGES):
        kit.ivy_test_store64(word(r1, page), 7 * page)
    for page in SHUFFLED[:half]:  # learn read-then-write
        rmw(r0, page)
    hinted_before = n0.stats()["hinted_reads"]
    assert (hinted_before > 0) == migratory
    hinted = []
    for page in SHUFFLED[half:]:  # now only reads
        before = n0.stats()["hinted_reads"]
        assert kit.ivy_test_load64(word(r0, page)) == 7 * page
        hinted.append(n0.stats()["hinted_reads"] - before)
    # A few hinted reads go unwritten, then the predictor stops hinting for good.
    assert sum(hinted) <= 4 and not any(hinted[8:]), hinted
    assert n0.stats()["hints_unused"] == (sum(hinted) if migratory else 0)
    for page in range(NPAGES):
        expected = 7 * page + (1 if page in SHUFFLED[:half] else 0)
        assert kit.ivy_test_load64(word(r1, page)) == expected
