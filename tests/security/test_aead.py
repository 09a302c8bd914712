"""The sealing helper (native/aead.c through hypervisor/crypto.py): libcrypto's AES-256-GCM and
HKDF-SHA256, implicit sequence numbers, and the 16-byte secret rule on every path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypervisor import crypto
from hypervisor.crypto import OVERHEAD, PREFIX, CryptoError, LinkKeys, Opener, Sealer
from tests.conftest import ROOT, guest_elf


def test_hkdf_is_rfc5869_sha256() -> None:
    # RFC 5869, appendix A.1 and A.3.
    okm = crypto.hkdf(bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
    okm = crypto.hkdf(bytes([0x0B] * 22), b"", b"", 42)
    assert okm.hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                         "9d201395faa4b61a96c8")


def test_round_trip_in_order_and_the_page_is_not_on_the_wire() -> None:
    key = os.urandom(32)
    sealer, opener = Sealer(key), Opener(key)
    page = os.urandom(4096)
    records = [sealer.seal(page), sealer.seal(b"x" * 56), sealer.seal(b"")]
    assert [len(r) for r in records] == [4096 + OVERHEAD, 56 + OVERHEAD, OVERHEAD]
    assert PREFIX.unpack_from(records[0]) == (4096,)
    assert page[:64] not in records[0] and page[2000:2064] not in records[0]
    assert [opener.open(r) for r in records] == [page, b"x" * 56, b""]
    assert sealer.seq == opener.seq == 3


@pytest.mark.parametrize("where", ["prefix", "first ciphertext byte", "last ciphertext byte", "tag"])
def test_any_flipped_bit_fails(where: str) -> None:
    key = os.urandom(32)
    record = bytearray(Sealer(key).seal(os.urandom(100)))
    index = {"prefix": 0, "first ciphertext byte": PREFIX.size, "last ciphertext byte": PREFIX.size + 99,
             "tag": len(record) - 1}[where]
    record[index] ^= 0x80
    with pytest.raises(CryptoError):
        Opener(key).open(bytes(record))


def test_replayed_reordered_and_dropped_records_fail() -> None:
    key = os.urandom(32)
    sealer = Sealer(key)
    a, b, c = (sealer.seal(bytes([i]) * 56) for i in range(3))
    replayed = Opener(key)
    replayed.open(a)
    with pytest.raises(CryptoError):
        replayed.open(a)
    with pytest.raises(CryptoError):
        Opener(key).open(b)                        # reordered, or a dropped first
    skipped = Opener(key)
    skipped.open(a)
    with pytest.raises(CryptoError):
        skipped.open(c)                            # b was dropped


def test_other_key_or_other_direction_fails() -> None:
    keys = LinkKeys(os.urandom(32), os.urandom(32))
    record = Sealer(keys.send).seal(b"hello" * 20)
    with pytest.raises(CryptoError):
        Opener(keys.recv).open(record)


def test_derived_keys_differ_per_direction_channel_and_transcript() -> None:
    secret = b"s" * 32
    i = crypto.derive_keys(secret, b"t1", b"dsm", initiator=True)
    a = crypto.derive_keys(secret, b"t1", b"dsm", initiator=False)
    assert i == a.swapped() and i.send != i.recv
    assert crypto.derive_keys(secret, b"t2", b"dsm", True) != i
    assert crypto.derive_keys(secret, b"t1", b"control", True) != i
    assert crypto.derive_keys(b"S" * 32, b"t1", b"dsm", True) != i
    assert "LinkKeys(...)" == repr(i)       # key bytes never reach a log line


def test_short_secret_refused_by_the_derivation() -> None:
    with pytest.raises(CryptoError, match="15 bytes; at least 16"):
        crypto.derive_keys(b"x" * 15, b"t", b"dsm", True)


def test_ivyvm_secret_of_one_byte_is_refused_with_one_line(tmp_path: Path) -> None:
    """Issue 11: IVYVM_SECRET of 1 byte was accepted; the 16-byte rule held only for secret_file."""
    config = tmp_path / "cluster.toml"
    config.write_text(f'[cluster]\nimage = "{guest_elf("hello")}"\nvcpus = 2\nmem = "64M"\n'
                      '[[node]]\naddress = "127.0.0.1:1001"\n[[node]]\naddress = "127.0.0.1:1003"\n')
    env = dict(os.environ, IVYVM_SECRET="x", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "hypervisor.cli", "node", "--config", str(config), "--id", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "1 byte" in line and "16" in line, line


def test_frames_on_the_wire_are_sealed_and_only_the_bench_switch_unseals_them() -> None:
    """A node's first frame (a READ for a faulted page) as it crosses the socket: sealed, no
    frame magic in sight; with the benchmark's insecure_plaintext, the bare frame."""
    import socket
    import threading

    from hypervisor._ivy_testkit import lib as kit
    from hypervisor.dsm import DsmNode
    from hypervisor.handshake import Link
    from hypervisor.memory import GuestRam
    from hypervisor.native_consts import PAGE_SIZE, WIRE_HDR_SIZE, WIRE_MAGIC

    def first_bytes(insecure: bool) -> bytes:
        ram = GuestRam(8 * PAGE_SIZE)
        ours, theirs = socket.socketpair()
        node = DsmNode(1, 2, ram, {0: Link(theirs, LinkKeys(os.urandom(32), os.urandom(32)))},
                       insecure_plaintext=insecure)
        node.start()
        reader = threading.Thread(target=kit.ivy_test_load64, args=(ram.guest_addr + PAGE_SIZE,), daemon=True)
        reader.start()
        ours.settimeout(5)
        got = b""
        while len(got) < WIRE_HDR_SIZE + OVERHEAD:
            got += ours.recv(4096)
        node.close()
        reader.join(5)
        ours.close()
        ram.close()
        return got

    magic = WIRE_MAGIC.to_bytes(4, "little")
    sealed = first_bytes(False)
    assert PREFIX.unpack_from(sealed) == (WIRE_HDR_SIZE,) and magic not in sealed
    assert first_bytes(True)[:4] == magic
    # No user path reaches the switch: neither the CLI, nor the config, nor the node.
    for module in ("cli.py", "config.py", "node.py", "cluster.py"):
        assert "insecure_plaintext" not in (ROOT / "hypervisor" / module).read_text(), module
