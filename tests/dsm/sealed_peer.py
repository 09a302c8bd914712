"""The test's end of a DSM link: it speaks raw frames, and seals and opens them as a node would.

Tests that play a peer node over a socketpair give the node a Link with
fresh keys and keep a SealedPeer: `sendall` seals each frame it is given
into its own record (hypervisor/crypto.py, the same C helper the node uses),
`recv` returns opened frame bytes, and `raw` is the bare socket for what an
attacker without the keys would send.
"""
from __future__ import annotations

import os
import socket
import struct
from contextlib import contextmanager
from typing import Iterator

from hypervisor.crypto import OVERHEAD, PREFIX, LinkKeys, Opener, Sealer
from hypervisor.dsm import DsmNode, DsmOptions
from hypervisor.handshake import Link
from hypervisor.memory import GuestRam
from hypervisor.native_consts import PAGE_SIZE

_MAGIC = struct.Struct("<I")
_HDR_SIZE = 56
_PAYLOAD_LEN_AT = 8


class SealedPeer:
    def __init__(self, sock: socket.socket, keys: LinkKeys):
        self.raw = sock
        self._sealer = Sealer(keys.send)
        self._opener = Opener(keys.recv)
        self._plain = bytearray()

    def seal(self, frame: bytes) -> bytes:
        return self._sealer.seal(frame)

    def sendall(self, data: bytes) -> None:
        """Seal each frame of `data` (split by their headers' payload length; what does not parse
        as a frame header goes as one record of its own)."""
        rest, records = bytes(data), []
        while rest:
            size = len(rest)
            if len(rest) >= _HDR_SIZE:
                size = min(len(rest), _HDR_SIZE + _MAGIC.unpack_from(rest, _PAYLOAD_LEN_AT)[0])
            records.append(self._sealer.seal(rest[:size]))
            rest = rest[size:]
        self.raw.sendall(b"".join(records))    # frames sent together arrive together, as before

    def _fill(self) -> bool:
        prefix = self._exact(PREFIX.size)
        if prefix is None:
            return False
        (length,) = PREFIX.unpack(prefix)
        body = self._exact(length + OVERHEAD - PREFIX.size)
        if body is None:
            return False
        self._plain += self._opener.open(prefix + body)
        return True

    def _exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.raw.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def recv(self, n: int) -> bytes:
        if not self._plain and not self._fill():
            return b""
        out = bytes(self._plain[:n])
        del self._plain[:n]
        return out

    def __getattr__(self, name: str):  # settimeout, shutdown, close, fileno: the socket's
        return getattr(self.raw, name)


def sealed_pair() -> tuple[Link, SealedPeer]:
    """(the node's Link, the test's SealedPeer) over a fresh socketpair with fresh keys."""
    ours, theirs = socket.socketpair()
    keys = LinkKeys(os.urandom(32), os.urandom(32))
    return Link(theirs, keys), SealedPeer(ours, keys.swapped())


def linked_pair() -> tuple[Link, Link]:
    """Two Links for two in-process nodes joined by a socketpair."""
    a, b = socket.socketpair()
    keys = LinkKeys(os.urandom(32), os.urandom(32))
    return Link(a, keys), Link(b, keys.swapped())


@contextmanager
def running_pair(npages: int, options: DsmOptions) -> Iterator[tuple[list[DsmNode], list[GuestRam]]]:
    """Nodes 0 and 1 of a 2-node cluster in this process, started, each with npages of guest RAM,
    joined by linked_pair(); closed, with their RAM, on the way out."""
    rams = [GuestRam(npages * PAGE_SIZE), GuestRam(npages * PAGE_SIZE)]
    a, b = linked_pair()
    nodes = [DsmNode(0, 2, rams[0], {1: a}, options), DsmNode(1, 2, rams[1], {0: b}, options)]
    try:
        for n in nodes:
            n.start()
        yield nodes, rams
    finally:
        for n in nodes:
            n.close()
        for r in rams:
            r.close()
