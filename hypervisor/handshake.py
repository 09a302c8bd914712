"""Authenticated, keyed connections: the handshake, concurrent accepting, and the full mesh.

Each pair of nodes shares one TCP connection per channel (DSM, control); the
lower id connects, the higher accepts. Before a socket is used both ends run,
with the connecting side (the initiator) proving first:

1. the acceptor sends only a greeting: magic, protocol version and a fresh
   32-byte nonce. A stranger learns nothing else, ever;
2. the initiator sends its hello (magic, protocol version, own id, the id it
   expects, cluster size, RAM size, page size, protocol options, the channel,
   a fresh nonce) and HMAC-SHA256(secret, "I" || greeting || hello);
3. the acceptor checks that proof (constant time). Wrong: one refusal byte and
   the connection is closed; the caller learnt neither the acceptor's shape
   nor a proof from it, so nothing to guess the secret against offline.
   Right: it sends its own hello and HMAC(secret, "A" || greeting || both
   hellos), which the initiator checks;
4. both compare the hellos field by field (a mismatch is reported on both
   sides naming the values) and exchange a one-byte verdict, so neither side
   starts using a link the other refused.

Then both derive the link's keys (hypervisor/crypto.py): HKDF-SHA256 of the
secret over the whole transcript (both nonces, both hellos), per channel and
per direction. Every later frame is sealed with them.

Accepting never waits on one caller: each accepted connection handshakes in
its own thread, the first byte of a hello must arrive within
FIRST_BYTE_SECONDS and the whole handshake within its timeout, so silent,
slow or garbage-speaking strangers, many at once, cost formation nothing.
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
from typing import Callable, Collection, Sequence

from hypervisor import crypto
from hypervisor.dsm import PAGE_SIZE, PROTOCOL_VERSION, DsmError, DsmOptions

HELLO_MAGIC = b"IVYH"
HELLO = struct.Struct("<4sHHHHQIBBBB32s")
GREETING_MAGIC = b"IVYA"
GREETING = struct.Struct("<4sH2x32s")   # magic, protocol version, the acceptor's nonce
# One secret guards both ports, so the channel is named in the hello (which the
# proofs and the keys cover): a DSM hello sent to a control port is refused, never mistaken.
PURPOSES = {b"dsm": 1, b"control": 2}
_PURPOSE_NAMES = {code: name.decode() for name, code in PURPOSES.items()}
PROOF_SIZE = 32
VERDICT_OK = b"\x01"
VERDICT_REFUSED = b"\x00"
FIRST_BYTE_SECONDS = 1.0      # a caller that says nothing this long after the greeting is dropped
HANDSHAKE_SECONDS = 3.0       # the whole handshake, however slowly a caller trickles it
MAX_HANDSHAKES = 256          # in flight per listener; more callers are closed at once


class HandshakeError(DsmError):
    """A peer connection was refused; the message says why, with the values."""


class _ClosedEarly(HandshakeError):
    """The acceptor closed before its greeting (overloaded by strangers): worth another try."""


@dataclass(frozen=True)
class ClusterShape:
    """What every node of one cluster must agree on."""

    nnodes: int
    ram_size: int
    page_size: int = PAGE_SIZE
    read_ownership: int = 0
    manager: int = 0
    migratory: int = 0

    @classmethod
    def of(cls, nnodes: int, ram_size: int, options: DsmOptions | None = None) -> "ClusterShape":
        options = options or DsmOptions()
        return cls(nnodes, ram_size, PAGE_SIZE, options.read_ownership_code, options.manager_code,
                   int(options.migratory))


@dataclass(frozen=True)
class Session:
    """What a handshake established: the peer's id and the connection's keys."""

    peer: int
    keys: crypto.LinkKeys


@dataclass
class Link:
    """An authenticated connection and its keys, ready for the DSM core or a control Channel."""

    sock: socket.socket
    keys: crypto.LinkKeys

    def close(self) -> None:
        self.sock.close()


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
    migratory: int
    nonce: bytes

    def pack(self) -> bytes:
        return HELLO.pack(HELLO_MAGIC, self.proto, self.nnodes, self.sender, self.target, self.ram_size,
                          self.page_size, self.read_ownership, self.manager, self.purpose, self.migratory,
                          self.nonce)


ANY_NODE = 0xFFFF


def _recv_exact(sock: socket.socket, n: int, deadline: float, who: str, what: str,
                first_byte_by: float | None = None) -> bytes:
    buf = b""
    while len(buf) < n:
        until = deadline if buf or first_byte_by is None else min(deadline, first_byte_by)
        left = until - time.monotonic()
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
                         ("read_ownership", "read_ownership"), ("manager", "manager"),
                         ("migratory", "migratory")):
        a, b = getattr(mine, field), getattr(theirs, field)
        if a != b:
            out.append(f"{label}: this node has {a}, {peer} has {b}")
    return out


def _proof(secret: bytes, purpose: bytes, role: bytes, *transcript: bytes) -> bytes:
    """`purpose` is the channel the initiator's hello names: the proof binds it."""
    return hmac.new(secret, b"ivyvm-hs-v2 " + purpose + b" " + role + b"".join(transcript), hashlib.sha256).digest()


def _unpack_hello(raw: bytes, who: str) -> _Hello:
    if raw[:4] != HELLO_MAGIC:
        raise HandshakeError(f"{who} is not an ivyvm DSM node: it sent {raw[:16]!r} instead of a hello")
    return _Hello(*HELLO.unpack(raw)[1:])


def handshake(sock: socket.socket, *, self_id: int, shape: ClusterShape, secret: bytes, initiator: bool,
              expected: Collection[int], timeout: float = HANDSHAKE_SECONDS, who: str | None = None,
              proto: int = PROTOCOL_VERSION, purpose: bytes = b"dsm") -> Session:
    """Authenticate one connection and key it; returns the peer's id and the keys, or raises HandshakeError.

    The initiator names the one node it expects; the acceptor passes every id
    it still waits for. `proto` is the protocol version this node speaks;
    `purpose` the channel (b"dsm" or b"control"), which both ends must share.
    On error the socket is left open for the caller to close.
    """
    problem = crypto.secret_problem(secret)
    if problem:
        raise HandshakeError(problem)
    if purpose not in PURPOSES:
        raise HandshakeError(f"handshake purpose {purpose!r}: expected one of "
                             f"{', '.join(repr(p) for p in PURPOSES)}")
    target = next(iter(expected)) if initiator and len(expected) == 1 else ANY_NODE
    if who is None:
        who = _peer_name(sock)
        if target != ANY_NODE:
            who = f"node {target}" + (f" at {who}" if who != "the peer" else "")
    deadline = time.monotonic() + timeout
    mine = _Hello(proto, shape.nnodes, self_id, target, shape.ram_size, shape.page_size,
                  shape.read_ownership, shape.manager, PURPOSES[purpose], shape.migratory, os.urandom(32))
    if initiator:
        return _initiate(sock, mine, self_id, expected, secret, deadline, who)
    return _accept(sock, mine, self_id, expected, secret, deadline, who)


def _initiate(sock: socket.socket, mine: _Hello, self_id: int, expected: Collection[int], secret: bytes,
              deadline: float, who: str) -> Session:
    try:
        greeting = _recv_exact(sock, GREETING.size, deadline, who, "greeting")
    except HandshakeError as err:
        if "closed the connection" in str(err) or "failed reading" in str(err):
            raise _ClosedEarly(str(err)) from None
        raise
    if greeting[:4] != GREETING_MAGIC:
        raise HandshakeError(f"{who} is not an ivyvm node: it sent {greeting[:16]!r} instead of a greeting")
    hello = mine.pack()
    _send(sock, hello + _proof(secret, _PURPOSE_NAMES[mine.purpose].encode(), b"I", greeting, hello),
          deadline, who)
    answer = _recv_exact(sock, 1, deadline, who, "answer to this node's proof")
    if answer == VERDICT_REFUSED:
        raise HandshakeError(secrets_differ(who, "it refused this node's proof"))
    if answer != VERDICT_OK:
        raise HandshakeError(f"{who} is not an ivyvm node: it answered the proof with {answer!r}")
    raw = _recv_exact(sock, HELLO.size + PROOF_SIZE, deadline, who, "hello")
    theirs = _unpack_hello(raw[:HELLO.size], who)
    who = f"node {theirs.sender} ({who})" if theirs.sender < mine.nnodes else who
    want = _proof(secret, _PURPOSE_NAMES[mine.purpose].encode(), b"A", greeting, hello, raw[:HELLO.size])
    if not hmac.compare_digest(raw[HELLO.size:], want):
        _send_quietly(sock, VERDICT_REFUSED, deadline, who)
        raise HandshakeError(secrets_differ(who, "its proof does not match this node's secret"))
    problems = _mismatches(mine, theirs, self_id, expected)
    if problems:
        raise HandshakeError(f"refusing {who}: " + "; ".join(problems))
    return _conclude(sock, mine, theirs, secret, greeting + hello + raw[:HELLO.size], True, deadline, who)


def _accept(sock: socket.socket, mine: _Hello, self_id: int, expected: Collection[int], secret: bytes,
            deadline: float, who: str) -> Session:
    greeting = GREETING.pack(GREETING_MAGIC, mine.proto, os.urandom(32))
    _send(sock, greeting, deadline, who)
    raw = _recv_exact(sock, HELLO.size, deadline, who, "hello", first_byte_by=time.monotonic() + FIRST_BYTE_SECONDS)
    theirs = _unpack_hello(raw, who)
    proof = _recv_exact(sock, PROOF_SIZE, deadline, who, "proof of the cluster secret")
    claimed = f"node {theirs.sender} ({who})" if theirs.sender < mine.nnodes else who
    channel = _PURPOSE_NAMES.get(theirs.purpose)
    if channel is None or not hmac.compare_digest(proof, _proof(secret, channel.encode(), b"I", greeting, raw)):
        _send_quietly(sock, VERDICT_REFUSED, deadline, who)
        raise HandshakeError(secrets_differ(claimed, "its proof does not match this node's secret"))
    who = claimed
    # Proven: the caller may see this node's shape, and a bad one is named on both sides.
    mine = _Hello(**{**mine.__dict__, "target": theirs.sender})
    hello = mine.pack()
    _send(sock, VERDICT_OK + hello + _proof(secret, channel.encode(), b"A", greeting, raw, hello), deadline, who)
    problems = _mismatches(mine, theirs, self_id, expected)
    if problems:
        raise HandshakeError(f"refusing {who}: " + "; ".join(problems))
    return _conclude(sock, mine, theirs, secret, greeting + raw + hello, False, deadline, who)


def _conclude(sock: socket.socket, mine: _Hello, theirs: _Hello, secret: bytes, transcript: bytes,
              initiator: bool, deadline: float, who: str) -> Session:
    _send(sock, VERDICT_OK, deadline, who)
    verdict = _recv_exact(sock, 1, deadline, who, "verdict")
    if verdict != VERDICT_OK:
        raise HandshakeError(secrets_differ(who, "it refused this node's proof"))
    sock.settimeout(None)
    keys = crypto.derive_keys(secret, hashlib.sha256(transcript).digest(),
                              _PURPOSE_NAMES[mine.purpose].encode(), initiator)
    return Session(theirs.sender, keys)


def _send_quietly(sock: socket.socket, data: bytes, deadline: float, who: str) -> None:
    try:
        _send(sock, data, deadline, who)
    except HandshakeError:
        pass


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


def listen(host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> socket.socket:
    """A listening socket for a DSM or control port (loopback unless told otherwise).

    The backlog is deep so a crowd of strangers cannot fill it before they are accepted
    (and dropped): a real peer's connection is never left waiting for a SYN retry."""
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


def connect_peer(addr: tuple[str, int], deadline: float, *, self_id: int, peer: int, shape: ClusterShape,
                 secret: bytes, purpose: bytes = b"dsm", who: str | None = None,
                 handshake_timeout: float = HANDSHAKE_SECONDS) -> Link:
    """Connect to node `peer` at `addr` and handshake as the initiator, retrying (until
    `deadline`) while nobody listens or the acceptor sheds connections under a crowd."""
    who = who or f"node {peer} at {addr[0]}:{addr[1]}"
    while True:
        sock = _connect(addr, deadline)
        try:
            session = handshake(sock, self_id=self_id, shape=shape, secret=secret, initiator=True,
                                expected={peer}, timeout=handshake_timeout, who=who, purpose=purpose)
            return Link(sock, session.keys)
        except _ClosedEarly:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
        except BaseException:
            sock.close()
            raise


def accept_peers(listener: socket.socket, *, self_id: int, expected: Collection[int], shape: ClusterShape,
                 secret: bytes, deadline: float, purpose: bytes = b"dsm",
                 handshake_timeout: float = HANDSHAKE_SECONDS, abandon: threading.Event | None = None,
                 refusals: list[str] | None = None, on_proven: Callable[[int], None] | None = None
                 ) -> dict[int, Link]:
    """Accept until every node in `expected` has proven itself, or `deadline`; {peer: Link}.

    Every connection handshakes in a thread of its own, so no caller, however
    silent, slow or numerous, holds up another. A refused connection is closed
    (it may be a stranger) and its reason appended to `refusals`; `on_proven`
    hears each node's id as it is accepted.
    """
    waiting = set(expected)
    links: dict[int, Link] = {}
    lock = threading.Lock()
    done = threading.Event()
    in_flight: set[socket.socket] = set()
    stopping = False

    def serve(conn: socket.socket) -> None:
        try:
            with lock:
                snapshot = set(waiting)
            session = handshake(conn, self_id=self_id, shape=shape, secret=secret, initiator=False,
                                expected=snapshot, timeout=handshake_timeout, purpose=purpose)
        except (HandshakeError, OSError) as err:
            conn.close()
            if refusals is not None and not stopping:
                refusals.append(str(err))
                del refusals[:-16]       # a flood of strangers must not grow it without bound
            return
        finally:
            with lock:
                in_flight.discard(conn)
        with lock:
            if stopping or session.peer not in waiting:
                conn.close()     # a second proven connection from the same node: the first stays
                return
            links[session.peer] = Link(conn, session.keys)
            waiting.discard(session.peer)
            if not waiting:
                done.set()
        if on_proven is not None:
            on_proven(session.peer)

    try:
        while not done.is_set() and time.monotonic() < deadline and not (abandon and abandon.is_set()):
            listener.settimeout(max(0.005, min(0.02, deadline - time.monotonic())))   # notice `done` soon
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with lock:
                if len(in_flight) >= MAX_HANDSHAKES:
                    conn.close()
                    continue
                in_flight.add(conn)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=serve, args=(conn,), name=f"handshake-{self_id}", daemon=True).start()
        if waiting and not done.is_set():
            # A proven peer may be just concluding: give the handshakes in flight their last moment.
            done.wait(0.05)
    finally:
        with lock:
            stopping = True
            for conn in in_flight:
                try:
                    conn.shutdown(socket.SHUT_RDWR)   # their threads end at once, closing them
                except OSError:
                    pass
            if abandon is not None and abandon.is_set():
                for link in links.values():
                    link.close()
                links.clear()
    return dict(links)


def connect_mesh(self_id: int, addresses: Sequence[tuple[str, int]], secret: bytes, shape: ClusterShape, *,
                 listener: socket.socket | None = None, timeout: float = 10.0,
                 handshake_timeout: float = HANDSHAKE_SECONDS) -> dict[int, Link]:
    """Connect node `self_id` to every other node; returns {peer id: authenticated Link}.

    Node i connects to every j > i at addresses[j] and accepts every j < i on
    `listener` (or on a socket bound to addresses[i]). A connection that fails
    its handshake on the accepting side is closed and accepting goes on (it
    may be a stranger); a failure on the connecting side, or a peer missing at
    the deadline, raises HandshakeError and closes every socket opened here.
    """
    nnodes = shape.nnodes
    if len(addresses) != nnodes or not 0 <= self_id < nnodes:
        raise HandshakeError(f"node {self_id}: {len(addresses)} addresses for a cluster of {nnodes}")
    problem = crypto.secret_problem(secret)
    if problem:
        raise HandshakeError(problem)
    deadline = time.monotonic() + timeout
    peers: dict[int, Link] = {}
    accepted: dict[int, Link] = {}
    refusals: list[str] = []
    own_listener = listener is None and self_id > 0
    if own_listener:
        listener = listen(*addresses[self_id])
    abandon = threading.Event()

    def accept_lower() -> None:
        assert listener is not None
        accepted.update(accept_peers(listener, self_id=self_id, expected=range(self_id), shape=shape,
                                     secret=secret, deadline=deadline, handshake_timeout=handshake_timeout,
                                     abandon=abandon, refusals=refusals))

    acceptor = threading.Thread(target=accept_lower, name=f"dsm-accept-{self_id}", daemon=True)
    if self_id > 0:
        acceptor.start()
    try:
        for peer in range(self_id + 1, nnodes):
            peers[peer] = connect_peer(addresses[peer], deadline, self_id=self_id, peer=peer, shape=shape,
                                       secret=secret, handshake_timeout=handshake_timeout)
        if self_id > 0:
            acceptor.join(max(0.0, deadline - time.monotonic()) + 1.0)
        peers.update(accepted)
        missing = sorted(set(range(nnodes)) - {self_id} - set(peers))
        if missing:
            detail = f"; refused: {refusals[-1]}" if refusals else ""
            raise HandshakeError(f"node {self_id}: nodes {missing} did not connect within {timeout:.1f} s{detail}")
        return dict(peers)
    except BaseException:
        abandon.set()
        if self_id > 0:
            acceptor.join()  # returns within 0.1 s once abandoned
        for link in list(peers.values()) + list(accepted.values()):
            link.close()
        raise
    finally:
        if own_listener and listener is not None:
            listener.close()
