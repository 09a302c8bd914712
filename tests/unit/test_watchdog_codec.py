"""The watchdog's control messages and its line, without KVM or sockets (hypervisor.watchdog)."""
from __future__ import annotations

import pytest

from hypervisor import control, watchdog
from hypervisor.control import ControlError, Frame, Msg
from hypervisor.native_consts import Pending, State, WireType

NPAGES = 16384

INFO = {"state": State.INVALID, "owner": 0, "pending": Pending.WANT_READ, "access": 0, "probowner": 2,
        "copyset": 0, "version": 7, "fault_age_ns": 2_345_000_000, "sent_type": WireType.READ, "sent_peer": 2,
        "sent_age_ns": 2_300_000_000, "parked": 1, "held": 0, "mapped": 0, "acks_missing": 0,
        "recv_type": 0, "recv_peer": 0, "recv_age_ns": 0}


def frame_of(data: bytes) -> Frame:
    kind, flags, length = control.HEADER.unpack_from(data)
    assert length == len(data) - control.HEADER.size
    return Frame(control.check_header(kind, length), flags, data[control.HEADER.size:])


def test_query_and_state_round_trip() -> None:
    assert watchdog.decode_query(frame_of(watchdog.encode_query(1, 42, 0x20)), 1, 3, NPAGES) == (1, 42, 0x20)
    asker, node, qid, state = watchdog.decode_state(
        frame_of(watchdog.encode_state(1, 2, 42, 0x20, INFO)), 0, 3, NPAGES)     # relayed by node 0
    assert (asker, node, qid) == (1, 2, 42)
    assert state["state"] == State.INVALID and state["pending"] == Pending.WANT_READ and state["probowner"] == 2
    assert (state["fault_ms"], state["sent_ms"], state["sent_type"], state["waiting"]) == (2345, 2300, WireType.READ, watchdog.WAITING_PARKED)


@pytest.mark.parametrize("make, peer, message", [
    (lambda: watchdog.encode_query(2, 1, 5), 1, "on behalf of node 2"),
    (lambda: watchdog.encode_query(1, 1, NPAGES), 1, "beyond the guest's 16384 pages"),
    (lambda: watchdog.encode_query(9, 1, 5), 0, "on behalf of node 9"),
])
def test_a_forged_query_is_refused(make, peer: int, message: str) -> None:
    with pytest.raises(ControlError, match=message):
        watchdog.decode_query(frame_of(make()), peer, 3, NPAGES)


@pytest.mark.parametrize("change, peer, message", [
    ({}, 1, "node 1 answered for node 2"),                        # node 1 speaking for node 2
    ({"state": 9}, 2, "page state 9"),
    ({"pending": 7}, 2, "pending 7"),
    ({"probowner": 3}, 2, "probowner 3"),
    ({"copyset": 0b1000}, 2, "copyset 0x8"),
    ({"sent_type": 99}, 2, "last sent message type 99"),
])
def test_a_forged_answer_is_refused(change: dict, peer: int, message: str) -> None:
    data = watchdog.encode_state(0, 2, 1, 5, {**INFO, **change})
    with pytest.raises(ControlError, match=message):
        watchdog.decode_state(frame_of(data), peer, 3, NPAGES)


def test_the_line_names_vcpu_address_and_every_node() -> None:
    here = watchdog.decode_state(frame_of(watchdog.encode_state(1, 1, 1, 3, INFO)), 1, 3, NPAGES)[3]
    owner = {**here, "state": State.MODIFIED, "owner": 1, "pending": Pending.IDLE, "copyset": 0b101,
             "fault_ms": 0, "waiting": 0, "sent_type": WireType.REPLY, "sent_peer": 0, "sent_ms": 5000}
    line = watchdog.stall_line(1, 3, {"vcpu": 4, "page": 3, "age_ns": 2_400_000_000}, here, {0: owner, 2: None})
    assert line == ("node 1: vCPU 4 has waited 2.4 s for page 0x3000; here INVALID, probowner 2, version 7, "
                    "pending WANT_READ, a local fault waiting 2.3 s, requests parked, last sent READ to node 2 "
                    "2.3 s ago; node 0: MODIFIED, owner, copies on nodes {0, 2}, version 7, idle, last sent "
                    "REPLY to node 0 5.0 s ago; node 2: no answer within 0.5 s")


class FakeDsm:
    def __init__(self) -> None:
        self.stalls: list[dict] = []

    def outstanding(self, min_age_s: float) -> list[dict]:
        return self.stalls

    def page_info(self, page: int) -> dict:
        return dict(INFO)


def test_a_stall_is_named_once_when_every_node_answered_and_again_only_if_it_returns() -> None:
    dsm, asked, lines = FakeDsm(), [], []
    dog = watchdog.Watchdog(1, 3, dsm, 2.0, lambda qid, page: asked.append((qid, page)), lines.append)  # type: ignore[arg-type]
    dsm.stalls = [{"vcpu": 1, "page": 7, "age_ns": 2_100_000_000}]
    dog.check()
    dog.check()
    assert asked == [(1, 7)] and lines == []
    answer = watchdog.decode_state(frame_of(watchdog.encode_state(1, 0, 1, 7, INFO)), 0, 3, NPAGES)[3]
    dog.answered(1, 0, answer)
    dog.answered(1, 2, {**answer, "page": 8})      # about another page: not this query's answer
    assert lines == []
    dog.answered(1, 2, answer)
    assert len(lines) == 1 and "vCPU 1 has waited 2.1 s for page 0x7000" in lines[0]
    dog.check()
    assert len(asked) == 1, "a stall already named is not asked about again"
    dsm.stalls = []
    dog.check()
    dsm.stalls = [{"vcpu": 1, "page": 7, "age_ns": 2_000_000_000}]
    dog.check()
    assert [qid for qid, _ in asked] == [1, 2], "a stall that ended and came back is new"


def test_nothing_is_said_once_the_run_ends_or_the_dsm_failed() -> None:
    dsm, lines = FakeDsm(), []
    failed = [False]
    dog = watchdog.Watchdog(1, 2, dsm, 2.0, lambda qid, page: None, lines.append,  # type: ignore[arg-type]
                            quiet=lambda: failed[0])
    dsm.stalls = [{"vcpu": 1, "page": 7, "age_ns": 2_100_000_000}]
    dog.check()
    failed[0] = True        # a silent peer: the DSM's own line names it
    answer = watchdog.decode_state(frame_of(watchdog.encode_state(1, 0, 1, 7, INFO)), 0, 3, NPAGES)[3]
    dog.answered(1, 0, answer)     # every other node answered: the line would be said now
    assert lines == []
