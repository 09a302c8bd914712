"""The DSM frame codec (native/wire.h), and bad frames sent into a live node."""
from __future__ import annotations

import socket

import pytest

from hypervisor._ivy_native import ffi, lib
from hypervisor.memory import GuestRam
from hypervisor.dsm import DsmNode
from hypervisor.native_consts import (FailKind, MAX_NODES, PAGE_SIZE, REPLY_DATA, REPLY_MIGRATORY, REPLY_OWNERSHIP,
                                      REPLY_WRITABLE, REQ_WRITE_SOON, WIRE_HDR_SIZE, WIRE_MAGIC, WIRE_PROTO, WireType)
from tests.dsm.frames import HDR, pack
from tests.dsm.sealed_peer import sealed_pair

NPAGES, NNODES = 64, 4
READ, WRITE, REPLY, INVALIDATE, INV_ACK, PING, BYE = (WireType[name] for name in (
    "READ", "WRITE", "REPLY", "INVALIDATE", "INV_ACK", "PING", "BYE"))
DATA, OWNERSHIP, MIGRATORY, WRITABLE = REPLY_DATA, REPLY_OWNERSHIP, REPLY_MIGRATORY, REPLY_WRITABLE


def frame(type_: int = READ, flags: int = 0, payload_len: int | None = None, requester: int = 1, sender: int = 1,
          hops: int = 0, page: int = 3, version: int = 7, copyset: int = 0b11, txid: int = 99,
          magic: int = WIRE_MAGIC, proto: int = WIRE_PROTO, reserved: tuple = (0, 0, 0),
          payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = bytes(i % 256 for i in range(PAGE_SIZE)) if type_ == REPLY and flags & DATA else b""
    if payload_len is None:
        payload_len = len(payload)
    return pack(type_, payload, magic=magic, proto=proto, flags=flags, reserved0=reserved[0], payload_len=payload_len,
                requester=requester, sender=sender, hops=hops, reserved1=reserved[1], reserved2=reserved[2], page=page,
                version=version, copyset=copyset, txid=txid)


_keep: list = []


def decode(buf: bytes, npages: int = NPAGES, nnodes: int = NNODES) -> tuple[int, object]:
    out = ffi.new("struct ivy_wire_frame *")
    cbuf = ffi.from_buffer(buf)
    _keep[:] = [buf, cbuf]  # out.data points into buf: keep it alive until the next decode
    status = lib.ivy_wire_decode(cbuf, len(buf), npages, nnodes, out)
    return status, out


def test_header_is_packed_little_endian() -> None:
    # Offsets are pinned by wire.h's _Static_asserts; frames.HDR is read from that struct.
    assert HDR.size == WIRE_HDR_SIZE
    assert frame()[:4] == b"IVYD"


@pytest.mark.parametrize("type_,flags", [(READ, 0), (READ, REQ_WRITE_SOON), (WRITE, 0), (REPLY, 0), (REPLY, OWNERSHIP),
                                          (REPLY, DATA), (REPLY, DATA | OWNERSHIP),
                                          (REPLY, DATA | OWNERSHIP | MIGRATORY), (REPLY, DATA | OWNERSHIP | WRITABLE),
                                          (INVALIDATE, 0),
                                          (INV_ACK, 0)])
def test_encode_decode_round_trip(type_: int, flags: int) -> None:
    msg = ffi.new("struct ivy_msg *", {"type": type_, "flags": flags, "requester": 2, "sender": 3, "hops": 5,
                                       "page": NPAGES - 1, "version": 2**63 + 1, "copyset": 0b1010,
                                       "txid": 0x1234_5678_9ABC})
    hdr = ffi.new("uint8_t[]", WIRE_HDR_SIZE)
    lib.ivy_wire_encode(hdr, type_, msg)
    raw = bytes(ffi.buffer(hdr))
    payload = b"\xab" * PAGE_SIZE if flags & DATA else b""
    assert raw + payload == frame(type_, flags, requester=2, sender=3, hops=5, page=NPAGES - 1,
                                  version=2**63 + 1, copyset=0b1010, txid=0x1234_5678_9ABC, payload=payload)
    status, out = decode(raw + payload + b"trailing bytes of the next frame")
    assert status == lib.IVY_WIRE_OK
    m = out.msg
    assert (m.type, m.flags, m.requester, m.sender, m.hops, m.page, m.version, m.copyset, m.txid) == \
        (type_, flags, 2, 3, 5, NPAGES - 1, 2**63 + 1, 0b1010, 0x1234_5678_9ABC)
    assert out.frame_len == WIRE_HDR_SIZE + len(payload)
    if flags & DATA:
        assert bytes(ffi.buffer(out.data, PAGE_SIZE)) == payload
    else:
        assert out.data == ffi.NULL


@pytest.mark.parametrize("type_", [PING, BYE])
def test_link_messages_decode(type_: int) -> None:
    status, out = decode(frame(type_, page=0, copyset=0))
    assert status == lib.IVY_WIRE_OK and out.msg.type == type_


BAD_CASES = {
    "bad magic": (frame(magic=0x47455420), lib.IVY_WIRE_BAD_MAGIC),
    "future protocol": (frame(proto=WIRE_PROTO + 1), lib.IVY_WIRE_BAD_PROTO),
    "type zero": (frame(type_=0), lib.IVY_WIRE_BAD_TYPE),
    "type past BYE": (frame(type_=max(WireType) + 1), lib.IVY_WIRE_BAD_TYPE),
    "type 255": (frame(type_=255), lib.IVY_WIRE_BAD_TYPE),
    "reserved byte": (frame(reserved=(1, 0, 0)), lib.IVY_WIRE_BAD_RESERVED),
    "reserved u16": (frame(reserved=(0, 1, 0)), lib.IVY_WIRE_BAD_RESERVED),
    "reserved u32": (frame(reserved=(0, 0, 1 << 31)), lib.IVY_WIRE_BAD_RESERVED),
    "reply flag on a read": (frame(READ, flags=DATA), lib.IVY_WIRE_BAD_FLAGS),
    "write-soon on a write": (frame(WRITE, flags=REQ_WRITE_SOON), lib.IVY_WIRE_BAD_FLAGS),
    "unknown reply flag": (frame(REPLY, flags=REQ_WRITE_SOON), lib.IVY_WIRE_BAD_FLAGS),
    "payload on a request": (frame(WRITE, payload_len=PAGE_SIZE, payload=bytes(PAGE_SIZE)), lib.IVY_WIRE_BAD_LENGTH),
    "data reply short payload": (frame(REPLY, DATA, payload_len=PAGE_SIZE - 1, payload=bytes(PAGE_SIZE - 1)),
                                 lib.IVY_WIRE_BAD_LENGTH),
    "data reply huge length": (frame(REPLY, DATA, payload_len=0xFFFFFFFF, payload=b""), lib.IVY_WIRE_BAD_LENGTH),
    "reply without data has payload": (frame(REPLY, 0, payload_len=PAGE_SIZE, payload=bytes(PAGE_SIZE)),
                                       lib.IVY_WIRE_BAD_LENGTH),
    "page == npages": (frame(page=NPAGES), lib.IVY_WIRE_BAD_PAGE),
    "page 2**64-1": (frame(page=2**64 - 1), lib.IVY_WIRE_BAD_PAGE),
    "page on a ping": (frame(PING, page=1, copyset=0), lib.IVY_WIRE_BAD_PAGE),
    "requester == nnodes": (frame(requester=NNODES), lib.IVY_WIRE_BAD_NODE),
    "sender 65535": (frame(sender=0xFFFF), lib.IVY_WIRE_BAD_NODE),
    "copyset beyond cluster": (frame(copyset=1 << NNODES), lib.IVY_WIRE_BAD_COPYSET),
    "copyset top bit": (frame(copyset=1 << 63), lib.IVY_WIRE_BAD_COPYSET),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_malformed_field_is_rejected(name: str) -> None:
    raw, expected = BAD_CASES[name]
    status, _ = decode(raw)
    assert status == expected, f"{name}: got {ffi.string(lib.ivy_wire_status_name(status)).decode()}"
    assert ffi.string(lib.ivy_wire_status_name(status)).decode() not in ("ok", "unknown status")


@pytest.mark.parametrize("cut", [0, 1, 3, 4, WIRE_HDR_SIZE - 1])
def test_partial_header_asks_for_more(cut: int) -> None:
    assert decode(frame()[:cut])[0] == lib.IVY_WIRE_SHORT


def test_partial_payload_asks_for_more() -> None:
    raw = frame(REPLY, DATA)
    assert decode(raw[:-1])[0] == lib.IVY_WIRE_SHORT
    assert decode(raw)[0] == lib.IVY_WIRE_OK


def test_all_64_nodes_copyset_allowed() -> None:
    last = MAX_NODES - 1
    assert decode(frame(copyset=2**MAX_NODES - 1, requester=last, sender=last), nnodes=MAX_NODES)[0] == lib.IVY_WIRE_OK


# ---- bad frames into a live node: it stops with a clear error and changes nothing -----------------

@pytest.fixture
def node1_of_2():
    """Node 1 of a 2-node cluster whose node 0 is this test, speaking raw frames on a socketpair."""
    ram = GuestRam(NPAGES * PAGE_SIZE)
    theirs, ours = sealed_pair()
    node = DsmNode(1, 2, ram, {0: theirs})
    node.start()
    yield node, ours, ram
    node.close()
    ours.close()
    ram.close()


def wait_error(node: DsmNode) -> str:
    assert node.wait_failed(5.0), "node did not fail"
    assert node.error is not None
    return node.error


def vmm_page(ram: GuestRam, page: int) -> bytes:
    return bytes(ffi.buffer(ffi.cast("char *", ram.vmm_addr + page * PAGE_SIZE), PAGE_SIZE))


@pytest.mark.parametrize("raw,words", [
    ((b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").ljust(WIRE_HDR_SIZE, b"\0"), "bad magic"),
    (frame(proto=9, requester=0, sender=0), "unsupported protocol version"),
    (frame(type_=42, requester=0, sender=0), "unknown message type"),
    (frame(page=NPAGES + 5, requester=0, sender=0), "page number out of range"),
    (frame(sender=1, requester=0), "claiming to be node 1"),
    (frame(REPLY, DATA | OWNERSHIP, requester=1, sender=0, page=5, txid=77), "did not ask for"),
    (frame(INV_ACK, requester=1, sender=0, page=5), "acknowledgement nobody waits for"),
])
def test_bad_frame_stops_node_and_changes_nothing(node1_of_2, raw: bytes, words: str) -> None:
    node, ours, ram = node1_of_2
    before = vmm_page(ram, 5)
    ours.sendall(raw)
    error = wait_error(node)
    assert "node 0" in error and words in error, error
    failure = node.failure
    assert failure is not None and failure.peer == 0
    # A message the engine refuses for the page's state is an ivyvm bug; any other bad frame is the peer's.
    misfit = words in ("did not ask for", "acknowledgement nobody waits for")
    assert failure.kind == (FailKind.PROTOCOL if misfit else FailKind.PEER_GARBAGE), failure
    assert "\n" not in error
    assert vmm_page(ram, 5) == before, "a rejected frame wrote page bytes"
    assert all(node.access(p) == 0 for p in range(NPAGES))
    node.stop()
    ours.settimeout(5.0)
    assert ours.recv(1 << 16) == b"", "the node kept the link to a peer speaking garbage open"


def test_peer_eof_without_bye_names_the_peer(node1_of_2) -> None:
    node, ours, _ = node1_of_2
    ours.shutdown(socket.SHUT_WR)
    error = wait_error(node)
    assert "node 0 closed the connection without BYE while waiting for its heartbeats only" in error, error
    assert node.failure is not None and node.failure.kind == FailKind.PEER_LOST and node.failure.awaited == 0


def test_bye_then_eof_is_clean(node1_of_2) -> None:
    node, ours, _ = node1_of_2
    ours.sendall(frame(BYE, page=0, copyset=0, requester=0, sender=0))
    ours.shutdown(socket.SHUT_WR)
    assert not node.wait_failed(0.5), node.error
    assert node.stats()["messages_received"]["BYE"] == 1
