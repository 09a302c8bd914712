"""The VMM area: identity page tables, GDT, and the entry state (guest ABI sections 2-3)."""
from __future__ import annotations

import struct

import pytest

from hypervisor import boot
from hypervisor.kvm import abi
from hypervisor.memory import GuestRam

MIB = 1 << 20


def qword(ram: GuestRam, addr: int) -> int:
    return struct.unpack("<Q", ram.read(addr, 8))[0]


@pytest.mark.parametrize("ram_size", [4 * MIB, 64 * MIB, 1026 * MIB])
def test_identity_map_covers_ram_with_2mib_pages(ram_size: int) -> None:
    with GuestRam(ram_size) as ram:
        pages = boot.write_boot_area(ram)
        assert all(p < 256 for p in pages)                  # all below 1 MiB
        flags = 0x1 | 0x2 | 0x4 | 0x20 | 0x40               # P RW US A D
        pml4e = qword(ram, boot.PML4_ADDR)
        assert pml4e & 0xFFF == flags
        pdpt = pml4e & ~0xFFF
        for gib in range((ram_size + (1 << 30) - 1) >> 30):
            pdpte = qword(ram, pdpt + 8 * gib)
            assert pdpte & 0xFFF == flags
        assert qword(ram, pdpt + 8 * ((ram_size + (1 << 30) - 1) >> 30)) == 0
        for i in range(ram_size >> 21):
            pdpte = qword(ram, pdpt + 8 * (i >> 9))
            pde = qword(ram, (pdpte & ~0xFFF) + 8 * (i & 511))
            assert pde == (i << 21) | flags | 0x80          # PS: a 2 MiB page, identity
        last = ram_size >> 21
        pdpte = qword(ram, pdpt + 8 * ((last - 1) >> 9))
        if last & 511:
            assert qword(ram, (pdpte & ~0xFFF) + 8 * (last & 511)) == 0   # nothing above RAM


def test_ram_size_limits() -> None:
    with pytest.raises(boot.BootError):
        boot.page_tables(3 * MIB)
    with pytest.raises(boot.BootError):
        boot.page_tables((4 << 30) + 2 * MIB)


def test_gdt_selectors() -> None:
    gdt = boot.gdt()
    desc = [struct.unpack_from("<Q", gdt, sel)[0] for sel in (0x08, 0x10, 0x18, 0x20)]
    access = [(d >> 40) & 0xFF for d in desc]
    assert access == [0x9A, 0x92, 0xFA, 0xF2]               # code/data, DPL 0,0,3,3
    assert [(d >> 53) & 1 for d in desc] == [1, 0, 1, 0]    # L bit on the code segments
    assert (struct.unpack_from("<Q", gdt, 0x28)[0] >> 40) & 0x8F == 0x8B   # busy 64-bit TSS


def test_entry_registers() -> None:
    regs = boot.initial_regs(boot.EntryState(index=2, count=4, ram_size=64 * MIB, entry=0x200000))
    assert (regs.rip, regs.rdi, regs.rsi, regs.rdx, regs.rflags) == (0x200000, 2, 4, 64 * MIB, 2)
    assert regs.rsp == 64 * MIB - 2 * 64 * 1024 and regs.rsp % 16 == 0
    assert regs.rax == regs.rbx == regs.rcx == regs.rbp == regs.r8 == regs.r15 == 0


def test_entry_sregs() -> None:
    s = boot.initial_sregs(abi.kvm_sregs())
    assert s.cr0 == 0x80010033 and s.cr4 == 0x620 and s.efer == 0x500 and s.cr3 == boot.PML4_ADDR
    assert (s.cs.selector, s.cs.l, s.cs.dpl) == (0x08, 1, 0)
    assert all(getattr(s, r).selector == 0x10 and getattr(s, r).base == 0 for r in ("ds", "es", "fs", "gs", "ss"))
    assert s.idt.limit == 0 and s.gdt.base == boot.GDT_ADDR
    assert s.tr.selector == 0x28 and s.tr.type == 0xB
