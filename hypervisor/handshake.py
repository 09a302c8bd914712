"""Authenticated DSM connections: the hello/HMAC handshake and the full mesh.

Each pair of nodes shares one TCP connection; the lower id connects, the
higher accepts. Before a socket is handed to the C runtime both ends:

1. send a hello (magic, protocol version, own id, the id it expects at the
   other end, cluster size, RAM size, page size, protocol options, the
   channel it is for: the DSM port or the control port, a fresh 32-byte
   nonce) and check the other's field by field, so a mismatch is reported on
   both sides naming the values;
2. send HMAC-SHA256(secret, channel || role || both hellos) and check the other's with a
   constant-time compare, so each side proves it knows the cluster secret and
   a proof can be neither replayed (fresh nonces) nor reflected (roles);
3. exchange a one-byte verdict, so neither side starts using a link the
   other refused.

Every read has a deadline: a silent or garbage-speaking peer costs at most
`timeout` seconds and a one-line HandshakeError, never a hang.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Collection, Sequence

from hypervisor.dsm import PAGE_SIZE, PROTOCOL_VERSION, DsmError, DsmOptions

HELLO_MAGIC = b"IVYH"
HELLO = struct.Struct("<4sHHHHQIBBB1x32s")
# One secret guards both ports, so the channel is named in the hello and in the
# proof: a DSM hello sent to a control port (or back) is refused, never mistaken.
PURPOSES = {b"dsm": 1, b"control": 2}
_PURPOSE_NAMES = {code: name.decode() for name, code in PURPOSES.items()}
PROOF_SIZE = 32
VERDICT_OK = b"\x01"
VERDICT_REFUSED = b"\x00"


class HandshakeError(DsmError):
    """A peer connection was refused; the message says why, with the values."""


@dataclass(frozen=True)
class ClusterShape:
    """What every node of one cluster must agree on."""

    nnodes: int
    ram_size: int
    page_size: int = PAGE_SIZE
    read_ownership: int = 0
    manager: int = 0

    @classmethod
    def of(cls, nnodes: int, ram_size: int, options: DsmOptions | None = None) -> "ClusterShape":
        options = options or DsmOptions()
        return cls(nnodes, ram_size, PAGE_SIZE, options.read_ownership_code, options.manager_code)


@dataclass(frozen=True)
class _Hello:
    proto: int
    nnodes: int
    sender: int
    target: int
    ram_size: int
    page_size: int
    read_ownership: int
    manager: int
    purpose: int
    nonce: bytes

    def pack(self) -> bytes:
        return HELLO.pack(HELLO_MAGIC, self.proto, self.nnodes, self.sender, self.target, self.ram_size,
                          self.page_size, self.read_ownership, self.manager, self.purpose, self.nonce)


ANY_NODE = 0xFFFF


def _recv_exact(sock: socket.socket, n: int, deadline: float, who: str, what: str) -> bytes:
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HandshakeError(f"handshake with {who} timed out waiting for its {what}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            raise HandshakeError(f"handshake with {who} timed out waiting for its {what}") from None
        except OSError as err:
            raise HandshakeError(f"handshake with {who} failed reading its {what}: {err.strerror}") from None
        if not chunk:
            raise HandshakeError(f"{who} closed the connection during the handshake (before its {what}); "
                                 f"it refused this node, see its error")
        buf += chunk
    return buf


def _send(sock: socket.socket, data: bytes, deadline: float, who: str) -> None:
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    try:
        sock.sendall(data)
    except (socket.timeout, OSError) as err:
        raise HandshakeError(f"handshake with {who} failed sending: {getattr(err, 'strerror', None) or err}") from None


def _mismatches(mine: _Hello, theirs: _Hello, self_id: int, expected: Collection[int]) -> list[str]:
    peer = f"node {theirs.sender}"
    out = []
    if theirs.purpose != mine.purpose:
        theirs_name = _PURPOSE_NAMES.get(theirs.purpose, f"unknown channel {theirs.purpose}")
        out.append(f"channel: this is a {_PURPOSE_NAMES[mine.purpose]} port, {peer} is handshaking for its "
                   f"{theirs_name} connection (wrong port?)")
    if theirs.proto != mine.proto:
        out.append(f"protocol version: this node speaks {mine.proto}, {peer} speaks {theirs.proto}")
    if theirs.sender not in expected:
        out.append(f"node id: expected node {' or '.join(map(str, sorted(expected)))}, the peer says it is "
                   f"node {theirs.sender}")
    if theirs.target not in (self_id, ANY_NODE):
        out.append(f"node id: {peer} wanted to reach node {theirs.target}, this is node {self_id}")
    for field, label in (("nnodes", "cluster size"), ("ram_size", "RAM size"), ("page_size", "page size"),
                         ("read_ownership", "read_ownership"), ("manager", "manager")):
        a, b = getattr(mine, field), getattr(theirs, field)
        if a != b:
            out.append(f"{label}: this node has {a}, {peer} has {b}")
    return out


def _proof(secret: bytes, purpose: bytes, role: bytes, hello_initiator: bytes, hello_acceptor: bytes) -> bytes:
    return hmac.new(secret, b"ivyvm-dsm-v1 " + purpose + b" " + role + hello_initiator + hello_acceptor,
                    hashlib.sha256).digest()


def handshake(sock: socket.socket, *, self_id: int, shape: ClusterShape, secret: bytes, initiator: bool,
              expected: Collection[int], timeout: float = 5.0, who: str | None = None,
              proto: int = PROTOCOL_VERSION, purpose: bytes = b"dsm") -> int:
    """Authenticate one connection; returns the peer's node id or raises HandshakeError.

    The initiator names the one node it expects; the acceptor passes every id
    it still waits for. `proto` is the protocol version this node speaks;
    `purpose` the channel (b"dsm" or b"control"), which both ends must share.
    On error the socket is left open for the caller to close.
    """
    if not secret:
        raise HandshakeError("the cluster secret is empty")
    if purpose not in PURPOSES:
        raise HandshakeError(f"handshake purpose {purpose!r}: expected one of "
                             f"{', '.join(repr(p) for p in PURPOSES)}")
    who = who or _peer_name(sock)
    deadline = time.monotonic() + timeout
    target = next(iter(expected)) if initiator and len(expected) == 1 else ANY_NODE
    mine = _Hello(proto, shape.nnodes, self_id, target, shape.ram_size, shape.page_size,
                  shape.read_ownership, shape.manager, PURPOSES[purpose], os.urandom(32))
    if initiator:
        _send(sock, mine.pack(), deadline, who)
    raw = _recv_exact(sock, HELLO.size, deadline, who, "hello")
    if raw[:4] != HELLO_MAGIC:
        raise HandshakeError(f"{who} is not an ivyvm DSM node: it sent {raw[:16]!r} instead of a hello")
    theirs = _Hello(*HELLO.unpack(raw)[1:])
    if not initiator:
        # The acceptor answers with the id it learnt, and answers even a bad
        # hello so the initiator can name the mismatch too.
        mine = _Hello(**{**mine.__dict__, "target": theirs.sender})
        _send(sock, mine.pack(), deadline, who)
    who = f"node {theirs.sender} ({who})" if theirs.sender < shape.nnodes else who
    problems = _mismatches(mine, theirs, self_id, expected)
    if problems:
        raise HandshakeError(f"refusing {who}: " + "; ".join(problems))
    h_init, h_acc = (mine.pack(), raw) if initiator else (raw, mine.pack())
    my_role, their_role = (b"I", b"A") if initiator else (b"A", b"I")
    _send(sock, _proof(secret, purpose, my_role, h_init, h_acc), deadline, who)
    their_proof = _recv_exact(sock, PROOF_SIZE, deadline, who, "proof of the cluster secret")
    if not hmac.compare_digest(their_proof, _proof(secret, purpose, their_role, h_init, h_acc)):
        try:
            _send(sock, VERDICT_REFUSED, deadline, who)
        except HandshakeError:
            pass
        raise HandshakeError(secrets_differ(who, "its proof does not match this node's secret"))
    _send(sock, VERDICT_OK, deadline, who)
    verdict = _recv_exact(sock, 1, deadline, who, "verdict")
    if verdict != VERDICT_OK:
        raise HandshakeError(secrets_differ(who, "it refused this node's proof"))
    sock.settimeout(None)
    return theirs.sender


def secrets_differ(who: str, evidence: str) -> str:
    """The line for a failed proof. Either side may hold the wrong secret and neither can tell
    which, so the line blames neither: it says what was seen and where to look."""
    return (f"authentication failed: {who} and this node hold different cluster secrets ({evidence}); "
            f"check IVYVM_SECRET or secret_file on both")


def _peer_name(sock: socket.socket) -> str:
    try:
        name = sock.getpeername()
    except OSError:
        return "the peer"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else "the peer"


def listen(host: str = "127.0.0.1", port: int = 0, backlog: int = 64) -> socket.socket:
    """A listening socket for the DSM port (loopback unless told otherwise)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise HandshakeError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(backlog)
    return sock


def _connect(addr: tuple[str, int], deadline: float) -> socket.socket:
    """Connect, retrying while the peer is not listening yet."""
    while True:
        try:
            sock = socket.create_connection(addr, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as err:
            if err.errno not in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, None) \
                    and not isinstance(err, socket.timeout):
                raise HandshakeError(f"cannot connect to {addr[0]}:{addr[1]}: {err.strerror}") from None
            if time.monotonic() >= deadline:
                raise HandshakeError(f"cannot connect to {addr[0]}:{addr[1]}: nobody listening "
                                     f"(gave up after retrying)") from None
            time.sleep(0.05)


def connect_mesh(self_id: int, addresses: Sequence[tuple[str, int]], secret: bytes, shape: ClusterShape, *,
                 listener: socket.socket | None = None, timeout: float = 10.0,
                 handshake_timeout: float = 5.0) -> dict[int, socket.socket]:
    """Connect node `self_id` to every other node; returns {peer id: authenticated socket}.

    Node i connects to every j > i at addresses[j] and accepts every j < i on
    `listener` (or on a socket bound to addresses[i]). A connection that fails
    its handshake on the accepting side is closed and accepting goes on (it
    may be a stranger); a failure on the connecting side, or a peer missing at
    the deadline, raises HandshakeError and closes every socket opened here.
    """
    nnodes = shape.nnodes
    if len(addresses) != nnodes or not 0 <= self_id < nnodes:
        raise HandshakeError(f"node {self_id}: {len(addresses)} addresses for a cluster of {nnodes}")
    deadline = time.monotonic() + timeout
    peers: dict[int, socket.socket] = {}
    lock = threading.Lock()
    accept_errors: list[str] = []
    own_listener = listener is None and self_id > 0
    if own_listener:
        listener = listen(*addresses[self_id])

    abandon = threading.Event()

    def accept_lower() -> None:
        assert listener is not None
        waiting = set(range(self_id))
        while waiting and time.monotonic() < deadline and not abandon.is_set():
            listener.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = handshake(conn, self_id=self_id, shape=shape, secret=secret, initiator=False,
                                 expected=waiting, timeout=handshake_timeout)
            except HandshakeError as err:
                conn.close()
                accept_errors.append(str(err))
                continue
            with lock:
                if abandon.is_set():
                    conn.close()
                    return
                peers[peer] = conn
            waiting.discard(peer)

    acceptor = threading.Thread(target=accept_lower, name=f"dsm-accept-{self_id}", daemon=True)
    if self_id > 0:
        acceptor.start()
    try:
        for peer in range(self_id + 1, nnodes):
            sock = _connect(addresses[peer], deadline)
            try:
                handshake(sock, self_id=self_id, shape=shape, secret=secret, initiator=True, expected={peer},
                          timeout=handshake_timeout, who=f"node {peer} at {addresses[peer][0]}:{addresses[peer][1]}")
            except HandshakeError:
                sock.close()
                raise
            with lock:
                peers[peer] = sock
        if self_id > 0:
            acceptor.join(max(0.0, deadline - time.monotonic()) + handshake_timeout)
        missing = sorted(set(range(nnodes)) - {self_id} - set(peers))
        if missing:
            detail = f"; refused: {accept_errors[-1]}" if accept_errors else ""
            raise HandshakeError(f"node {self_id}: nodes {missing} did not connect within {timeout:.1f} s{detail}")
        return dict(peers)
    except BaseException:
        abandon.set()
        with lock:
            for sock in peers.values():
                sock.close()
            peers.clear()
        raise
    finally:
        if self_id > 0:
            acceptor.join()  # returns within 0.2 s once abandoned or done
        if own_listener and listener is not None:
            listener.close()
