"""The control channel between node 0 and every other node.

Memory coherence travels on the DSM connections (C, no Python per fault).
Everything else that makes N processes look like one machine travels here:
forwarded port I/O, cross-node interrupts, parking, errors and the final
stop. It is deliberately small: a fixed 8-byte header (type, flags, payload
length) and one struct per message type. Every frame travels sealed, one
AES-256-GCM record each (hypervisor/crypto.py), under the keys the control
handshake derived: a frame that is forged, altered, replayed, reordered or
follows a dropped one never opens, and the peer is taken for lost.

Each node k > 0 holds one connection to node 0 (a star): node 0 owns the
devices, so every forwarded access has to reach it anyway, and relaying an
interrupt through node 0 costs one extra hop only for vCPUs that are on
neither node 0 nor the sender's node.
"""
from __future__ import annotations

import enum
import socket
import struct
import threading
from dataclasses import dataclass

from .crypto import OVERHEAD, PREFIX, CryptoError, LinkKeys, Opener, Sealer

HEADER = struct.Struct("<HHI")  # type, flags, payload length
MAX_PAYLOAD = 4096
FLAG_UNHANDLED = 2              # IO_DONE: node 0 has no device at that port
MAX_EXIT_STATUS = 255           # a status is a process exit status


class ControlError(Exception):
    """The peer broke the control protocol or went away."""


class Msg(enum.IntEnum):
    JOIN = 1      # k -> 0: image digest and machine shape, checked by node 0
    GO = 2        # 0 -> k: RAM is loaded, start the vCPUs (payload: the guest-TSC offset)
    IO = 3        # k -> 0: a port access of a remote vCPU
    IO_DONE = 4   # 0 -> k: its result (reads), or its completion (writes)
    IRQ = 5       # either way: queue `vector` for `target`
    PARKED = 6    # k -> 0: a vCPU parked for good
    FAILED = 7    # k -> 0: a guest or host error on node k, status and line
    STOP = 8      # 0 -> k: stop now (guest exit, error elsewhere, all parked)
    PING = 9      # either way: heartbeat while idle, with clock stamps
    BYE = 10      # either way: clean close follows
    PAGE_QUERY = 11   # any node, via node 0: what is your state for this page? (hypervisor.watchdog)
    PAGE_STATE = 12   # the answer, routed back to the asker via node 0
    TSC_PROBE = 13    # k -> 0, during the join: ask for node 0's host TSC (hypervisor/tscsync.py)
    TSC_STAMP = 14    # 0 -> k: the answer, node 0's host TSC as it read the probe


JOIN = struct.Struct("<32sIQ")     # image sha256, vcpus, mem
GO = struct.Struct("<q")           # the guest-TSC offset every vCPU takes (hypervisor/clock.py)
IO = struct.Struct("<IHHBBxxI")    # seq, vcpu, port, size, is_write, value
IO_DONE = struct.Struct("<IHxxI")  # seq, vcpu, value
IRQ = struct.Struct("<HH")         # target vcpu, vector
PARKED = struct.Struct("<H")       # vcpu
STATUS = struct.Struct("<i")       # FAILED/STOP: status, then a UTF-8 line
TSC_PROBE = struct.Struct("<I")     # probe number, 1, 2, ... in order
TSC_STAMP = struct.Struct("<IQ")    # the probe's number, node 0's host TSC
PING = struct.Struct("<QQQ")       # CLOCK_MONOTONIC ns: sent, echoed peer's sent, its arrival (clocksync.py)

# The watchdog's question and answer; codecs and checks in hypervisor.watchdog.
PAGE_QUERY = struct.Struct("<HxxIQ")            # asker, query id, page
PAGE_STATE = struct.Struct("<HHIQBBBBHxxQQIIBxHI")
# asker, answering node, query id, page; state, owner, pending, access, probowner; copyset, version;
# ms a local fault has waited on it (0: none), ms since the last message sent for it; its type, peer,
# and how many requests wait for the page there (parked or held)

_FIXED_SIZE = {
    Msg.JOIN: JOIN.size, Msg.GO: GO.size, Msg.IO: IO.size, Msg.IO_DONE: IO_DONE.size,
    Msg.IRQ: IRQ.size, Msg.PARKED: PARKED.size, Msg.PING: PING.size, Msg.BYE: 0,
    Msg.PAGE_QUERY: PAGE_QUERY.size, Msg.PAGE_STATE: PAGE_STATE.size,
    Msg.TSC_PROBE: TSC_PROBE.size, Msg.TSC_STAMP: TSC_STAMP.size,
}


@dataclass(frozen=True)
class Frame:
    type: Msg
    flags: int
    payload: bytes


def encode(kind: Msg, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(kind, flags, len(payload)) + payload


# STOP: the status is a failure ivyvm detected, not a value the guest chose
# (a guest may exit with 8 itself; only a real loss is reported on every host).
FLAG_FAILURE = 1


def encode_status(kind: Msg, status: int, line: str, flags: int = 0) -> bytes:
    text = line.encode("utf-8", "replace")[: MAX_PAYLOAD - STATUS.size]
    return encode(kind, STATUS.pack(status) + text, flags)


def decode_status(frame: Frame) -> tuple[int, str]:
    """FAILED/STOP: (status, line); the status must be an exit status and the text is made safe to print.

    The line came from another host: control characters other than newline
    (a verbose register dump has several lines) are replaced, so a forged
    frame cannot drive the operator's terminal.
    """
    (status,) = STATUS.unpack_from(frame.payload)
    low = 1 if frame.type is Msg.FAILED else 0     # a failure with status 0 is a contradiction
    if not low <= status <= MAX_EXIT_STATUS:
        raise ControlError(f"control message {frame.type.name} carries status {status}, outside {low}..{MAX_EXIT_STATUS}")
    text = frame.payload[STATUS.size:].decode("utf-8", "replace")
    return status, "".join(c if c.isprintable() or c == "\n" else "?" for c in text)


def check_header(kind: int, length: int) -> Msg:
    """Validate a header before reading its payload; the error names the values."""
    try:
        msg = Msg(kind)
    except ValueError:
        raise ControlError(f"unknown control message type {kind}") from None
    fixed = _FIXED_SIZE.get(msg)
    if fixed is not None and length != fixed:
        raise ControlError(f"control message {msg.name} has length {length}, expected {fixed}")
    if fixed is None and not STATUS.size <= length <= MAX_PAYLOAD:
        raise ControlError(f"control message {msg.name} has length {length}, outside {STATUS.size}..{MAX_PAYLOAD}")
    return msg


class Channel:
    """One authenticated control connection: sealed framed send (any thread), receive (one thread)."""

    def __init__(self, sock: socket.socket, peer: int, keys: LinkKeys):
        self.sock = sock
        self.peer = peer
        self._sealer = Sealer(keys.send)
        self._opener = Opener(keys.recv)
        self._send_lock = threading.Lock()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        """Send one frame (from encode()); records go out in the order they are sealed."""
        with self._send_lock:
            self.sock.sendall(self._sealer.seal(data))

    def receive(self) -> Frame:
        prefix = self._read_exact(PREFIX.size)
        (length,) = PREFIX.unpack(prefix)
        if not HEADER.size <= length <= HEADER.size + MAX_PAYLOAD:
            raise ControlError(f"node {self.peer} sent a control record of {length} bytes, which no control "
                               f"frame has (forged or corrupted)")
        try:
            frame = self._opener.open(prefix + self._read_exact(length + OVERHEAD - PREFIX.size))
        except CryptoError as err:
            raise ControlError(f"node {self.peer} sent a control frame that {err}") from None
        kind, flags, payload_len = HEADER.unpack_from(frame)
        msg = check_header(kind, payload_len)
        if payload_len != length - HEADER.size:
            raise ControlError(f"node {self.peer} sent a control record of {length} bytes holding a "
                               f"{msg.name} of {payload_len}")
        return Frame(msg, flags, frame[HEADER.size:])

    def _read_exact(self, count: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:
            chunk = self.sock.recv(count - len(chunks))
            if not chunk:
                raise ControlError(f"node {self.peer} closed the control connection")
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
