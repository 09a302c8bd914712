"""Hostile guest images (issue 11, "Input"): one line and status 3, never a traceback, hang or blow-up."""
from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from hypervisor.loader import EHDR, MAX_NON_LOAD_BYTES, PHDR, MAX_PHDRS, LoaderError, load_image, parse_image
from tests.conftest import ROOT
from tests.unit.hostile_fuzz import run_fuzz
from tests.unit.test_loader import CODE, make_elf

MIB = 1 << 20
RAM = 64 * MIB


def ivyvm_run(image: Path | str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hypervisor.cli", "run", str(image), *options], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def assert_refused(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr


@pytest.mark.timeout(60)
def test_dev_zero_and_a_fifo_are_refused_at_once(tmp_path: Path) -> None:
    assert_refused(ivyvm_run("/dev/zero"), "/dev/zero: not a regular file (it is a character device)")
    fifo = tmp_path / "guest.elf"
    os.mkfifo(fifo)
    assert_refused(ivyvm_run(fifo), "not a regular file (it is a FIFO)")


def test_a_sparse_6_gib_image_is_refused_by_its_size(tmp_path: Path) -> None:
    image = tmp_path / "sparse.elf"
    with open(image, "wb") as f:
        f.write(make_elf([(2 * MIB, CODE, 2)]))
        f.truncate(6 << 30)
    limit = RAM + MAX_NON_LOAD_BYTES
    assert_refused(ivyvm_run(image), f"the image is {6 << 30} bytes, more than the {limit} allowed")
    # The cap follows --mem: the same image is still refused with 4 GiB of RAM.
    assert_refused(ivyvm_run(image, "--mem", "4G"), "more than the")


def test_an_image_just_within_the_cap_is_read(tmp_path: Path) -> None:
    image = tmp_path / "padded.elf"
    with open(image, "wb") as f:
        f.write(make_elf([(2 * MIB, CODE, 2)]))
        f.truncate(16 * MIB + MAX_NON_LOAD_BYTES)    # sparse trailing zeros, as debug sections would be
    assert load_image(image, 16 * MIB, 1).entry == 2 * MIB


def same_mib_many_times(count: int, spread: bool) -> bytes:
    """`count` PT_LOAD entries all naming one MiB of the file, at one address or side by side."""
    offset = EHDR.size + count * PHDR.size
    addresses = [2 * MIB + (i * MIB if spread else 0) for i in range(count)]
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = EHDR.pack(ident, 2, 62, 1, 2 * MIB, EHDR.size, 0, 0, EHDR.size, PHDR.size, count, 64, 0, 0)
    table = b"".join(PHDR.pack(1, 5, offset, p, p, MIB, MIB, 0x1000) for p in addresses)
    return header + table + b"\x90" * MIB


def test_1500_pt_load_entries_on_one_mib_are_refused_by_count() -> None:
    with pytest.raises(LoaderError, match=f"1500 program headers: at most {MAX_PHDRS}"):
        parse_image(same_mib_many_times(1500, spread=False), RAM, 1)


def test_segments_sharing_an_address_are_refused_as_overlapping() -> None:
    with pytest.raises(LoaderError, match=r"segments at 0x200000 \(size 0x100000\) and 0x200000 overlap"):
        parse_image(same_mib_many_times(2, spread=False), RAM, 1)
    with pytest.raises(LoaderError, match="overlap in guest memory"):
        parse_image(make_elf([(2 * MIB, CODE, 0x2000), (2 * MIB + 0x1000, CODE, 2)]), RAM, 1)
    assert len(parse_image(make_elf([(2 * MIB, CODE, 0x1000), (2 * MIB + 0x1000, CODE, 2)]), RAM, 1).segments) == 2


def test_every_file_byte_is_held_once_however_often_segments_name_it(tmp_path: Path) -> None:
    """Sixty segments may share one MiB of file bytes; loading keeps one copy of the file, not sixty."""
    data = same_mib_many_times(MAX_PHDRS - 4, spread=True)
    image = tmp_path / "shared.elf"
    image.write_bytes(data)
    tracemalloc.start()
    try:
        loaded = load_image(image, 128 * MIB, 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(loaded.segments) == MAX_PHDRS - 4
    assert peak < len(data) + MIB, f"loading a {len(data)}-byte image peaked at {peak} bytes"


def test_fuzzed_elf_headers_never_escape_as_tracebacks_hangs_or_memory_blow_ups() -> None:
    result = run_fuzz("elf")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "every example parsed or was refused" in result.stdout
