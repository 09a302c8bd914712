"""Focused scenarios for native/engine.c: every transition, elision, parking,
invalidation races, all nodes on one page, the manager schemes.

Each scenario runs in the simulator (tests/dsm/sim.py), so besides the
assertions written here every step is also checked against the protocol's
invariants and the reference model.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dsm.engine_ffi import (
    ACT_DONE, ACT_HOLD, ACT_MAP_RO, ACT_MAP_RW, ACT_PARK, ACT_SEND, ACT_UNPARK, ACT_WAKE, ACT_WRPROTECT,
    ACT_ZAP, IDLE, INITIAL, INVALID, MGR_CENTRAL, MGR_DYNAMIC, MGR_FIXED, MODIFIED,
    MSG_INV_ACK, MSG_INVALIDATE, MSG_READ, MSG_REPLY, MSG_WRITE, READ_STALE,
    REPLY_DATA, REPLY_OWNERSHIP, SHARED, WAIT_ACKS, WANT_READ, WANT_WRITE, Action, CEngine,
    EngineAssertion, HOLDING, Msg,
)
from tests.dsm.sim import ALL_OPTIONS, Simulation, SimFailure

ROOT = Path(__file__).resolve().parents[2]


def net(nodes: int, options: str = "giantvm,dynamic", npages: int = 2) -> Simulation:
    sim = Simulation(0, nodes, options, faults=0, npages=npages, loaded=False, map_owned=False)
    sim.spurious_rate = 0.0  # a thread with access just accesses
    return sim


def last_actions(sim: Simulation, node: int) -> list[Action]:
    for entry in reversed(sim.trace):
        if not isinstance(entry, str) and entry[0] == node:
            return entry[2]
    raise AssertionError(f"node {node} did nothing")


def kinds(actions: list[Action]) -> list[int]:
    return [a.kind for a in actions]


def sends(actions: list[Action]) -> list[tuple[int, Msg]]:
    return [(a.to, a.msg) for a in actions if a.kind == ACT_SEND and a.msg is not None]


def deliver_until(sim: Simulation, done) -> None:  # type: ignore[no-untyped-def]
    for _ in range(1000):
        if done():
            return
        busy = [(a, b) for a, b, _ in sim.in_flight()]
        assert busy, "nothing left to deliver"
        sim.deliver_one(*busy[0])
    raise AssertionError("condition never reached")


# --------------------------------------------------------------- build, header


@pytest.mark.parametrize("extra", [[], ["-DNDEBUG", "-O2"]], ids=["asserts", "ndebug"])
def test_engine_compiles_as_strict_c11(tmp_path: Path, extra: list[str]) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build the native core"
    result = subprocess.run(
        [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", *extra, "-c",
         str(ROOT / "native" / "engine.c"), "-o", str(tmp_path / "engine.o")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_engine_uses_no_syscalls_or_allocation(tmp_path: Path) -> None:
    """The object file may only call assert's helper: no I/O, no malloc."""
    cc = shutil.which("cc") or shutil.which("gcc")
    nm = shutil.which("nm")
    if not nm:
        pytest.skip("nm (binutils) is not installed")
    obj = tmp_path / "engine.o"
    subprocess.run([cc, "-std=c11", "-O2", "-c", str(ROOT / "native" / "engine.c"), "-o",
                    str(obj)], check=True)
    undefined = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True,
                               check=True).stdout.split()
    # A compiler may turn struct copies into memset/memcpy; nothing else is allowed.
    assert set(undefined) - {"U"} <= {"__assert_fail", "memset", "memcpy", "memmove"}, undefined


def test_broken_invariant_is_reported_not_aborted() -> None:
    e = CEngine(1, 2, 1)
    reply = Msg(MSG_REPLY, REPLY_OWNERSHIP, 1, 0, 0, 0, 0, 0, 12345)
    with pytest.raises(EngineAssertion, match=r"v\.row >= 0"):
        e.message(reply)  # a reply nobody asked for: no row takes it


# ------------------------------------------------------------------------- init


@pytest.mark.parametrize("manager", [MGR_DYNAMIC, MGR_CENTRAL, MGR_FIXED])
def test_init_node0_owns_everything(manager: int) -> None:
    engines = [CEngine(n, 3, 4, manager=manager) for n in range(3)]
    for page in range(4):
        p0 = engines[0].page(page)
        assert (p0.state, p0.owner, p0.copyset, p0.version, p0.pending) == (INITIAL, True, 1, 0, IDLE)
        for n in (1, 2):
            p = engines[n].page(page)
            assert (p.state, p.owner, p.copyset, p.pending) == (INITIAL, False, 0, IDLE)
            expected = {MGR_DYNAMIC: 0, MGR_CENTRAL: 0, MGR_FIXED: page % 3}[manager]
            if expected == n:
                expected = 0  # a manager routes by its record, which starts at node 0
            assert engines[n].route(page) == expected
            assert engines[n].access(page) == 0


# ----------------------------------------------------------------- local faults


def test_node0_takes_initial_pages_locally() -> None:
    e = CEngine(0, 3, 2)
    assert kinds(e.fault(0, False)) == [ACT_MAP_RO, ACT_DONE]
    p = e.page(0)
    assert (p.state, p.owner, p.copyset, p.version) == (SHARED, True, 1, 0)
    assert kinds(e.fault(1, True)) == [ACT_MAP_RW, ACT_DONE]
    p = e.page(1)
    assert (p.state, p.owner, p.copyset, p.version) == (MODIFIED, True, 1, 1)
    # Owner|SHARED with no other copy upgrades locally, version += 1.
    assert kinds(e.fault(0, True)) == [ACT_MAP_RW, ACT_DONE]
    assert e.page(0).version == 1


def test_spurious_fault_only_wakes() -> None:
    e = CEngine(0, 2, 1)
    e.fault(0, True)
    assert kinds(e.fault(0, False)) == [ACT_WAKE]
    assert kinds(e.fault(0, True)) == [ACT_WAKE]
    assert e.page(0).version == 1


def test_fault_on_pending_page_sends_nothing_and_all_faulters_complete() -> None:
    sim = net(2)
    first = sim.access_now(1, 0, False)
    assert len(sim.in_flight()) == 1
    second = sim.access_now(1, 0, True)
    third = sim.access_now(1, 0, False)
    assert last_actions(sim, 1) == [] and len(sim.in_flight()) == 1
    sim.settle()
    assert not any(sim.blocked(f) for f in (first, second, third))
    assert sim.engines[1].page(0).state == MODIFIED


# ------------------------------------------------------- versions and elision


def test_first_remote_write_to_initial_page_carries_no_bytes() -> None:
    sim = net(3)
    sim.access_now(1, 0, True)
    [(_, _, req)] = sim.in_flight()
    assert (req.type, req.version) == (MSG_WRITE, 0)
    sim.deliver_one(1, 0)
    [(src, dst, reply)] = sim.in_flight()
    assert (src, dst, reply.type, reply.flags) == (0, 1, MSG_REPLY, REPLY_OWNERSHIP)
    assert sim.ram[0][0] == sim.ram[1][0] == 0  # both sides' bytes are zero
    sim.settle()
    assert sim.engines[1].page(0).version == 1 and sim.ram[1][0] == sim.shadow[0] != 0
    assert sim.stats.data_replies == 0 and sim.stats.elided_replies == 1


def test_loaded_page_is_sent_with_its_bytes() -> None:
    sim = net(2)
    sim.load(1)
    sim.access_now(1, 1, False)
    sim.deliver_one(1, 0)
    [(_, _, reply)] = sim.in_flight()
    assert reply.flags == REPLY_DATA | REPLY_OWNERSHIP and reply.version == 1
    sim.settle()
    assert sim.ram[1][1] == sim.shadow[1] != 0


def test_copy_with_current_version_is_not_resent() -> None:
    sim = net(2)
    sim.access_now(1, 0, True)
    sim.settle()  # node 1 MODIFIED, version 1
    sim.access_now(0, 0, False)
    sim.settle()  # node 0 reads: bytes sent; ownership moves to node 0
    assert sim.stats.data_replies == 1
    sim.access_now(1, 0, True)  # node 1 still holds version 1: no bytes needed
    sim.deliver_one(1, 0)
    [(_, _, reply)] = sim.in_flight()
    assert reply.flags == REPLY_OWNERSHIP and reply.version == 1
    sim.settle()
    assert sim.engines[1].page(0).version == 2


def test_remote_write_version_is_owner_version_plus_one() -> None:
    sim = net(3)
    sim.load(0)
    for node in (1, 2, 1):
        before = max(e.page(0).version for e in sim.engines)
        sim.access_now(node, 0, True)
        sim.settle()
        assert sim.engines[node].page(0).version == before + 1


# ----------------------------------------------------------------- read paths


def test_giantvm_read_hands_ownership_to_reader() -> None:
    sim = net(3)
    sim.access_now(1, 0, True)
    sim.settle()
    sim.access_now(2, 0, False)
    sim.deliver_one(2, 0)  # node 0 is no longer owner: forwards
    [(src, dst, fwd)] = sim.in_flight()
    assert (src, dst, fwd.type, fwd.hops, fwd.requester) == (0, 1, MSG_READ, 1, 2)
    assert sim.engines[0].page(0).probowner == 2  # path compression
    sim.deliver_one(0, 1)
    acts = last_actions(sim, 1)
    assert kinds(acts) == [ACT_WRPROTECT, ACT_SEND]  # frozen before the bytes leave
    [(to, reply)] = sends(acts)
    assert (to, reply.flags, reply.hops, reply.copyset) == (
        2, REPLY_DATA | REPLY_OWNERSHIP, 1, 0b010)
    old = sim.engines[1].page(0)
    assert (old.state, old.owner, old.probowner) == (SHARED, False, 2)
    sim.deliver_one(1, 2)
    assert kinds(last_actions(sim, 2)) == [ACT_MAP_RO, ACT_DONE, ACT_UNPARK]
    new = sim.engines[2].page(0)
    assert (new.state, new.owner, new.copyset, new.probowner) == (SHARED, True, 0b110, 2)
    sim.settle()


def test_ivy_read_keeps_ownership_and_adds_reader() -> None:
    sim = net(3, "ivy,dynamic")
    sim.access_now(1, 0, True)
    sim.settle()
    sim.access_now(2, 0, False)
    sim.deliver_one(2, 0)
    assert sim.engines[0].page(0).probowner == 1  # a classic-Ivy read moves nothing
    sim.deliver_one(0, 1)
    acts = last_actions(sim, 1)
    assert kinds(acts) == [ACT_WRPROTECT, ACT_SEND]
    [(to, reply)] = sends(acts)
    assert reply.flags == REPLY_DATA and not reply.flags & REPLY_OWNERSHIP
    owner = sim.engines[1].page(0)
    assert (owner.state, owner.owner, owner.copyset) == (SHARED, True, 0b110)
    sim.settle()
    reader = sim.engines[2].page(0)
    assert (reader.state, reader.owner, reader.probowner) == (SHARED, False, 1)


def test_node0_serving_initial_read_keeps_a_readable_copy() -> None:
    sim = net(2)
    sim.access_now(1, 0, False)
    sim.deliver_one(1, 0)
    assert kinds(last_actions(sim, 0)) == [ACT_MAP_RO, ACT_SEND]
    sim.settle()
    assert sim.access[0][0] == 1 and sim.engines[1].page(0).copyset == 0b11


# ---------------------------------------------------------------- write paths


def test_write_invalidates_copyset_and_waits_for_every_ack() -> None:
    sim = net(5)
    for reader in (1, 2, 3):
        sim.access_now(reader, 0, False)
        sim.settle()
    assert sim.engines[3].page(0).copyset == 0b1111
    writer = sim.access_now(4, 0, True)
    deliver_until(sim, lambda: sim.engines[4].page(0).pending == WAIT_ACKS)
    w = sim.engines[4].page(0)
    assert w.owner and w.acks_missing == 0b0111 and sim.access[4][0] == 0
    invalidations = [(b, m) for a, b, m in sim.in_flight() if m.type == MSG_INVALIDATE]
    assert sorted(b for b, _ in invalidations) == [0, 1, 2]
    for target in (0, 1, 2):
        sim.deliver_one(4, target)
        assert kinds(last_actions(sim, target)) == [ACT_ZAP, ACT_SEND]
    for target in (0, 1):
        sim.deliver_one(target, 4)
        assert sim.access[4][0] == 0 and sim.engines[4].page(0).pending == WAIT_ACKS
    sim.deliver_one(2, 4)
    assert kinds(last_actions(sim, 4)) == [ACT_MAP_RW, ACT_DONE, ACT_UNPARK]
    w = sim.engines[4].page(0)
    assert (w.state, w.copyset, w.acks_missing) == (MODIFIED, 0b10000, 0)
    sim.settle()
    assert not sim.blocked(writer)


def test_owner_upgrade_invalidates_readers_without_a_request() -> None:
    sim = net(3)
    sim.access_now(1, 0, False)
    sim.settle()  # node 1: OWNER|SHARED, copyset {0, 1}
    version = sim.engines[1].page(0).version
    sim.access_now(1, 0, True)
    assert [(a, b, m.type) for a, b, m in sim.in_flight()] == [(1, 0, MSG_INVALIDATE)]
    sim.deliver_one(1, 0)
    zapped = sim.engines[0].page(0)
    assert (zapped.state, zapped.probowner) == (INVALID, 1)
    sim.deliver_one(0, 1)
    p = sim.engines[1].page(0)
    assert (p.state, p.version, p.copyset) == (MODIFIED, version + 1, 0b10)


def test_writer_elsewhere_forwards_with_path_compression() -> None:
    sim = net(4)
    sim.access_now(1, 0, True)
    sim.settle()
    sim.access_now(2, 0, True)
    sim.settle()  # 2 -> 0 -> 1; node 0 now points at 2, node 1 at 2
    assert sim.engines[0].page(0).probowner == 2
    sim.access_now(3, 0, True)
    sim.deliver_one(3, 0)
    assert sim.engines[0].page(0).probowner == 3
    sim.deliver_one(0, 2)
    [(to, reply)] = sends(last_actions(sim, 2))
    assert to == 3 and reply.sender == 2 and reply.hops == 1  # the owner answers directly
    sim.settle()
    sim.access_now(1, 0, True)  # node 1 -> 2 -> 3
    sim.deliver_one(1, 2)
    assert sim.engines[2].page(0).probowner == 1
    sim.settle()
    assert sim.engines[1].page(0).state == MODIFIED and sim.stats.hops >= 3


# ------------------------------------------------------------ parked requests


def test_request_reaching_a_requester_is_parked_until_it_has_the_page() -> None:
    sim = net(4)
    sim.access_now(3, 0, True)
    sim.settle()  # node 3 owns the page
    sim.access_now(1, 0, True)
    sim.deliver_one(1, 0)
    sim.deliver_one(0, 3)  # node 3 answers node 1; the reply waits on link 3 -> 1
    sim.access_now(2, 0, True)
    sim.deliver_one(2, 0)  # node 0 forwards to node 1, which is still waiting
    sim.deliver_one(0, 1)
    acts = last_actions(sim, 1)
    assert kinds(acts) == [ACT_PARK] and acts[0].msg is not None
    assert acts[0].msg.requester == 2
    sim.deliver_one(3, 1)  # the reply: node 1 completes, then serves node 2
    assert kinds(last_actions(sim, 1)) == [ACT_MAP_RW, ACT_DONE, ACT_UNPARK]
    sim.redeliver_unparked()
    assert sim.engines[1].page(0).state == INVALID
    assert [(a, b, m.type) for a, b, m in sim.in_flight()] == [(1, 2, MSG_REPLY)]
    sim.settle()
    assert not sim.parked.get((1, 0))


def test_request_at_owner_waiting_for_acks_is_parked() -> None:
    sim = net(3)
    sim.access_now(1, 0, False)
    sim.settle()  # node 1 owns, node 0 holds a copy
    sim.access_now(1, 0, True)  # INVALIDATE 1 -> 0 in flight
    sim.access_now(2, 0, False)
    sim.deliver_one(2, 0)  # node 0 (copy holder) forwards to 1
    sim.deliver_one(0, 1)
    assert kinds(last_actions(sim, 1)) == [ACT_PARK]
    sim.deliver_one(1, 0)  # invalidation
    sim.deliver_one(0, 1)  # ack: node 1 gets write access, then serves node 2's read
    sim.redeliver_unparked()
    served = sim.trace[-1]
    assert not isinstance(served, str) and served[0] == 1
    assert kinds(served[2]) == [ACT_WRPROTECT, ACT_SEND]
    sim.settle()


# ---------------------------------------------------------- invalidation races


def test_invalidate_reaching_a_pending_upgrader_is_served_at_once() -> None:
    sim = net(3)
    sim.access_now(1, 0, False)
    sim.settle()
    sim.access_now(2, 0, False)
    sim.settle()  # node 2 owns; 0 and 1 hold copies
    up0 = sim.access_now(0, 0, True)  # WRITE 0 -> 2
    sim.access_now(1, 0, True)  # WRITE 1 -> 2
    sim.deliver_one(1, 2)  # node 2 serves node 1 first
    sim.deliver_one(2, 1)  # node 1 invalidates node 0
    assert sim.engines[1].page(0).pending == WAIT_ACKS
    sim.deliver_one(1, 0)
    assert kinds(last_actions(sim, 0)) == [ACT_ZAP, ACT_SEND]  # not parked
    p0 = sim.engines[0].page(0)
    assert (p0.state, p0.pending) == (INVALID, WANT_WRITE)
    sim.settle()
    assert not sim.blocked(up0)


def test_read_reply_overtaken_by_invalidation_is_discarded_and_retried() -> None:
    """Classic Ivy: the owner answered a reader, then lost the page to a writer
    whose INVALIDATE reached the reader first (different links)."""
    sim = net(3, "ivy,dynamic")
    reader = sim.access_now(1, 0, False)
    sim.deliver_one(1, 0)  # node 0 adds node 1, the reply waits on link 0 -> 1
    sim.access_now(2, 0, True)
    sim.deliver_one(2, 0)  # node 0 hands the page to node 2, copyset {1}
    sim.deliver_one(0, 2)
    sim.deliver_one(2, 1)  # INVALIDATE overtakes the reply
    p1 = sim.engines[1].page(0)
    assert (p1.pending, p1.probowner) == (READ_STALE, 2)
    sim.deliver_one(1, 2)  # ack: node 2 may write
    sim.retry_ready()
    assert sim.engines[2].page(0).state == MODIFIED and sim.shadow[0] != 0
    sim.deliver_one(0, 1)  # the stale reply
    acts = last_actions(sim, 1)
    assert [(a.kind, a.to, a.msg.type if a.msg else None) for a in acts] == [
        (ACT_SEND, 2, MSG_READ)]
    assert sim.access[1][0] == 0 and sim.engines[1].page(0).pending == WANT_READ
    sim.settle()
    assert not sim.blocked(reader) and sim.ram[1][0] == sim.shadow[0]


# ----------------------------------------------------------- manager schemes


@pytest.mark.parametrize("read", ["giantvm", "ivy"])
def test_central_manager_records_owner_and_keeps_routes(read: str) -> None:
    sim = net(4, f"{read},central")
    sim.access_now(1, 1, True)
    sim.settle()
    assert sim.engines[0].page(1).probowner == 1  # the record
    sim.access_now(3, 1, False)
    sim.deliver_one(3, 0)
    [(src, dst, fwd)] = sim.in_flight()
    assert (src, dst, fwd.hops) == (0, 1, 1)
    sim.settle()
    record = 3 if read == "giantvm" else 1
    assert sim.engines[0].page(1).probowner == record
    sim.access_now(2, 1, True)
    sim.settle()
    assert sim.engines[0].page(1).probowner == 2
    for node in (1, 3):  # invalidated by node 2, still asking the manager
        assert sim.engines[node].page(1).state == INVALID
        assert sim.engines[node].route(1) == 0


def test_fixed_manager_is_page_mod_nodes() -> None:
    sim = net(3, "giantvm,fixed", npages=3)
    assert [sim.engines[2].route(p) for p in range(3)] == [0, 1, 0]
    sim.access_now(2, 1, True)
    sim.deliver_one(2, 1)  # page 1's manager forwards to its record, node 0
    assert [(a, b) for a, b, _ in sim.in_flight()] == [(1, 0)]
    assert sim.engines[1].page(1).probowner == 2
    sim.settle()
    sim.access_now(1, 1, True)  # the manager's own request goes straight to the owner
    assert [(a, b) for a, b, _ in sim.in_flight()] == [(1, 2)]
    assert sim.engines[1].page(1).probowner == 1
    sim.settle()
    assert sim.engines[1].page(1).state == MODIFIED


# ------------------------------------------------- everybody on one page


@pytest.mark.parametrize("options", ALL_OPTIONS)
def test_all_nodes_fault_on_one_page_at_once(options: str) -> None:
    for seed in range(15):
        sim = Simulation(seed, 8, options, faults=0, npages=1)
        threads = [sim.access_now(n, 0, (n + seed) % 2 == 0) for n in range(8)]
        threads += [sim.access_now(n, 0, True) for n in range(8)]
        sim.run()
        assert not any(sim.blocked(t) for t in threads)
        assert sum(e.page(0).owner for e in sim.engines) == 1


# ------------------------------------------------- the checks can fail


def test_failure_of_a_scripted_run_names_its_test() -> None:
    """A hand-driven run cannot be replayed by seed: its replay line reruns this test."""
    sim = net(2)
    with pytest.raises(SimFailure, match=r"replay: python -m pytest -q 'tests/dsm/test_engine_unit"
                                         r"\.py::test_failure_of_a_scripted_run_names_its_test'"):
        sim.deliver_one(0, 1)


def test_cli_rejects_bad_options_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.dsm.sim", "--options", "ivy,bogus"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "bogus" in result.stderr


def test_cli_replays_a_seed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.dsm.sim", "--seed", "7", "--nodes", "4", "--options",
         "ivy,fixed"], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


# ------------------------------------------------------------ the hold window


def test_requests_arriving_during_a_hold_wait_for_its_end() -> None:
    """A new request reaching an owner inside its window is parked by the engine and
    served, in arrival order, once the window is over."""
    sim = net(3, "giantvm,dynamic,hold")
    writer = sim.access_now(1, 0, True)
    sim.deliver_one(1, 0)
    sim.deliver_one(0, 1)
    assert kinds(last_actions(sim, 1)) == [ACT_MAP_RW, ACT_DONE, ACT_HOLD]
    assert sim.engines[1].page(0).pending == HOLDING
    sim.access_now(2, 0, False)  # READ 2 -> 0 -> 1, arriving inside node 1's window
    sim.deliver_one(2, 0)
    sim.deliver_one(0, 1)
    assert kinds(last_actions(sim, 1)) == [ACT_PARK]
    sim.retry_ready()  # the woken writer stores: the runtime's watched word changes
    assert not sim.blocked(writer) and (1, 0) in sim.stored
    sim.end_holds()
    assert kinds(last_actions(sim, 1)) == [ACT_UNPARK]
    sim.redeliver_unparked()
    assert kinds(last_actions(sim, 1)) == [ACT_WRPROTECT, ACT_SEND]
    assert sim.coverage["request_hold"] == 1 and sim.coverage["hold_cut_by_store"] == 1
    sim.settle()


def test_a_hold_that_ran_out_unparks_even_without_a_store() -> None:
    sim = net(2, "giantvm,dynamic,hold")
    sim.access_now(0, 0, False)  # node 0's first read: a local grant, held too
    assert kinds(last_actions(sim, 0)) == [ACT_MAP_RO, ACT_DONE, ACT_HOLD]
    sim.access_now(1, 0, True)
    sim.deliver_one(1, 0)
    assert kinds(last_actions(sim, 0)) == [ACT_PARK]
    sim.end_holds()
    assert sim.coverage["hold_expired"] == 1 and sim.coverage["hold_cut_by_store"] == 0
    sim.settle()
    assert sim.engines[1].page(0).state == MODIFIED
