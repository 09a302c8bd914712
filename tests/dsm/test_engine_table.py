"""The transition table: engine.c's rows, the model's mirror, the check that
comes from them, coverage, failure reports, replays and a mutant the
check-engine sweep must catch."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dsm import model, table_doc
from tests.dsm.engine_ffi import (
    MSG_INV_ACK, MSG_READ, MSG_REPLY, MSG_WRITE, REPLY_OWNERSHIP, WANT_READ, CEngine, Msg,
    c_rows,
)
from tests.dsm.disagreeing_model import simulation_with_a_model_off_by_one_hop
from tests.dsm.sim import ROW_NAMES, Simulation, SimFailure, sweep, uncovered

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MUTANT = "serve_read_keep_forgets_reader"


def test_model_mirrors_the_c_table_row_by_row() -> None:
    assert [r.as_row().key() for r in model.ROWS] == [r.key() for r in c_rows()]


def test_row_names_are_unique_and_every_handler_exists_in_the_model() -> None:
    rows = c_rows()
    assert len({r.name for r in rows}) == len(rows)
    for r in model.ROWS:
        assert callable(getattr(model.ModelNode, r.handler))
        for name in (r.when, r.guard):
            assert name is None or callable(getattr(model.ModelNode, name))


def row_index(name: str) -> int:
    return ROW_NAMES.index(name)


def test_a_message_no_row_takes_is_refused_in_the_events_words() -> None:
    e = CEngine(1, 2, 1)
    assert e.check(Msg(MSG_REPLY, REPLY_OWNERSHIP, 1, 0, 0, 0, 0, 0, 12345)) == (
        -1, -1, "a reply this node did not ask for")
    assert e.check(Msg(MSG_INV_ACK, 0, 1, 0, 0, 0, 0, 0, 1)) == (
        -1, -1, "an acknowledgement nobody waits for")


def test_a_guard_refusal_names_the_row_that_refused() -> None:
    e = CEngine(1, 2, 1)
    [ask] = e.fault(0, False)
    assert e.page(0).pending == WANT_READ and ask.msg is not None
    stale = Msg(MSG_REPLY, REPLY_OWNERSHIP, 1, 0, 0, 0, 0, 0, ask.msg.txid + 1)
    assert e.check(stale) == (-1, row_index("reply_read_owner"),
                              "a reply with a stale transaction id")
    with_bytes_for_another = Msg(MSG_REPLY, REPLY_OWNERSHIP, 0, 0, 0, 0, 0, 0, ask.msg.txid)
    assert e.check(with_bytes_for_another)[1:] == (row_index("reply_read_owner"),
                                                   "a reply for another node")
    good = Msg(MSG_REPLY, REPLY_OWNERSHIP, 1, 0, 0, 0, 0, 0b1, ask.msg.txid)
    assert e.check(good) == (row_index("reply_read_owner"), -1, None)
    e.message(good)
    assert e.row == row_index("reply_read_owner")


def test_a_request_from_itself_is_refused_by_the_serving_row() -> None:
    e = CEngine(0, 2, 1)
    for kind, row in ((MSG_READ, "serve_read_handover"), (MSG_WRITE, "serve_write")):
        assert e.check(Msg(kind, 0, 0, 1, 0, 0, 0, 0, 9)) == (
            -1, row_index(row), "a request naming this node as requester")


def test_the_sweep_takes_every_row() -> None:
    """What make check-engine runs (one seed per configuration here)."""
    coverage = sweep(1)
    assert uncovered(coverage) == []


def sweep_failures(mutant: str) -> tuple[str, str]:
    """What the sweep says of `mutant`, with the model and by the invariants alone: it must fail both ways."""
    with pytest.raises(SimFailure) as with_model:
        sweep(3, mutant=mutant)
    with pytest.raises(SimFailure) as invariants_only:
        sweep(3, compare_model=False, mutant=mutant)
    assert f"--mutant {mutant}" in str(invariants_only.value)
    return str(with_model.value), str(invariants_only.value)


def test_check_engine_catches_a_broken_handler() -> None:
    """serve_read_keep compiled without adding the reader to the copyset: the sweep
    fails on it, naming the row, with the model and, by the invariants, without it."""
    with_model, invariants_only = sweep_failures(MUTANT)
    assert "row serve_read_keep" in with_model
    assert "msg.copyset" in with_model
    assert "--no-model" in invariants_only


def test_a_failure_prints_only_the_fields_that_differ() -> None:
    sim = simulation_with_a_model_off_by_one_hop()
    with pytest.raises(SimFailure) as failure:
        sim.run()
    head = str(failure.value).split("\nreplay:")[0]
    assert re.search(r"row serve_\w+: engine and model disagree", head), head
    assert re.search(r"action \d \(SEND\): msg\.hops: engine \d+, model \d+$", head), head


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.dsm.sim", *args], capture_output=True,
                          text=True, cwd=ROOT, env=ENV)


def test_a_printed_replay_command_replays_that_very_run() -> None:
    """Options the CLI must carry: faults, pages, no model, no load, the mutant."""
    for seed in range(200):
        sim = Simulation(seed, 3, "ivy,dynamic", faults=25, compare_model=False, npages=2,
                         loaded=False, mutant=MUTANT)
        try:
            sim.run()
        except SimFailure as failure:
            first, replay = str(failure).splitlines()[:2]
            break
    else:
        pytest.fail("the mutant survived 200 seeds")
    assert replay.startswith("replay: python -m tests.dsm.sim ")
    for flag in ("--faults 25", "--pages 2", "--no-model", "--no-load", f"--mutant {MUTANT}"):
        assert flag in replay
    result = run_cli(*replay.split()[4:])
    assert result.returncode == 1
    assert result.stderr.startswith(f"FAIL seed {seed}: {first}\n"), result.stderr


def test_a_passing_replay_reports_the_same_run() -> None:
    sim = Simulation(11, 4, "giantvm,fixed,hold", faults=30)
    stats = sim.run()
    result = run_cli(*sim.replay_command().split()[3:])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ok: {stats.steps} steps, {stats.accesses} accesses, "
                                    f"{stats.faults} faults")


def test_protocol_doc_table_is_the_c_table() -> None:
    text = table_doc.DOC.read_text()
    assert table_doc.render(text, c_rows()) == text, "docs/protocol.md is stale: make protocol-doc"
    for r in c_rows():
        assert f"| `{r.name}` |" in text


MIGRATORY_MUTANT = "serve_read_migratory_keeps_copy"


def test_check_engine_catches_a_broken_migratory_grant() -> None:
    """serve_read_migratory compiled to leave the server's copy mapped read-only
    (WRPROTECT in place of ZAP) while granting the page whole: the sweep fails
    on it with the model, and by the invariants alone without it."""
    with_model, invariants_only = sweep_failures(MIGRATORY_MUTANT)
    assert "row serve_read_migratory" in with_model
    assert "migratory" in invariants_only


PREFETCH_MUTANT = "prefetch_maps_without_asking"


def test_check_engine_catches_a_prefetch_that_maps_without_asking() -> None:
    """prefetch_request compiled to map the bytes the node already has in place
    of asking the owner: the sweep fails on it with the model, and by its
    read checks alone without it (a read returns an older write)."""
    with_model, invariants_only = sweep_failures(PREFETCH_MUTANT)
    assert "row prefetch_request" in with_model
    assert "prefetch" in invariants_only


WRITE_SOON_MUTANT = "write_soon_ignores_copies"


def test_check_engine_catches_a_write_soon_grant_beside_other_copies() -> None:
    """serve_read_write_soon compiled to grant a hinted read whole and writable
    while a third node still holds a copy, the reply forgetting it: the sweep
    fails on it with the model, and by the invariants alone without it (a
    writer beside a reader)."""
    with_model, invariants_only = sweep_failures(WRITE_SOON_MUTANT)
    assert "row serve_read_write_soon" in with_model
    assert "misses holders" in invariants_only or "writes while" in invariants_only
