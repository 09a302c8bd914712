"""Fuzz the frame decoder: no input crashes it, and whatever it accepts is a well-formed frame."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypervisor._ivy_native import ffi, lib
from hypervisor.native_consts import (ENGINE_TYPES, PAGE_SIZE, REPLY_DATA, REPLY_MIGRATORY, REPLY_OWNERSHIP,
                                      REPLY_WRITABLE, REQ_WRITE_SOON, WireStatus, WireType)
from tests.dsm.frames import HDR, unpack
from tests.dsm.sealed_peer import sealed_pair
NPAGES, NNODES = 1000, 5
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(buf: bytes, npages: int = NPAGES, nnodes: int = NNODES):
    out = ffi.new("struct ivy_wire_frame *")
    # Copy into an exact-size C buffer so any over-read would touch memory ASan/valgrind can see.
    cbuf = ffi.new("uint8_t[]", max(1, len(buf)))
    ffi.memmove(cbuf, buf, len(buf))
    return lib.ivy_wire_decode(cbuf, len(buf), npages, nnodes, out), out


def check_accepted(buf: bytes, out) -> None:
    f = unpack(buf)
    m = out.msg
    assert f["magic"] == lib.IVY_WIRE_MAGIC and f["proto"] == lib.IVY_WIRE_PROTO
    assert f["type"] in set(WireType) and (f["reserved0"], f["reserved1"], f["reserved2"]) == (0, 0, 0)
    assert (m.type, m.flags, m.requester, m.sender, m.hops, m.page, m.version, m.copyset, m.txid) == \
        tuple(f[k] for k in ("type", "flags", "requester", "sender", "hops", "page", "version", "copyset", "txid"))
    assert f["requester"] < NNODES and f["sender"] < NNODES and f["copyset"] < (1 << NNODES)
    assert f["page"] < NPAGES if f["type"] in ENGINE_TYPES else f["page"] == 0
    assert out.frame_len == HDR.size + f["payload_len"] <= len(buf)
    reply = f["type"] == WireType.REPLY
    assert f["payload_len"] == (PAGE_SIZE if reply and f["flags"] & REPLY_DATA else 0)
    reply_flags = REPLY_DATA | REPLY_OWNERSHIP | REPLY_MIGRATORY | REPLY_WRITABLE
    assert f["flags"] == 0 or (reply and f["flags"] & ~reply_flags == 0) or \
        (f["type"] == WireType.READ and f["flags"] == REQ_WRITE_SOON)


@FUZZ
@given(st.binary(max_size=4300))
def test_random_bytes_never_crash(buf: bytes) -> None:
    status, out = decode(buf)
    assert status in set(WireStatus)
    if status == lib.IVY_WIRE_OK:
        check_accepted(buf, out)


header_fields = st.tuples(
    st.sampled_from([lib.IVY_WIRE_MAGIC, lib.IVY_WIRE_MAGIC, 0, 0xFFFFFFFF]),
    st.sampled_from([lib.IVY_WIRE_PROTO, lib.IVY_WIRE_PROTO, 0, lib.IVY_WIRE_PROTO + 1, 255]),
    st.integers(0, max(WireType) + 2), st.integers(0, 2 * (REPLY_WRITABLE | REQ_WRITE_SOON) + 1),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from([0, 0, PAGE_SIZE, PAGE_SIZE - 1, PAGE_SIZE + 1, 0xFFFFFFFF]),
    st.integers(0, NNODES + 2), st.integers(0, NNODES + 2), st.integers(0, 0xFFFF), st.sampled_from([0, 0, 9]),
    st.sampled_from([0, 0, 1]), st.sampled_from([0, 1, NPAGES - 1, NPAGES, 2**64 - 1]),
    st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1) | st.integers(0, 31), st.integers(0, 2**64 - 1),
)


@FUZZ
@given(header_fields, st.binary(max_size=4200))
def test_near_valid_headers_are_checked_field_by_field(fields, tail: bytes) -> None:
    buf = HDR.pack(*fields) + tail
    status, out = decode(buf)
    if status == lib.IVY_WIRE_OK:
        check_accepted(buf, out)
    else:
        assert status in set(WireStatus) - {WireStatus.OK}


@FUZZ
@given(st.binary(min_size=1, max_size=300), st.integers(1, 64), st.integers(0, 2**40))
def test_any_cluster_shape_is_safe(buf: bytes, nnodes: int, npages: int) -> None:
    status, _ = decode(buf, npages, nnodes)
    assert status in set(WireStatus)


# ---- a live node fed plausible-but-wrong frames must fail cleanly, never abort ---------------------

import socket  # noqa: E402
import threading  # noqa: E402

from hypervisor._ivy_testkit import lib as kit  # noqa: E402
from hypervisor.dsm import DsmNode  # noqa: E402
from tests.dsm.frames import pack  # noqa: E402
from hypervisor.memory import GuestRam  # noqa: E402

LIVE_PAGES = 8
frames = st.lists(st.tuples(st.sampled_from(list(WireType)), st.sampled_from([0, REPLY_DATA, REPLY_OWNERSHIP,
                                                                              REPLY_DATA | REPLY_OWNERSHIP,
                                                                              REPLY_OWNERSHIP | REPLY_WRITABLE,
                                                                              REQ_WRITE_SOON]), st.integers(0, 1),
                            st.integers(0, 1), st.integers(0, LIVE_PAGES - 1), st.integers(0, 3),
                            st.integers(0, 3), st.sampled_from([0, 1, (1 << 48) | 1, (1 << 48) | 2])),
                  min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.booleans())
def test_live_node_survives_wrong_frames(script, faulting: bool) -> None:
    ram = GuestRam(LIVE_PAGES * PAGE_SIZE)
    theirs, ours = sealed_pair()
    node = DsmNode(1, 2, ram, {0: theirs})
    node.start()
    reader = threading.Thread(target=kit.ivy_test_load64, args=(ram.guest_addr + PAGE_SIZE,), daemon=True)
    try:
        if faulting:  # an outstanding request on page 1 (txid (1<<48)|1), so some replies fit
            reader.start()
            ours.recv(HDR.size)
        for type_, flags, req, snd, page, version, copyset, txid in script:
            reply = type_ == WireType.REPLY
            payload = b"\x5a" * PAGE_SIZE if reply and flags & REPLY_DATA else b""
            page = page if type_ in ENGINE_TYPES else 0
            fits = reply or (type_ == WireType.READ and flags == REQ_WRITE_SOON)
            ours.sendall(pack(type_, payload, flags=flags if fits else 0, requester=req, sender=snd, page=page,
                              version=version, copyset=copyset, txid=txid))
        node.wait_failed(0.05)
        error = node.error
        assert error is None or ("node 0" in error and "\n" not in error)
    finally:
        node.close()  # releases the faulting thread too
        if faulting:
            reader.join(5)
            assert not reader.is_alive()
        ours.close()
        ram.close()
