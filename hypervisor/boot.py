"""The VMM-owned area (guest-physical 0 .. 1 MiB) and each vCPU's entry state (guest ABI section 3).

Layout of the VMM area (every structure page-aligned so the DSM can share them as
read-mostly pages):

    0x1000  PML4          one entry: the PDPT
    0x2000  PDPT          one entry per GiB of RAM
    0x3000  page directories, one page per GiB (4 GiB max: 0x3000..0x6fff)
    0x7000  GDT           null, 0x08 code64 DPL0, 0x10 data DPL0, 0x18 code64 DPL3, 0x20 data DPL3,
                          0x28 the placeholder TSS (16-byte system descriptor)
    0x8000  placeholder TSS (104 zero bytes)
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hypervisor.kvm import abi
from hypervisor.loader import STACK_SIZE
from hypervisor.memory import pages_of

if TYPE_CHECKING:
    from hypervisor.memory import GuestRam

PML4_ADDR = 0x1000
PDPT_ADDR = 0x2000
PD_ADDR = 0x3000
GDT_ADDR = 0x7000
TSS_ADDR = 0x8000
TSS_SIZE = 104
MAX_RAM = 4 << 30

# Page-table entry bits: P, RW, US, A, D at every level (so the CPU never writes
# the tables, which would make every vCPU a writer of these shared pages), PS on leaves.
PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS = 1, 2, 4, 0x20, 0x40, 0x80
TABLE_FLAGS = PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D
LEAF_FLAGS = TABLE_FLAGS | PTE_PS

SEL_KERNEL_CODE, SEL_KERNEL_DATA, SEL_USER_CODE, SEL_USER_DATA, SEL_TSS = 0x08, 0x10, 0x18, 0x20, 0x28

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 0x20, 0x200, 0x400
EFER_LME, EFER_LMA = 0x100, 0x400
CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
EFER = EFER_LME | EFER_LMA
RFLAGS = 0x2


class BootError(Exception):
    """The boot area cannot be built for this RAM size."""


def page_tables(ram_size: int) -> dict[int, bytes]:
    """The identity map of RAM with 2 MiB pages, as {guest-physical address: bytes}."""
    if ram_size <= 0 or ram_size % (2 << 20) or ram_size > MAX_RAM:
        raise BootError(f"RAM size {ram_size:#x} must be a multiple of 2 MiB and at most 4 GiB")
    gibs = (ram_size + (1 << 30) - 1) >> 30
    pml4 = struct.pack("<Q", PDPT_ADDR | TABLE_FLAGS)
    pdpt = b"".join(struct.pack("<Q", (PD_ADDR + i * 0x1000) | TABLE_FLAGS) for i in range(gibs))
    pds = b"".join(struct.pack("<Q", (i << 21) | LEAF_FLAGS) for i in range(ram_size >> 21))
    return {PML4_ADDR: pml4, PDPT_ADDR: pdpt, PD_ADDR: pds}


def _descriptor(limit: int, access: int, flags: int) -> int:
    """An 8-byte code/data descriptor with base 0."""
    return ((limit & 0xFFFF) | ((access & 0xFF) << 40) | (((limit >> 16) & 0xF) << 48) | ((flags & 0xF) << 52))


def _tss_descriptor(base: int, limit: int) -> bytes:
    """A 16-byte 64-bit busy TSS descriptor (type 0xB): busy, since TR is loaded with it."""
    low = ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x8B << 40) | (((limit >> 16) & 0xF) << 48)
           | (((base >> 24) & 0xFF) << 56))
    return struct.pack("<QQ", low, base >> 32)


def gdt() -> bytes:
    entries = [
        0,
        _descriptor(0xFFFFF, 0x9A, 0xA),   # 0x08 64-bit code, DPL0 (L=1, G=1)
        _descriptor(0xFFFFF, 0x92, 0xC),   # 0x10 data, DPL0 (D/B=1, G=1)
        _descriptor(0xFFFFF, 0xFA, 0xA),   # 0x18 64-bit code, DPL3
        _descriptor(0xFFFFF, 0xF2, 0xC),   # 0x20 data, DPL3
    ]
    return b"".join(struct.pack("<Q", e) for e in entries) + _tss_descriptor(TSS_ADDR, TSS_SIZE - 1)


def write_boot_area(ram: "GuestRam") -> set[int]:
    """Write page tables, GDT and placeholder TSS through the VMM view; return the pages written."""
    blobs = dict(page_tables(ram.size))
    blobs[GDT_ADDR] = gdt()
    blobs[TSS_ADDR] = bytes(TSS_SIZE)
    pages: set[int] = set()
    for addr, data in blobs.items():
        ram.write(addr, data)
        pages.update(pages_of(addr, len(data)))
    return pages


@dataclass(frozen=True)
class EntryState:
    index: int
    count: int
    ram_size: int
    entry: int

    @property
    def stack_top(self) -> int:
        return self.ram_size - self.index * STACK_SIZE


def initial_regs(state: EntryState) -> abi.kvm_regs:
    regs = abi.kvm_regs()
    regs.rip = state.entry
    regs.rflags = RFLAGS
    regs.rdi = state.index
    regs.rsi = state.count
    regs.rdx = state.ram_size
    regs.rsp = state.stack_top
    return regs


def _segment(selector: int, code: bool) -> abi.kvm_segment:
    seg = abi.kvm_segment()
    seg.base, seg.limit, seg.selector = 0, 0xFFFFFFFF, selector
    seg.type = 0xB if code else 0x3          # execute/read or read/write, accessed
    seg.present, seg.dpl, seg.s, seg.g = 1, 0, 1, 1
    seg.l, seg.db = (1, 0) if code else (0, 1)
    return seg


def initial_sregs(sregs: abi.kvm_sregs) -> abi.kvm_sregs:
    """Turn the sregs KVM reports for a fresh vCPU into long mode per the ABI (in place)."""
    sregs.cs = _segment(SEL_KERNEL_CODE, code=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, _segment(SEL_KERNEL_DATA, code=False))
    tr = abi.kvm_segment()
    tr.base, tr.limit, tr.selector, tr.type, tr.present = TSS_ADDR, TSS_SIZE - 1, SEL_TSS, 0xB, 1
    sregs.tr = tr
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, len(gdt()) - 1
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = CR0, PML4_ADDR, CR4, EFER
    return sregs
