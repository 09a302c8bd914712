"""Every field of every control frame, checked on arrival (issue 11, section 3).

The control channel's header is checked as it is read (control.check_header:
type and length). This module checks what the payload says against what the
receiving node knows: the machine's shape, which node runs which vCPU, which
forwarded accesses it is waiting for, and the order of requests. A frame
that fails is a ControlError whose message names the sender and the field;
the node then takes the peer for lost (status 8) and applies nothing.

Pure functions of a frame and the receiver's state, so each rule is unit
tested without sockets (tests/unit/test_control_decode.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import control
from .control import ControlError, Frame, Msg
from .devices import MAX_VECTOR, MIN_VECTOR

IO_SIZES = (1, 2, 4)
PORT_SPACE = 0x10000
# Flags a correct node sets on each message type; anything else is refused.
ALLOWED_FLAGS = {Msg.IO_DONE: control.FLAG_UNHANDLED, Msg.STOP: control.FLAG_FAILURE}


@dataclass(frozen=True)
class IoRequest:
    seq: int
    vcpu: int
    port: int
    size: int
    is_write: bool
    value: int


@dataclass(frozen=True)
class IoAnswer:
    seq: int
    vcpu: int
    value: int
    unhandled: bool


def check_flags(frame: Frame, peer: int) -> None:
    unknown = frame.flags & ~ALLOWED_FLAGS.get(frame.type, 0)
    if unknown:
        raise ControlError(f"node {peer} sent {frame.type.name} with unknown flags {unknown:#x}")


def decode_io(frame: Frame, peer: int, peer_vcpus: tuple[int, ...]) -> IoRequest:
    """Node 0: a port access forwarded by `peer`, which may only forward its own vCPUs' accesses."""
    seq, vcpu, port, size, is_write, value = control.IO.unpack(frame.payload)
    what = f"node {peer} forwarded I/O (seq {seq})"
    if vcpu not in peer_vcpus:
        raise ControlError(f"{what} for vCPU {vcpu}, which does not run on node {peer}")
    if size not in IO_SIZES:
        raise ControlError(f"{what} of size {size}; port accesses are 1, 2 or 4 bytes")
    if port + size > PORT_SPACE:
        raise ControlError(f"{what} at port {port:#x} of size {size}, past the end of the port space")
    if is_write not in (0, 1):
        raise ControlError(f"{what} with direction {is_write}, neither read (0) nor write (1)")
    if value >> (8 * size) or (not is_write and value):
        raise ControlError(f"{what}: value {value:#x} does not fit a {size}-byte "
                           f"{'write' if is_write else 'read (which carries 0)'}")
    return IoRequest(seq, vcpu, port, size, bool(is_write), value)


def decode_io_done(frame: Frame) -> IoAnswer:
    seq, vcpu, value = control.IO_DONE.unpack(frame.payload)
    return IoAnswer(seq, vcpu, value, bool(frame.flags & control.FLAG_UNHANDLED))


def check_answer(answer: IoAnswer, peer: int, waiting: tuple[int, int] | None) -> None:
    """Node k: an answer must match the (seq, size) its vCPU is waiting for."""
    what = f"node {peer} answered I/O seq {answer.seq} of vCPU {answer.vcpu}"
    if waiting is None:
        raise ControlError(f"{what}, which is waiting for no forwarded I/O")
    seq, size = waiting
    if answer.seq != seq:
        raise ControlError(f"{what}, which waits for seq {seq}")
    if answer.value >> (8 * size):
        raise ControlError(f"{what} with value {answer.value:#x}, too wide for its {size}-byte access")


def decode_irq(frame: Frame, peer: int, vcpus: int, targets: tuple[int, ...] | None,
               sender_vcpus: tuple[int, ...] = ()) -> tuple[int, int]:
    """(target, vector) of an interrupt from `peer`.

    `targets`: the vCPUs this node accepts interrupts for (node k: its own),
    or None for any (node 0 relays). A node delivers to its own vCPUs
    itself, so one naming a vCPU of the sender (`sender_vcpus`) is forged.
    """
    target, vector = control.IRQ.unpack(frame.payload)
    what = f"node {peer} sent an interrupt (vector {vector}) for vCPU {target}"
    if not 0 <= target < vcpus:
        raise ControlError(f"{what}; the guest has vCPUs 0..{vcpus - 1}")
    if targets is not None and target not in targets:
        raise ControlError(f"{what}, which does not run here")
    if target in sender_vcpus:
        raise ControlError(f"{what}, which runs on node {peer} itself")
    if not MIN_VECTOR <= vector <= MAX_VECTOR:
        raise ControlError(f"{what}; vectors are {MIN_VECTOR}..{MAX_VECTOR} (below {MIN_VECTOR} are exceptions)")
    return target, vector


def decode_parked(frame: Frame, peer: int, peer_vcpus: tuple[int, ...]) -> None:
    (count,) = control.PARKED.unpack(frame.payload)
    if count != len(peer_vcpus):
        raise ControlError(f"node {peer} said {count} vCPUs parked; it runs {len(peer_vcpus)}")


class Sequence:
    """The IO sequence numbers of one sender: each one more than the one before (starting at 1).

    A gap, a repeat or a step back is a dropped, replayed or reordered
    request, none of which a correct node sends.
    """

    def __init__(self, peer: int) -> None:
        self.peer = peer
        self.expected = 1

    def check(self, seq: int) -> None:
        if seq != self.expected:
            raise ControlError(f"node {self.peer} sent I/O seq {seq}, expected {self.expected}")
        self.expected = (seq + 1) & 0xFFFFFFFF or 1
