"""Raw DSM frames, for the tests that talk to the codec or to a live node byte by byte.

The header layout is read from the C struct (wire.h, struct ivy_wire_hdr,
pinned there by _Static_assert), so no offset or size is restated here.
"""
from __future__ import annotations

import socket
import struct
from typing import Any

from hypervisor._ivy_native import ffi
from hypervisor.native_consts import WIRE_MAGIC, WIRE_PROTO, WireType

_FORMAT = {1: "B", 2: "H", 4: "I", 8: "Q"}
_HDR_FIELDS = ffi.typeof("struct ivy_wire_hdr").fields
FIELDS = tuple(name for name, _ in _HDR_FIELDS)
HDR = struct.Struct("<" + "".join(_FORMAT[ffi.sizeof(field.type)] for _, field in _HDR_FIELDS))
# Packed with no gaps: the little-endian struct above is then the C layout.
assert HDR.size == ffi.sizeof("struct ivy_wire_hdr")
assert all(field.offset == HDR.size - struct.calcsize("<" + HDR.format[1:][i:]) for i, (_, field) in
           enumerate(_HDR_FIELDS))


def pack(type_: int, payload: bytes = b"", **fields: int) -> bytes:
    """A header (zero for every field not given; magic, proto and payload_len filled in) and its payload."""
    values = {name: 0 for name in FIELDS} | {"magic": WIRE_MAGIC, "proto": WIRE_PROTO, "type": type_,
                                             "payload_len": len(payload)} | fields
    unknown = set(values) - set(FIELDS)
    assert not unknown, f"not header fields: {sorted(unknown)}"
    return HDR.pack(*(values[name] for name in FIELDS)) + payload


def unpack(buf: bytes) -> dict[str, Any]:
    """The header fields at the start of buf, by name."""
    return dict(zip(FIELDS, HDR.unpack(buf[:HDR.size])))


def recv(sock: socket.socket, skip_pings: bool = True) -> dict[str, Any]:
    """The next frame from a node (header fields and its payload as "data")."""
    while True:
        hdr = _recv_exact(sock, HDR.size)
        f = unpack(hdr)
        f["data"] = _recv_exact(sock, f["payload_len"])
        if not (skip_pings and f["type"] == WireType.PING):
            return f


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "node closed the link"
        buf += chunk
    return buf
