"""The guest image: a static ELF64 x86-64 executable, validated per guest ABI section 1.

Validation happens before any KVM object exists, so a bad image costs nothing
and always produces exactly one line (LoaderError's message).

The file is untrusted: it is stat()ed before it is read (a regular file no
larger than RAM plus MAX_NON_LOAD_BYTES), read once, and its segments are
views into that one copy, so no header layout can make the loader use more
memory than the file's size (1500 PT_LOAD entries naming the same MiB used
to cost 1.5 GB). Segments may not overlap in guest memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hypervisor.files import InputFileError, read_regular
from hypervisor.memory import pages_of

if TYPE_CHECKING:
    from hypervisor.memory import GuestRam

MIB = 1 << 20
LOW_RESERVED = 1 * MIB          # guest-physical 0 .. 1 MiB belongs to the VMM
STACK_SIZE = 64 * 1024          # per vCPU, at the top of RAM

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
ET_EXEC, EM_X86_64 = 2, 62
PT_LOAD = 1
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr, 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")           # Elf64_Phdr, 56 bytes
# A static guest has a handful of program headers (ours: 2-4); 64 leaves room
# for any linker script while bounding the work a hostile header can cause.
MAX_PHDRS = 64
# Beyond its loadable bytes an ELF file holds headers, symbols and debug
# sections; an image may exceed RAM by this much (ours are under 100 KiB).
MAX_NON_LOAD_BYTES = 64 * MIB


class LoaderError(Exception):
    """The image is refused; the message is the one line the user sees."""


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes | memoryview   # the file bytes (p_filesz of them), a view into the one copy read
    memsz: int      # bytes from paddr that the segment occupies; the rest is zero


@dataclass(frozen=True)
class Image:
    entry: int
    segments: tuple[Segment, ...]
    digest: bytes = b""   # sha256 of the file: nodes of one cluster must run the same image

    def write_to(self, ram: "GuestRam") -> set[int]:
        """Copy the segments into RAM via the VMM view; return the 4 KiB page numbers written.

        RAM is a fresh memfd, hence already zero beyond p_filesz: only file bytes are written.
        """
        pages: set[int] = set()
        for seg in self.segments:
            ram.write(seg.paddr, bytes(seg.data))   # one segment's transient copy: ctypes wants bytes
            pages.update(pages_of(seg.paddr, len(seg.data)))
        return pages


def guest_area(ram_size: int, vcpus: int) -> tuple[int, int]:
    """[start, end) of guest-physical memory an image may occupy."""
    return LOW_RESERVED, ram_size - vcpus * STACK_SIZE


def parse_image(data: bytes, ram_size: int, vcpus: int) -> Image:
    """Validate ELF bytes against the ABI for this RAM size and vCPU count."""
    if len(data) < 4 or data[:4] != ELF_MAGIC:
        raise LoaderError("not an ELF file (bad magic)")
    if len(data) < EHDR.size:
        raise LoaderError(f"truncated ELF header: file is {len(data)} bytes, header needs {EHDR.size}")
    (ident, e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize,
     e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = EHDR.unpack_from(data)
    if ident[4] != ELFCLASS64:
        raise LoaderError(f"not a 64-bit ELF: EI_CLASS is {ident[4]}, expected {ELFCLASS64} (ELFCLASS64)")
    if ident[5] != ELFDATA2LSB:
        raise LoaderError(f"not a little-endian ELF: EI_DATA is {ident[5]}, expected {ELFDATA2LSB}")
    if e_machine != EM_X86_64:
        raise LoaderError(f"wrong machine: e_machine is {e_machine}, expected {EM_X86_64} (x86-64)")
    if e_type != ET_EXEC:
        raise LoaderError(f"not a static executable: e_type is {e_type}, expected {ET_EXEC} (ET_EXEC)")
    if e_phnum == 0:
        raise LoaderError("no program headers, so nothing to load")
    if e_phnum > MAX_PHDRS:
        raise LoaderError(f"{e_phnum} program headers: at most {MAX_PHDRS} are accepted")
    if e_phentsize != PHDR.size:
        raise LoaderError(f"program header size is {e_phentsize}, expected {PHDR.size}")
    if e_phoff + e_phnum * PHDR.size > len(data):
        raise LoaderError(f"truncated program headers: {e_phnum} headers at offset {e_phoff:#x} "
                          f"run past the end of the {len(data)}-byte file")

    low, high = guest_area(ram_size, vcpus)
    view = memoryview(data)
    segments: list[Segment] = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = \
            PHDR.unpack_from(data, e_phoff + i * PHDR.size)
        if p_type != PT_LOAD:
            continue
        where = f"segment {i} at {p_paddr:#x}"
        if p_filesz > p_memsz:
            raise LoaderError(f"{where}: p_filesz {p_filesz:#x} is larger than p_memsz {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise LoaderError(f"truncated {where}: its {p_filesz:#x} file bytes at offset {p_offset:#x} "
                              f"run past the end of the {len(data)}-byte file")
        if p_memsz == 0:
            continue
        end = p_paddr + p_memsz
        if p_paddr < low:
            raise LoaderError(f"{where}: overlaps the VMM area below 1 MiB")
        if end > ram_size:
            raise LoaderError(f"{where}: ends at {end:#x}, outside RAM of {ram_size:#x} bytes")
        if end > high:
            raise LoaderError(f"{where}: ends at {end:#x}, overlapping the vCPU stacks "
                              f"({vcpus} x 64 KiB from {high:#x})")
        segments.append(Segment(p_paddr, view[p_offset:p_offset + p_filesz], p_memsz))

    if not segments:
        raise LoaderError("no PT_LOAD segment with bytes to load")
    _refuse_overlaps(segments)
    if not any(s.paddr <= e_entry < s.paddr + s.memsz for s in segments):
        raise LoaderError(f"entry point {e_entry:#x} is not inside any loaded segment")
    return Image(e_entry, tuple(segments))


def _refuse_overlaps(segments: list[Segment]) -> None:
    """Two segments claiming the same guest byte: which one wins would be the loader's accident."""
    ordered = sorted(segments, key=lambda s: s.paddr)
    for before, after in zip(ordered, ordered[1:]):
        if after.paddr < before.paddr + before.memsz:
            raise LoaderError(f"segments at {before.paddr:#x} (size {before.memsz:#x}) and {after.paddr:#x} "
                              f"overlap in guest memory")


def max_image_bytes(ram_size: int) -> int:
    return ram_size + MAX_NON_LOAD_BYTES


def load_image(path: str | Path, ram_size: int, vcpus: int) -> Image:
    """Read and validate an image file; every failure is a LoaderError naming the file."""
    try:
        data, _ = read_regular(path, max_image_bytes(ram_size), "the image")
    except InputFileError as e:
        raise LoaderError(f"{path}: {e}") from None
    try:
        image = parse_image(data, ram_size, vcpus)
    except LoaderError as e:
        raise LoaderError(f"{path}: {e}") from None
    return dataclasses.replace(image, digest=hashlib.sha256(data).digest())
