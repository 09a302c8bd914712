"""The authenticated handshake and the mesh: refusals are clear, on both sides, and never hang."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from hypervisor import handshake as hs
from hypervisor.handshake import ClusterShape, HandshakeError, connect_mesh, handshake, listen

SECRET = b"correct horse battery staple 1234"
SHAPE = ClusterShape(nnodes=2, ram_size=1 << 20)


def run_pair(initiator_kw: dict[str, Any], acceptor_kw: dict[str, Any], timeout: float = 3.0):
    """Handshake over a loopback socket pair; returns (initiator result, acceptor result), exceptions included."""
    a, b = socket.socketpair()
    results: list[Any] = [None, None]

    def side(i: int, sock: socket.socket, kw: dict[str, Any]) -> None:
        try:
            results[i] = handshake(sock, timeout=timeout, **kw).peer
        except Exception as err:  # the test inspects it
            results[i] = err

    init = {"self_id": 0, "shape": SHAPE, "secret": SECRET, "initiator": True, "expected": {1}, **initiator_kw}
    acc = {"self_id": 1, "shape": SHAPE, "secret": SECRET, "initiator": False, "expected": {0}, **acceptor_kw}
    threads = [threading.Thread(target=side, args=(0, a, init)), threading.Thread(target=side, args=(1, b, acc))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 2)
    a.close()
    b.close()
    return results


def assert_refused(result: Any, *words: str) -> str:
    assert isinstance(result, HandshakeError), f"expected a refusal, got {result!r}"
    msg = str(result)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_matching_nodes_connect() -> None:
    assert run_pair({}, {}) == [1, 0]


def test_wrong_secret_refused_on_both_sides() -> None:
    r = run_pair({}, {"secret": b"not the cluster secret at all!!"})
    # Node 1 holds the wrong secret: neither side can tell which one is wrong, so neither blames the other.
    for result, peer in ((r[0], "node 1"), (r[1], "node 0")):
        line = assert_refused(result, "authentication failed", peer, "hold different cluster secrets")
        assert "does not know" not in line, line


def test_protocol_version_mismatch_named() -> None:
    mine, other = hs.PROTOCOL_VERSION, hs.PROTOCOL_VERSION + 1
    r = run_pair({}, {"proto": other})
    assert_refused(r[0], "protocol version", f"this node speaks {mine}", f"node 1 speaks {other}")
    assert_refused(r[1], "protocol version", f"this node speaks {other}", f"node 0 speaks {mine}")


def test_ram_size_mismatch_names_both_sizes() -> None:
    r = run_pair({}, {"shape": ClusterShape(2, 2 << 20)})
    assert_refused(r[0], "RAM size", str(1 << 20), str(2 << 20))
    assert_refused(r[1], "RAM size", str(2 << 20), str(1 << 20))


def test_cluster_size_mismatch() -> None:
    r = run_pair({}, {"shape": ClusterShape(3, 1 << 20)})
    assert_refused(r[0], "cluster size: this node has 2, node 1 has 3")
    assert_refused(r[1], "cluster size: this node has 3, node 0 has 2")


def test_protocol_option_mismatch() -> None:
    r = run_pair({"shape": ClusterShape(2, 1 << 20, manager=1)}, {})
    assert_refused(r[0], "manager")
    assert_refused(r[1], "manager")


def test_migratory_mismatch_refused_on_both_sides() -> None:
    r = run_pair({"shape": ClusterShape(2, 1 << 20, migratory=1)}, {})
    assert_refused(r[0], "migratory: this node has 1")
    assert_refused(r[1], "migratory: this node has 0")


def test_wrong_node_id() -> None:
    r = run_pair({"expected": {2}, "shape": ClusterShape(3, 1 << 20)}, {"shape": ClusterShape(3, 1 << 20)})
    assert_refused(r[0], "expected node 2", "node 1")
    assert_refused(r[1], "wanted to reach node 2", "this is node 1")


def test_garbage_peer_refused_quickly() -> None:
    a, b = socket.socketpair()
    b.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + b"x" * 100)
    t0 = time.monotonic()
    with pytest.raises(HandshakeError) as err:
        handshake(a, self_id=1, shape=SHAPE, secret=SECRET, initiator=False, expected={0}, timeout=3)
    assert time.monotonic() - t0 < 1.0
    assert_refused(err.value, "not an ivyvm DSM node", "SSH-2.0")
    a.close()
    b.close()


def test_silent_peer_times_out() -> None:
    a, b = socket.socketpair()
    t0 = time.monotonic()
    with pytest.raises(HandshakeError) as err:
        handshake(a, self_id=0, shape=SHAPE, secret=SECRET, initiator=True, expected={1}, timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 2.0
    assert_refused(err.value, "timed out", "greeting")
    a.close()
    b.close()


def test_peer_closing_mid_handshake() -> None:
    a, b = socket.socketpair()
    b.close()
    with pytest.raises(HandshakeError) as err:
        handshake(a, self_id=0, shape=SHAPE, secret=SECRET, initiator=True, expected={1}, timeout=1)
    assert_refused(err.value)
    a.close()


def test_empty_secret_refused() -> None:
    a, b = socket.socketpair()
    with pytest.raises(HandshakeError, match="secret is 0 bytes; at least 16 are needed"):
        handshake(a, self_id=0, shape=SHAPE, secret=b"", initiator=True, expected={1})
    with pytest.raises(HandshakeError, match="secret is 15 bytes; at least 16 are needed"):
        handshake(a, self_id=0, shape=SHAPE, secret=b"x" * 15, initiator=False, expected={1})
    a.close()
    b.close()


def mesh(n: int, secrets: list[bytes], shapes: list[ClusterShape] | None = None, timeout: float = 5.0):
    listeners = [listen() for _ in range(n)]
    addrs = [l.getsockname() for l in listeners]
    results: list[Any] = [None] * n

    def node(i: int) -> None:
        try:
            results[i] = connect_mesh(i, addrs, secrets[i], (shapes or [ClusterShape(n, 1 << 20)] * n)[i],
                                      listener=listeners[i], timeout=timeout, handshake_timeout=1.0)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=node, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    for l in listeners:
        l.close()
    return results


def test_mesh_of_four_connects_every_pair() -> None:
    results = mesh(4, [SECRET] * 4)
    try:
        for i, peers in enumerate(results):
            assert isinstance(peers, dict), peers
            assert sorted(peers) == [j for j in range(4) if j != i]
        # Each link really joins the two named nodes, with keys that match end to end.
        results[0][3].sock.sendall(b"hi 3")
        assert results[3][0].sock.recv(4) == b"hi 3"
        for i, peers in enumerate(results):
            for j, link in peers.items():
                assert link.keys.send == results[j][i].keys.recv
    finally:
        for peers in results:
            if isinstance(peers, dict):
                for s in peers.values():
                    s.close()


def test_mesh_with_one_wrong_secret_fails_clearly() -> None:
    results = mesh(3, [SECRET, SECRET, b"an intruder's guess of a secret"], timeout=2.0)
    try:
        assert isinstance(results[2], HandshakeError)
        assert "authentication failed" in str(results[2])
        for r in results[:2]:
            assert isinstance(r, HandshakeError), r
    finally:
        for peers in results:
            if isinstance(peers, dict):
                for s in peers.values():
                    s.close()


def test_stranger_on_the_port_does_not_stop_the_mesh() -> None:
    listeners = [listen() for _ in range(2)]
    addrs = [l.getsockname() for l in listeners]
    stranger = socket.create_connection(addrs[1])
    stranger.sendall(b"\x16\x03\x01 definitely TLS" + b"\0" * 64)
    out: list[Any] = [None]

    def node1() -> None:
        out[0] = connect_mesh(1, addrs, SECRET, ClusterShape(2, 1 << 20), listener=listeners[1], timeout=5.0)

    t = threading.Thread(target=node1)
    t.start()
    time.sleep(0.2)
    peers0 = connect_mesh(0, addrs, SECRET, ClusterShape(2, 1 << 20), listener=listeners[0], timeout=5.0)
    t.join()
    try:
        assert sorted(peers0) == [1] and sorted(out[0]) == [0]
        stranger.settimeout(2)
        told = b""
        try:
            while chunk := stranger.recv(1000):
                told += chunk
        except ConnectionResetError:  # closed with its garbage unread
            pass
        # The greeting (magic, version, a fresh nonce) and nothing else: no shape, no proof.
        assert len(told) == hs.GREETING.size and told[:4] == hs.GREETING_MAGIC, told
    finally:
        stranger.close()
        for s in list(peers0.values()) + list(out[0].values()):
            s.close()
        for l in listeners:
            l.close()


def test_nobody_listening_is_reported() -> None:
    dead = listen()
    addr = dead.getsockname()
    dead.close()
    with pytest.raises(HandshakeError, match="nobody listening"):
        connect_mesh(0, [("127.0.0.1", 1), addr], SECRET, ClusterShape(2, 1 << 20), timeout=0.5)


def test_control_channel_handshake_succeeds() -> None:
    assert run_pair({"purpose": b"control"}, {"purpose": b"control"}) == [1, 0]


def test_both_ends_derive_matching_keys_distinct_per_direction_channel_and_connection() -> None:
    def keys(purpose: bytes) -> list[Any]:
        a, b = socket.socketpair()
        out: list[Any] = [None, None]
        def side(i: int, sock: socket.socket, initiator: bool) -> None:
            out[i] = handshake(sock, self_id=i, shape=SHAPE, secret=SECRET, initiator=initiator,
                               expected={1 - i}, purpose=purpose).keys
        ts = [threading.Thread(target=side, args=(0, a, True)), threading.Thread(target=side, args=(1, b, False))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(5)
        a.close()
        b.close()
        return out
    first, again, control = keys(b"dsm"), keys(b"dsm"), keys(b"control")
    assert first[0].send == first[1].recv and first[0].recv == first[1].send
    assert first[0].send != first[0].recv
    every = {k for pair in (first, again, control) for k in (pair[0].send, pair[0].recv)}
    assert len(every) == 6, "a key was shared between directions, connections or channels"


def test_dsm_hello_at_a_control_port_refused_on_both_sides() -> None:
    """One secret guards both ports: the channel named in the hello tells them apart."""
    r = run_pair({"purpose": b"dsm"}, {"purpose": b"control"})
    assert_refused(r[0], "channel: this is a dsm port, node 1 is handshaking for its control connection")
    assert_refused(r[1], "channel: this is a control port, node 0 is handshaking for its dsm connection")


def test_proof_is_bound_to_the_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with the hello fields agreeing, a proof made for the other channel is refused."""
    real_proof = hs._proof
    monkeypatch.setattr(hs, "_proof", lambda secret, purpose, *rest: real_proof(
        secret, b"control" if threading.current_thread().name == "forger" else purpose, *rest))
    a, b = socket.socketpair()
    results: list[Any] = [None, None]

    def side(i: int, sock: socket.socket, kw: dict[str, Any]) -> None:
        try:
            results[i] = handshake(sock, shape=SHAPE, secret=SECRET, timeout=3.0, **kw)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=side, name="forger", args=(0, a, {"self_id": 0, "initiator": True,
                                                                          "expected": {1}})),
               threading.Thread(target=side, args=(1, b, {"self_id": 1, "initiator": False, "expected": {0}}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    a.close()
    b.close()
    assert_refused(results[1], "authentication failed", "cluster secret")
    assert isinstance(results[0], HandshakeError)


def test_unknown_purpose_is_a_clear_error() -> None:
    a, b = socket.socketpair()
    with pytest.raises(HandshakeError, match=r"handshake purpose b'vnc': expected one of b'dsm', b'control'"):
        handshake(a, self_id=0, shape=SHAPE, secret=SECRET, initiator=True, expected={1}, purpose=b"vnc")
    a.close()
    b.close()
