"""Control-channel framing: round trips and the validation of hostile headers."""
from __future__ import annotations

import os
import socket

import pytest

from hypervisor import control
from hypervisor.control import Channel, ControlError, Msg
from hypervisor.crypto import LinkKeys


def pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    keys = LinkKeys(os.urandom(32), os.urandom(32))
    return Channel(a, peer=1, keys=keys), Channel(b, peer=0, keys=keys.swapped())


def test_io_round_trip() -> None:
    left, right = pair()
    left.send(control.encode(Msg.IO, control.IO.pack(7, 3, 0x3f8, 1, 1, ord("x"))))
    frame = right.receive()
    assert frame.type is Msg.IO and frame.flags == 0
    assert control.IO.unpack(frame.payload) == (7, 3, 0x3f8, 1, 1, ord("x"))


def test_status_message_round_trip() -> None:
    left, right = pair()
    left.send(control.encode_status(Msg.FAILED, 5, "vCPU 2 on node 1: triple fault at rip=0x200010"))
    frame = right.receive()
    assert control.decode_status(frame) == (5, "vCPU 2 on node 1: triple fault at rip=0x200010")


@pytest.mark.parametrize("kind, length, message", [
    (99, 0, "unknown control message type 99"),
    (Msg.IO, 3, "IO has length 3, expected 16"),
    (Msg.STOP, 100000, "outside"),
    (Msg.FAILED, 1, "outside"),
])
def test_bad_headers_are_refused_before_reading_payload(kind: int, length: int, message: str) -> None:
    left, right = pair()
    left.send(control.HEADER.pack(kind, 0, length))   # sealed, so only the header check can refuse it
    with pytest.raises(ControlError, match=message):
        right.receive()


def test_peer_closing_is_reported_with_its_id() -> None:
    left, right = pair()
    left.close()
    with pytest.raises(ControlError, match="node 0 closed"):
        right.receive()
