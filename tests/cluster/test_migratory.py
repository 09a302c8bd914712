"""Migratory pages and write-soon hints (docs/protocol.md) on a spanning guest:
exact results with the option on, and the protocol's own messages show it working.

The guests check their own data (counters, page patterns, every page's
count of increments); with the option on a page read then written by one
node moves whole on its next read, so the `migratory` guest's later turns
need no invalidation at all, which the DSM's message counters show.
"""
from __future__ import annotations

import pytest

from hypervisor import run_guest
from tests.cluster.common import guest_elf, passing_guest, processes_mentioning, run_cli
from tests.conftest import requires_kvm

PAGES = 256     # guest/programs/migratory.c's default
ROUNDS = 6


@requires_kvm
@pytest.mark.parametrize("name", ["spanning_counter", "pagewalk", "mp_litmus"])
def test_a_spanning_guest_gives_exact_results_with_migratory_pages(name: str) -> None:
    passing_guest(name, migratory=True)
    assert not processes_mentioning(str(guest_elf(name))), "a node process outlived `ivyvm run`"


def invalidations(result) -> int:
    return sum(node["dsm"]["messages_sent"]["INVALIDATE"] for node in result.stats)


@requires_kvm
def test_migratory_turns_need_no_invalidation() -> None:
    """Two nodes take turns to increment every page: off, each turn invalidates the
    other node's copy of every page; on, only the turn that detects the pattern does."""
    off = run_guest(guest_elf("migratory"), vcpus=2, nodes=2, timeout=120)
    on = run_guest(guest_elf("migratory"), vcpus=2, nodes=2, timeout=120, migratory=True)
    for result in (off, on):
        assert result.verdict is not None and result.verdict.startswith(
            f"PASS migratory: vcpus=2 pages={PAGES} rounds={ROUNDS}"), result
        assert result.status == 0, result.stderr
    # Off: rounds 1..5 each invalidate every page (the previous turn's copy).
    assert invalidations(off) >= (ROUNDS - 1) * PAGES, off.stats
    # On: round 1 learns each page is migratory (one invalidation per page); later reads take it whole.
    assert invalidations(on) < PAGES + PAGES // 2, on.stats


PAGECOST_PAGES = 256  # guest/programs/pagecost.c's default


def node_dsm(result, node: int) -> dict:
    return next(n["dsm"] for n in result.stats if n["node"] == node)


@requires_kvm
def test_pagecost_read_modify_writes_are_granted_writable() -> None:
    """pagecost's (d) read-modify-writes pages only node 1 wrote, each once, so the per-page
    mark never helps; the write-soon predictor sees node 0's reads followed by writes, and with
    the option on those reads are granted writable: no invalidation, and every word still exact
    (pagecost checks each page, node 1 checks node 0's stores). Off, no read is hinted."""
    off = passing_guest("pagecost")
    on = passing_guest("pagecost", migratory=True)
    assert node_dsm(off, 0)["hinted_reads"] == node_dsm(off, 0)["writable_grants"] == 0
    assert node_dsm(on, 0)["writable_grants"] >= PAGECOST_PAGES * 3 // 4, node_dsm(on, 0)
    saved = node_dsm(off, 0)["messages_sent"]["INVALIDATE"] - node_dsm(on, 0)["messages_sent"]["INVALIDATE"]
    assert saved >= PAGECOST_PAGES * 3 // 4, (node_dsm(off, 0), node_dsm(on, 0))


@requires_kvm
def test_migratory_with_classic_ivy_reads_is_a_usage_error() -> None:
    out = run_cli("run", str(guest_elf("hello")), "--vcpus", "2", "--nodes", "2", "--migratory",
                  "--read-ownership", "ivy")
    assert out.status == 2, out
    assert out.stderr.strip().splitlines() == [
        "ivyvm: --migratory needs --read-ownership giantvm (a read that moves ownership), not ivy"], out.stderr
