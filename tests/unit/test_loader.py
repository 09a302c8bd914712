"""The ELF loader on good and malformed images (guest ABI section 1)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.loader import EHDR, PHDR, Image, LoaderError, load_image, parse_image
from hypervisor.memory import GuestRam

MIB = 1 << 20
RAM = 64 * MIB
PT_LOAD, PT_NOTE = 1, 4


def make_elf(segments: list[tuple[int, bytes, int]], entry: int | None = None, *, elf_class: int = 2,
             data: int = 1, e_type: int = 2, machine: int = 62, extra_phdrs: int = 0) -> bytes:
    """An ELF64 image with one PT_LOAD per (paddr, bytes, memsz), file data after the headers."""
    phnum = len(segments) + extra_phdrs
    offset = EHDR.size + phnum * PHDR.size
    phdrs, blobs = b"", b""
    for paddr, body, memsz in segments:
        phdrs += PHDR.pack(PT_LOAD, 5, offset + len(blobs), paddr, paddr, len(body), memsz, 0x1000)
        blobs += body
    for _ in range(extra_phdrs):
        phdrs += PHDR.pack(PT_NOTE, 4, 0, 0, 0, 0, 0, 4)
    ident = b"\x7fELF" + bytes([elf_class, data, 1]) + bytes(9)
    if entry is None:
        entry = segments[0][0] if segments else 0
    header = EHDR.pack(ident, e_type, machine, 1, entry, EHDR.size, 0, 0, EHDR.size, PHDR.size, phnum, 64, 0, 0)
    return header + phdrs + blobs


CODE = bytes([0xEB, 0xFE])   # jmp .


def test_good_image() -> None:
    elf = make_elf([(2 * MIB, CODE, 2), (3 * MIB, b"data", 0x3000)], entry=2 * MIB, extra_phdrs=1)
    image = parse_image(elf, RAM, 4)
    assert image.entry == 2 * MIB
    assert [(s.paddr, s.data, s.memsz) for s in image.segments] == [(2 * MIB, CODE, 2), (3 * MIB, b"data", 0x3000)]


def test_image_is_written_through_the_vmm_view_and_pages_reported() -> None:
    body = b"\xAA" * 5000      # crosses a page boundary
    image = parse_image(make_elf([(2 * MIB + 0xF00, body, 0x4000)]), RAM, 1)
    with GuestRam(RAM) as ram:
        pages = image.write_to(ram)
        assert ram.read(2 * MIB + 0xF00, len(body)) == body
        assert ram.read(2 * MIB + 0xF00 + len(body), 16) == bytes(16)   # zero-fill up to memsz
    first = (2 * MIB + 0xF00) // 4096
    assert pages == {first, first + 1, first + 2}   # 0xf00 + 5000 bytes spans three pages


def test_segment_may_end_exactly_at_the_stacks() -> None:
    top = RAM - 2 * 64 * 1024
    image = parse_image(make_elf([(top - 0x1000, CODE, 0x1000)]), RAM, 2)
    assert image.segments[0].paddr == top - 0x1000


@pytest.mark.parametrize("elf, needle", [
    (b"", "not an ELF"),
    (b"MZ\x90\x00" + bytes(100), "not an ELF"),
    (make_elf([(2 * MIB, CODE, 2)])[:40], "truncated ELF header"),
    (make_elf([(2 * MIB, CODE, 2)], elf_class=1), "not a 64-bit ELF"),
    (make_elf([(2 * MIB, CODE, 2)], data=2), "not a little-endian ELF"),
    (make_elf([(2 * MIB, CODE, 2)], machine=3), "wrong machine: e_machine is 3"),
    (make_elf([(2 * MIB, CODE, 2)], machine=183), "wrong machine"),
    (make_elf([(2 * MIB, CODE, 2)], e_type=3), "not a static executable: e_type is 3"),
    (make_elf([(2 * MIB, CODE, 2)], e_type=1), "ET_EXEC"),
    (make_elf([]), "no program headers"),
    (make_elf([], extra_phdrs=1), "no PT_LOAD"),
    (make_elf([(2 * MIB, CODE, 2)])[:EHDR.size + 20], "truncated program headers"),
    (make_elf([(2 * MIB, b"\x90" * 64, 64)])[:-10], "truncated segment 0"),
    (make_elf([(2 * MIB, CODE * 8, 4)]), "p_filesz 0x10 is larger than p_memsz 0x4"),
    (make_elf([(0xFF000, CODE, 0x2000)]), "overlaps the VMM area below 1 MiB"),
    (make_elf([(0, CODE, 2)]), "overlaps the VMM area"),
    (make_elf([(RAM - 0x1000, CODE, 0x1000)]), "overlapping the vCPU stacks"),
    (make_elf([(RAM - 4 * 64 * 1024 - 0x800, CODE, 0x1000)]), "overlapping the vCPU stacks"),
    (make_elf([(RAM, CODE, 2)]), "outside RAM"),
    (make_elf([(1 << 40, CODE, 2)]), "outside RAM"),
    (make_elf([(2 * MIB, CODE, 2)], entry=2 * MIB + 2), "entry point 0x200002 is not inside any loaded segment"),
    (make_elf([(2 * MIB, CODE, 2)], entry=0), "entry point 0x0"),
])
def test_malformed_images_are_refused_with_one_line(elf: bytes, needle: str) -> None:
    with pytest.raises(LoaderError) as info:
        parse_image(elf, RAM, 4)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_stack_area_depends_on_vcpu_count() -> None:
    elf = make_elf([(RAM - 3 * 64 * 1024, CODE, 0x1000)])
    parse_image(elf, RAM, 2)            # fits beside 2 stacks
    with pytest.raises(LoaderError, match="vCPU stacks"):
        parse_image(elf, RAM, 3)        # overlaps the third


def test_load_image_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.elf"
    good.write_bytes(make_elf([(2 * MIB, CODE, 2)]))
    assert isinstance(load_image(good, RAM, 1), Image)
    bad = tmp_path / "bad.elf"
    bad.write_bytes(make_elf([(2 * MIB, CODE, 2)], machine=40))
    with pytest.raises(LoaderError, match=r"bad\.elf: wrong machine"):
        load_image(bad, RAM, 1)
    with pytest.raises(LoaderError, match="missing.elf: cannot read"):
        load_image(tmp_path / "missing.elf", RAM, 1)
