"""Sealed records for the control channel, and the link keys of every connection.

The cryptography is OpenSSL's libcrypto, reached through the C helper the DSM
links use (native/aead.c, in the compiled module ``hypervisor._ivy_native``):
AES-256-GCM records whose nonce is an implicit per-direction sequence number,
and HKDF-SHA256 for the keys. This module only wraps it, so the handshake and
the control channel share one implementation with the data plane.

A record is ``len (u32, little-endian) || ciphertext || 16-byte tag``; see
native/aead.h for why a replayed, reordered or dropped record cannot open.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from hypervisor._ivy_native import ffi, lib

KEY_SIZE = int(lib.IVY_AEAD_KEY_SIZE)
TAG_SIZE = int(lib.IVY_AEAD_TAG_SIZE)
PREFIX = struct.Struct("<I")
assert PREFIX.size == int(lib.IVY_SEAL_PREFIX)
OVERHEAD = int(lib.IVY_SEAL_OVERHEAD)
# Below this a secret could be guessed offline from one recorded handshake.
MIN_SECRET_BYTES = 16


class CryptoError(Exception):
    """A record failed to open, or libcrypto refused to work."""


def secret_problem(secret: bytes) -> str | None:
    """Why `secret` cannot be a cluster secret, as the user's one line, or None."""
    if len(secret) < MIN_SECRET_BYTES:
        return (f"the cluster secret is {len(secret)} byte{'' if len(secret) == 1 else 's'}; at least "
                f"{MIN_SECRET_BYTES} are needed "
                f"(e.g. head -c 32 /dev/urandom | base64)")
    return None


def hkdf(secret: bytes, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA256 (RFC 5869) from libcrypto."""
    out = ffi.new("uint8_t[]", length)
    if lib.ivy_hkdf_sha256(secret, len(secret), salt, len(salt), info, len(info), out, length) != 0:
        raise CryptoError("libcrypto refused HKDF-SHA256")
    return bytes(ffi.buffer(out, length))


@dataclass(frozen=True)
class LinkKeys:
    """One connection's two keys, as this end uses them."""

    send: bytes
    recv: bytes

    def __post_init__(self) -> None:
        if len(self.send) != KEY_SIZE or len(self.recv) != KEY_SIZE:
            raise CryptoError(f"link keys must be {KEY_SIZE} bytes each")

    def __repr__(self) -> str:      # never print key bytes into a log line
        return "LinkKeys(...)"

    def swapped(self) -> "LinkKeys":
        """The other end's view of the same connection."""
        return LinkKeys(self.recv, self.send)


def derive_keys(secret: bytes, transcript: bytes, purpose: bytes, initiator: bool) -> LinkKeys:
    """Both directions' keys of one connection, bound to its handshake (both fresh nonces,
    both hellos) and its channel, so no two connections or directions ever share a key."""
    problem = secret_problem(secret)
    if problem:
        raise CryptoError(problem)
    label = b"ivyvm-link-v2 " + purpose
    to_acceptor = hkdf(secret, transcript, label + b" initiator->acceptor")
    to_initiator = hkdf(secret, transcript, label + b" acceptor->initiator")
    return LinkKeys(to_acceptor, to_initiator) if initiator else LinkKeys(to_initiator, to_acceptor)


class _Direction:
    def __init__(self, key: bytes, encrypt: bool):
        self._ctx = ffi.gc(lib.ivy_aead_new(key, int(encrypt)), lib.ivy_aead_free)
        if self._ctx == ffi.NULL:
            raise CryptoError("libcrypto could not set up AES-256-GCM")

    @property
    def seq(self) -> int:
        return int(lib.ivy_aead_seq(self._ctx))


class Sealer(_Direction):
    """Seals one direction's records, in order (callers serialise)."""

    def __init__(self, key: bytes):
        super().__init__(key, True)

    def seal(self, frame: bytes) -> bytes:
        out = ffi.new("uint8_t[]", len(frame) + OVERHEAD)
        if lib.ivy_aead_seal(self._ctx, frame, len(frame), out) != 0:
            raise CryptoError("libcrypto failed to seal a record")
        return bytes(ffi.buffer(out))


class Opener(_Direction):
    """Opens one direction's records, in order."""

    def __init__(self, key: bytes):
        super().__init__(key, False)

    def open(self, record: bytes) -> bytes:
        """The frame inside a whole record (prefix, ciphertext, tag); CryptoError if it does not verify."""
        (length,) = PREFIX.unpack_from(record)
        if len(record) != length + OVERHEAD:
            raise CryptoError(f"record of {len(record)} bytes says its frame has {length}")
        buf = bytearray(record)
        if lib.ivy_aead_open(self._ctx, ffi.from_buffer("uint8_t[]", buf)) != 0:
            raise CryptoError("failed authentication (forged, altered, replayed, reordered or after a dropped one)")
        return bytes(buf[PREFIX.size:PREFIX.size + length])
