"""Every field of every control frame is checked on arrival (issue 11, section 3).

The decoders are checked field by field; then forged frames go through a
real socket into a Node's own receive loop, which must report the peer lost
(status 8, one line naming it), end its thread cleanly and apply nothing.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor import control, control_decode
from hypervisor.config import loopback_cluster
from hypervisor.control import Channel, ControlError, Frame, Msg
from hypervisor.crypto import LinkKeys
from hypervisor.control_decode import IoAnswer, Sequence, check_answer, decode_io, decode_irq, decode_parked
from hypervisor.node import Node
from hypervisor.node_io import PendingAccess
from hypervisor.status import Status


def frame(kind: Msg, payload: bytes = b"", flags: int = 0) -> Frame:
    return Frame(kind, flags, payload)


def io(seq: int = 1, vcpu: int = 2, port: int = 0x3F8, size: int = 1, is_write: int = 1, value: int = 65) -> Frame:
    return frame(Msg.IO, control.IO.pack(seq, vcpu, port, size, is_write, value))


def irq(target: int, vector: int) -> Frame:
    return frame(Msg.IRQ, control.IRQ.pack(target, vector))


def test_a_correct_io_request_decodes() -> None:
    request = decode_io(io(), peer=1, peer_vcpus=(2, 3))
    assert (request.seq, request.vcpu, request.port, request.size, request.is_write, request.value) == \
        (1, 2, 0x3F8, 1, True, 65)
    assert decode_io(io(size=4, value=0xFFFFFFFF), 1, (2, 3)).value == 0xFFFFFFFF
    assert decode_io(io(size=2, port=0xFFFE, is_write=0, value=0), 1, (2, 3)).is_write is False


@pytest.mark.parametrize("bad, message", [
    (io(vcpu=0), "for vCPU 0, which does not run on node 1"),
    (io(vcpu=99), "for vCPU 99, which does not run on node 1"),
    (io(size=3), "of size 3; port accesses are 1, 2 or 4 bytes"),
    (io(size=0), "of size 0"),
    (io(port=0xFFFF, size=2), "past the end of the port space"),
    (io(is_write=2), "direction 2"),
    (io(size=1, value=0x100), "value 0x100 does not fit a 1-byte write"),
    (io(is_write=0, value=5), "does not fit a 1-byte read"),
])
def test_each_bad_io_field_is_refused_and_named(bad: Frame, message: str) -> None:
    with pytest.raises(ControlError, match="node 1 forwarded I/O") as refused:
        decode_io(bad, peer=1, peer_vcpus=(2, 3))
    assert message in str(refused.value)


def test_io_sequence_numbers_must_follow_each_other() -> None:
    order = Sequence(peer=1)
    order.check(1)
    order.check(2)
    for seq, message in [(2, "seq 2, expected 3"), (1, "seq 1, expected 3"), (5, "seq 5, expected 3")]:
        with pytest.raises(ControlError, match=message):
            order.check(seq)
    order.expected = 0xFFFFFFFF
    order.check(0xFFFFFFFF)
    order.check(1)          # wraps past 0, as the sender's counter does


def test_answers_must_match_the_access_waiting() -> None:
    check_answer(IoAnswer(4, 2, 0xAB, False), peer=0, waiting=(4, 1))
    with pytest.raises(ControlError, match="I/O seq 4 of vCPU 2, which is waiting for no forwarded I/O"):
        check_answer(IoAnswer(4, 2, 0, False), 0, None)
    with pytest.raises(ControlError, match="which waits for seq 5"):
        check_answer(IoAnswer(4, 2, 0, False), 0, (5, 1))
    with pytest.raises(ControlError, match="value 0x1ff, too wide for its 1-byte access"):
        check_answer(IoAnswer(4, 2, 0x1FF, False), 0, (4, 1))


def test_interrupts_are_checked_against_the_machine_and_the_placement() -> None:
    assert decode_irq(irq(3, 0x40), peer=1, vcpus=4, targets=None, sender_vcpus=(0,)) == (3, 0x40)
    assert decode_irq(irq(1, 255), peer=0, vcpus=4, targets=(1,)) == (1, 255)
    cases = [
        (irq(99, 0x40), None, "for vCPU 99; the guest has vCPUs 0..3"),
        (irq(2, 8), None, "vectors are 32..255 (below 32 are exceptions)"),
        (irq(2, 31), None, "vectors are 32..255"),
        (irq(2, 256), None, "vectors are 32..255"),
        (irq(0, 0x40), (1,), "for vCPU 0, which does not run here"),
        (irq(3, 0x40), None, "which runs on node 1 itself"),
    ]
    for bad, targets, message in cases:
        with pytest.raises(ControlError, match="node 1 sent an interrupt") as refused:
            decode_irq(bad, peer=1, vcpus=4, targets=targets, sender_vcpus=(3,))
        assert message in str(refused.value)


def test_parked_must_count_the_senders_vcpus() -> None:
    decode_parked(frame(Msg.PARKED, control.PARKED.pack(2)), peer=1, peer_vcpus=(2, 3))
    with pytest.raises(ControlError, match="node 1 said 7 vCPUs parked; it runs 2"):
        decode_parked(frame(Msg.PARKED, control.PARKED.pack(7)), peer=1, peer_vcpus=(2, 3))


def test_flags_are_refused_unless_the_type_has_them() -> None:
    control_decode.check_flags(frame(Msg.IO_DONE, flags=control.FLAG_UNHANDLED), peer=0)
    with pytest.raises(ControlError, match="node 1 sent IRQ with unknown flags 0x1"):
        control_decode.check_flags(frame(Msg.IRQ, flags=1), peer=1)
    with pytest.raises(ControlError, match="IO_DONE with unknown flags 0x4"):
        control_decode.check_flags(frame(Msg.IO_DONE, flags=6), peer=0)


def test_status_frames_carry_an_exit_status_and_a_printable_line() -> None:
    assert control.decode_status(Frame(Msg.STOP, 0, control.STATUS.pack(0) + b"ok")) == (0, "ok")
    line = control.decode_status(Frame(Msg.FAILED, 0, control.STATUS.pack(4) + b"a\x1b[2Jb\nregs\x00"))
    assert line == (4, "a?[2Jb\nregs?")     # no terminal escapes from another host; lines kept
    for kind, status in [(Msg.STOP, -1), (Msg.STOP, 256), (Msg.FAILED, 0), (Msg.FAILED, 1 << 30)]:
        with pytest.raises(ControlError, match=f"{kind.name} carries status {status}, outside"):
            control.decode_status(Frame(kind, 0, control.STATUS.pack(status)))


# --- through a real channel into a node's receive loop ---------------------------
class FakeMachine:
    """What a node's receive loop touches of its Machine: stop, inject, the device bus."""

    def __init__(self) -> None:
        self.stopped: list[tuple[int, str, bool]] = []
        self.injected: list[tuple[int, int]] = []
        self.accesses: list[tuple[int, int, int, bool, int]] = []
        self.result = None
        self.io = _Bus(self.accesses)

    def stop(self, status: int, message: str = "", error: bool = False) -> None:
        self.stopped.append((status, message, error))

    def inject(self, vcpu: int, vector: int) -> None:
        self.injected.append((vcpu, vector))


class _Bus:
    def __init__(self, accesses: list[tuple[int, int, int, bool, int]]) -> None:
        self.accesses = accesses

    def io(self, vcpu: int, port: int, size: int, is_write: bool, value: int) -> int | None:
        self.accesses.append((vcpu, port, size, is_write, value))
        return None if is_write else 0x60


class PeerEnd:
    """The test's end of the control connection: what it sends is sealed as the real peer's would be,
    so the frames reach the node's field checks (sealing itself is tested in tests/security)."""

    def __init__(self, sock: socket.socket, channel: Channel):
        self.sock, self.channel = sock, channel

    def sendall(self, frame: bytes) -> None:
        self.channel.send(frame)

    def close(self) -> None:
        self.sock.close()


def node_with_peer(node_id: int) -> tuple[Node, FakeMachine, PeerEnd, threading.Thread]:
    """A node of a 2-node, 4-vCPU cluster whose control peer is the returned PeerEnd."""
    config = loopback_cluster(Path("g.elf"), vcpus=4, mem=64 << 20, nnodes=2, ports=[(7000, 7001), (7002, 7003)])
    node = Node(config, node_id, b"s" * 32)
    machine = FakeMachine()
    node.machine = machine     # type: ignore[assignment]
    ours, theirs = socket.socketpair()
    ours.settimeout(5.0)
    peer = 1 - node_id
    keys = LinkKeys(os.urandom(32), os.urandom(32))
    channel = Channel(ours, peer, keys)
    node.channels[peer] = channel
    thread = threading.Thread(target=node.control.receive_loop, args=(channel,), name=f"control-rx-{peer}")
    thread.start()
    return node, machine, PeerEnd(theirs, Channel(theirs, node_id, keys.swapped())), thread


def lost_line(machine: FakeMachine, thread: threading.Thread) -> str:
    thread.join(5.0)
    assert not thread.is_alive(), "the receive loop still runs after a forged frame"
    assert len(machine.stopped) == 1, machine.stopped
    status, line, error = machine.stopped[0]
    assert status == Status.CLUSTER and error and "\n" not in line
    return line


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Uncaught exceptions of any thread (a traceback on stderr and a dead thread, in a real node)."""
    seen: list[object] = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


@pytest.mark.parametrize("forged, needle", [
    (irq(99, 0x40), "node 1 sent an interrupt (vector 64) for vCPU 99; the guest has vCPUs 0..3"),
    (irq(0, 8), "node 1 sent an interrupt (vector 8) for vCPU 0; vectors are 32..255"),
    (irq(3, 0x40), "for vCPU 3, which runs on node 1 itself"),
    (io(seq=1, vcpu=0), "node 1 forwarded I/O (seq 1) for vCPU 0, which does not run on node 1"),
    (io(seq=2, vcpu=2), "node 1 sent I/O seq 2, expected 1"),
    (frame(Msg.PARKED, control.PARKED.pack(9)), "node 1 said 9 vCPUs parked; it runs 2"),
    (frame(Msg.FAILED, control.STATUS.pack(-7) + b"x"), "FAILED carries status -7"),
    (frame(Msg.GO, control.GO.pack(0)), "node 1 sent GO, which node 0 never expects"),
    (frame(Msg.PING, control.PING.pack(1, 0, 0), flags=0x80), "node 1 sent PING with unknown flags 0x80"),
])
def test_a_forged_frame_to_node_0_loses_the_peer_in_one_line(forged: Frame, needle: str,
                                                             thread_errors: list[object]) -> None:
    node, machine, peer, thread = node_with_peer(0)
    try:
        peer.sendall(control.encode(forged.type, forged.payload, forged.flags))
        line = lost_line(machine, thread)
        assert line.startswith("node 0: ") and needle in line, line
        assert machine.injected == [] and machine.accesses == []     # nothing forged took effect
        assert thread_errors == []
    finally:
        peer.close()
        node._closing.set()


@pytest.mark.parametrize("forged, needle", [
    (irq(0, 0x40), "node 0 sent an interrupt (vector 64) for vCPU 0, which does not run here"),
    (irq(2, 3), "vectors are 32..255"),
    (frame(Msg.IO_DONE, control.IO_DONE.pack(1, 2, 0)), "I/O seq 1 of vCPU 2, which is waiting for no forwarded I/O"),
    (frame(Msg.STOP, control.STATUS.pack(1000)), "STOP carries status 1000"),
    (frame(Msg.IO, control.IO.pack(1, 2, 0xF4, 4, 1, 42)), "node 0 sent IO, which node 1 never expects"),
])
def test_a_forged_frame_to_node_1_loses_node_0_in_one_line(forged: Frame, needle: str,
                                                           thread_errors: list[object]) -> None:
    node, machine, peer, thread = node_with_peer(1)
    try:
        peer.sendall(control.encode(forged.type, forged.payload, forged.flags))
        line = lost_line(machine, thread)
        assert line.startswith("node 1: ") and needle in line, line
        assert machine.injected == [] and node.control.stop_from_node0 is None
        assert thread_errors == []
    finally:
        peer.close()
        node._closing.set()


def test_good_frames_still_take_effect_in_order(thread_errors: list[object]) -> None:
    node, machine, peer, thread = node_with_peer(0)
    try:
        peer.sendall(control.encode(Msg.IRQ, control.IRQ.pack(1, 0x40)))
        peer.sendall(control.encode(Msg.IO, control.IO.pack(1, 2, 0x3F8, 1, 1, 65)))
        peer.sendall(control.encode(Msg.IO, control.IO.pack(2, 3, 0x3FD, 1, 0, 0)))
        answers = [peer.channel.receive() for _ in range(2)]
        assert [control.IO_DONE.unpack(a.payload) for a in answers] == [(1, 2, 0), (2, 3, 0x60)]
        assert machine.injected == [(1, 0x40)]
        assert machine.accesses == [(2, 0x3F8, 1, True, 65), (3, 0x3FD, 1, False, 0)]
        # Then a replay of the first request: refused, and the peer is lost.
        peer.sendall(control.encode(Msg.IO, control.IO.pack(1, 2, 0x3F8, 1, 1, 65)))
        assert "node 1 sent I/O seq 1, expected 3" in lost_line(machine, thread)
        assert len(machine.accesses) == 2
        assert thread_errors == []
    finally:
        peer.close()
        node._closing.set()


def test_an_unexpected_exception_in_dispatch_is_a_lost_peer_not_a_dead_thread(
        monkeypatch: pytest.MonkeyPatch, thread_errors: list[object]) -> None:
    node, machine, peer, thread = node_with_peer(0)

    def broken(vcpu: int, vector: int) -> None:
        raise RuntimeError("injection failed")
    monkeypatch.setattr(machine, "inject", broken)
    try:
        peer.sendall(control.encode(Msg.IRQ, control.IRQ.pack(1, 0x40)))
        line = lost_line(machine, thread)
        assert "a control frame from node 1 could not be handled (RuntimeError: injection failed)" in line
        assert thread_errors == []
    finally:
        peer.close()
        node._closing.set()


# --- any frame a header check lets through -------------------------------------
class _Peer:
    """A channel's sending side, recording what the node sends back or on."""

    def __init__(self, peer: int) -> None:
        self.peer = peer
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)


def _payload_size(kind: Msg) -> st.SearchStrategy[int]:
    fixed = control._FIXED_SIZE.get(kind)
    return st.just(fixed) if fixed is not None else st.integers(control.STATUS.size, 64)


FRAMES = st.sampled_from(list(Msg)).flatmap(lambda kind: st.tuples(
    st.just(kind), st.one_of(st.just(0), st.integers(0, 0xFFFF)),
    _payload_size(kind).flatmap(lambda n: st.binary(min_size=n, max_size=n))))


@settings(derandomize=True, database=None, deadline=None, max_examples=400)
@given(st.sampled_from([0, 1]), st.lists(FRAMES, min_size=1, max_size=4))
def test_any_well_framed_payload_is_applied_or_refused_as_a_control_error(node_id: int, frames) -> None:  # type: ignore[no-untyped-def]
    """No field reaches the machine unchecked: dispatch either applies a frame or raises ControlError,
    never another exception (which the receive loop would also catch, as a lost peer, but which
    would mean a field went unchecked)."""
    config = loopback_cluster(Path("g.elf"), vcpus=4, mem=64 << 20, nnodes=3,
                              ports=[(7000, 7001), (7002, 7003), (7004, 7005)])
    node = Node(config, node_id, b"s" * 32)
    machine = FakeMachine()
    node.machine = machine     # type: ignore[assignment]
    peers = {peer: _Peer(peer) for peer in ((1, 2) if node_id == 0 else (0,))}
    node.channels.update(peers)   # type: ignore[arg-type]
    if node_id == 1:
        node.forwarded.pending[2] = PendingAccess(1, 1)       # vCPU 2 waits for the answer to its access seq 1
    sender = peers[1] if node_id == 0 else peers[0]
    for kind, flags, payload in frames:
        try:
            node.control.dispatch(sender, Frame(kind, flags, payload))   # type: ignore[arg-type]
        except ControlError:
            break
    for vcpu, vector in machine.injected:
        assert vcpu in config.nodes[node_id].vcpus and 32 <= vector <= 255
    for status, _line, _error in machine.stopped:
        assert 0 <= status <= 255
