"""Thousands of simulator seeds over every option, and proof that the
simulator's checks catch broken protocols.

4800 seeds: 100 per option combination (read ownership x manager x hold x
first touch x migratory pages x prefetch, migratory with GiantVM reads only,
prefetch with classic Ivy reads only), node counts cycling through 2..8, each with 40 random faults
on 1-4 pages. A failure prints the command that replays it.
"""
from __future__ import annotations

from collections import Counter

import pytest

from tests.dsm.engine_ffi import (
    ACT_UNPARK, MSG_REPLY, MSG_WRITE, REPLY_DATA, REPLY_OWNERSHIP, WANT_READ, WANT_WRITE, Action,
    Msg,
)
from tests.dsm.model import Entry, ModelNode
from tests.dsm.disagreeing_model import simulation_with_a_model_off_by_one_hop
from tests.dsm.sim import ALL_OPTIONS, Simulation, SimFailure

SEEDS_PER_OPTION = 100


def run_seeds(options: str, seeds: range) -> tuple[Counter, Counter]:
    coverage: Counter = Counter()
    totals: Counter = Counter()
    for seed in seeds:
        sim = Simulation(seed, 2 + seed % 7, options)
        stats = sim.run()
        coverage.update(sim.coverage)
        totals.update(parked=stats.parked, elided=stats.elided_replies, spurious=stats.spurious,
                      hops=stats.hops, accesses=stats.accesses, holds=stats.holds)
    return coverage, totals


@pytest.mark.parametrize("options", ALL_OPTIONS)
def test_random_schedules(options: str) -> None:
    coverage, totals = run_seeds(options, range(SEEDS_PER_OPTION))
    # The runs must have reached the hard cases, not just the easy ones.
    for row in ("invalidate", "request_park", "fault_while_pending", "ack_counted",
                "reply_write_invalidates", "request_forward"):
        assert coverage[row], row
    if options.startswith("ivy"):
        assert coverage["reply_read_stale"] and coverage["invalidate_while_reading"]
    if "hold" in options.split(","):
        assert coverage["request_hold"] and coverage["hold_expired"] and coverage["hold_cut_by_store"]
        assert totals["holds"]
    else:
        assert not coverage["request_hold"] and not totals["holds"]
    if "touch-write" in options:
        assert coverage["fault_initial_read_writable"] and not coverage["fault_initial_read"]
    else:
        assert not coverage["fault_initial_read_writable"]
    migratory_rows = ("fault_owner_write_migrates", "serve_read_migratory", "serve_read_migratory_unused",
                      "reply_read_migratory", "read_fault_request_write_soon", "serve_read_write_soon",
                      "reply_read_writable")
    if "migratory" in options.split(","):
        assert all(coverage[row] for row in migratory_rows), {row: coverage[row] for row in migratory_rows}
    else:
        assert not any(coverage[row] for row in migratory_rows)
    if "prefetch" in options.split(","):
        assert coverage["prefetch_request"] and coverage["prefetch_needless"]
    assert not any(coverage[row] for row in ("prefetch_request", "prefetch_needless")
                   if "prefetch" not in options.split(","))
    assert totals["parked"] and totals["elided"] and totals["spurious"] and totals["hops"]


# ------------------------------------------------------------ broken engines
#
# Each mutant is the reference model with one rule of the protocol removed.
# Run in the simulator in place of engine.c, every one must be caught.


class ForgetsCopyset(ModelNode):
    """Hands ownership over without the copyset: readers are never invalidated."""

    def _send(self, out: list[Action], to: int, kind: int, page: int, requester: int,
              version: int, copyset: int = 0, txid: int = 0, flags: int = 0,
              hops: int = 0) -> None:
        if kind == MSG_REPLY and flags & REPLY_OWNERSHIP:
            copyset = 0
        super()._send(out, to, kind, page, requester, version, copyset, txid, flags, hops)


class WritesBeforeAcks(ModelNode):
    """Takes write access as soon as the invalidations are sent."""

    def _start_invalidation(self, page: int, e: Entry, holders: set[int],
                            out: list[Action]) -> None:
        super()._start_invalidation(page, e, holders, out)
        e.unacked = set()
        self._become_writer(page, e, out)

    def ack_awaited(self, e: Entry, m: Msg | None) -> str | None:
        return None

    def ack_counted(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        pass

    def ack_last(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        pass


class AlwaysElides(ModelNode):
    """Never sends page bytes, trusting the requester's stale copy."""

    def _send(self, out: list[Action], to: int, kind: int, page: int, requester: int,
              version: int, copyset: int = 0, txid: int = 0, flags: int = 0,
              hops: int = 0) -> None:
        super()._send(out, to, kind, page, requester, version, copyset, txid,
                      flags & ~REPLY_DATA, hops)

    def _reply_fits(self, e: Entry, m: Msg) -> str | None:
        e.version = m.version
        return super()._reply_fits(e, m)


class NeverUnparks(ModelNode):
    """Parks requests and forgets them."""

    def message(self, m: Msg) -> list[Action]:
        return [a for a in super().message(m) if a.kind != ACT_UNPARK]


class TrustsStaleReadReply(ModelNode):
    """Classic Ivy without the READ_STALE rule: maps a reply an invalidation overtook."""

    def invalidate_while_reading(self, page: int, e: Entry, m: Msg | None,
                                 out: list[Action]) -> None:
        self.invalidate(page, e, m, out)


class ServesWhilePending(ModelNode):
    """A requester forwards requests instead of parking them (back to a stale owner)."""

    def request_park(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        if e.pending in (WANT_READ, WANT_WRITE) and m.type == MSG_WRITE and e.probowner != self.me \
                and e.probowner != m.requester:
            self.request_forward(page, e, m, out)
            return
        super().request_park(page, e, m, out)


@pytest.mark.parametrize("mutant, options", [
    (ForgetsCopyset, "giantvm,dynamic"),
    (WritesBeforeAcks, "giantvm,dynamic"),
    (AlwaysElides, "giantvm,dynamic"),
    (NeverUnparks, "giantvm,central"),
    (TrustsStaleReadReply, "ivy,dynamic"),
    (ServesWhilePending, "giantvm,dynamic"),
])
def test_simulator_catches_a_broken_protocol(mutant: type[ModelNode], options: str) -> None:
    for seed in range(300):
        sim = Simulation(seed, 2 + seed % 4, options, compare_model=False,
                         engine_factory=mutant)
        try:
            sim.run()
        except SimFailure as failure:
            assert "replay: python -m pytest -q 'tests/dsm/test_engine_sim.py::" in str(failure)
            print(f"{mutant.__name__}: seed {seed}: {str(failure).splitlines()[0]}")
            return
    pytest.fail(f"{mutant.__name__} survived 300 seeds")


def test_engine_and_model_agree_decision_by_decision() -> None:
    """The comparison is live: a model that disagrees on one decision is reported."""

    sim = simulation_with_a_model_off_by_one_hop()
    with pytest.raises(SimFailure, match="engine and model disagree"):
        sim.run()
