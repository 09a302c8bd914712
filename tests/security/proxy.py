"""An on-path attacker for the tests: a TCP relay between two nodes that passes the
handshake through untouched, then tampers with the sealed records that follow.

Each direction is parsed as the nodes frame it: first the handshake's fixed
byte counts (hypervisor/handshake.py), then records of ``len (u32) || len
bytes || 16-byte tag`` (native/aead.h). A Tamper decides, record by record,
what goes on: the record itself, nothing (drop), something else or more.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Callable

from hypervisor import handshake as hs
from hypervisor.crypto import OVERHEAD, PREFIX

# Bytes of handshake each way: what the initiator sends, what the acceptor sends.
HANDSHAKE_FROM_INITIATOR = hs.HELLO.size + hs.PROOF_SIZE + 1
HANDSHAKE_FROM_ACCEPTOR = hs.GREETING.size + 1 + hs.HELLO.size + hs.PROOF_SIZE + 1

Tamper = Callable[[int, bytes], list[bytes]]     # (index of the record in its direction, record) -> to send


def passthrough(index: int, record: bytes) -> list[bytes]:
    return [record]


def flip(at: int, where: int = 0, only_len: int | None = None) -> Tamper:
    """Flip one bit `where` bytes into the ciphertext of the first record at or after `at`
    (of frame length `only_len`, if given)."""
    state = {"done": False}

    def tamper(index: int, record: bytes) -> list[bytes]:
        (length,) = PREFIX.unpack_from(record)
        if state["done"] or index < at or (only_len is not None and length != only_len):
            return [record]
        state["done"] = True
        i = PREFIX.size + where
        return [record[:i] + bytes([record[i] ^ 0x01]) + record[i + 1:]]
    return tamper


def inject(at: int, forged: bytes) -> Tamper:
    """Insert `forged` bytes just before record `at`."""
    return lambda index, record: [forged, record] if index == at else [record]


def replay(at: int) -> Tamper:
    """Send record at-1 a second time, before record `at`."""
    seen: dict[int, bytes] = {}

    def tamper(index: int, record: bytes) -> list[bytes]:
        seen[index] = record
        return [seen[at - 1], record] if index == at else [record]
    return tamper


def reorder(at: int) -> Tamper:
    """Swap records `at` and at+1."""
    held: list[bytes] = []

    def tamper(index: int, record: bytes) -> list[bytes]:
        if index == at:
            held.append(record)
            return []
        if index == at + 1:
            return [record, *held]
        return [record]
    return tamper


def drop(at: int) -> Tamper:
    return lambda index, record: [] if index == at else [record]


def forged_record(frame_len: int) -> bytes:
    """A record of the right shape that nobody sealed."""
    return PREFIX.pack(frame_len) + os.urandom(frame_len + OVERHEAD - PREFIX.size)


class Proxy:
    """Listens on 127.0.0.1; relays the first connection to `target`, tampering as told.

    `to_acceptor` applies to what the connecting node sends, `to_initiator` to
    the answers. `captured` keeps every byte relayed, both ways.
    """

    def __init__(self, target: tuple[str, int], to_acceptor: Tamper = passthrough,
                 to_initiator: Tamper = passthrough):
        self.target = target
        self.tampers = (to_acceptor, to_initiator)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self.records = [0, 0]
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(self.target)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socks += [client, server]
        for direction, (src, dst, skip) in enumerate(((client, server, HANDSHAKE_FROM_INITIATOR),
                                                      (server, client, HANDSHAKE_FROM_ACCEPTOR))):
            threading.Thread(target=self._relay, args=(direction, src, dst, skip), daemon=True).start()

    def _relay(self, direction: int, src: socket.socket, dst: socket.socket, skip: int) -> None:
        try:
            while skip:      # the handshake, passed on as it comes (each side waits for the other's)
                chunk = src.recv(skip)
                if not chunk:
                    raise EOFError
                with self._lock:
                    self.captured += chunk
                dst.sendall(chunk)
                skip -= len(chunk)
            index = 0
            while True:
                prefix = self._exact(src, PREFIX.size)
                (length,) = PREFIX.unpack(prefix)
                record = prefix + self._exact(src, length + OVERHEAD - PREFIX.size)
                for piece in self.tampers[direction](index, record):
                    dst.sendall(piece)
                index += 1
                self.records[direction] = index
        except (OSError, EOFError):
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _exact(self, sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        with self._lock:
            self.captured += buf
        return buf

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()
