"""The ioctl table and struct layouts against the values in <linux/kvm.h> (x86-64)."""
from __future__ import annotations

import ctypes

import pytest

from hypervisor.kvm import abi


@pytest.mark.parametrize("name, value", [
    ("KVM_GET_API_VERSION", 0xAE00),
    ("KVM_CREATE_VM", 0xAE01),
    ("KVM_CHECK_EXTENSION", 0xAE03),
    ("KVM_GET_VCPU_MMAP_SIZE", 0xAE04),
    ("KVM_GET_SUPPORTED_CPUID", 0xC008AE05),
    ("KVM_CREATE_VCPU", 0xAE41),
    ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46),
    ("KVM_SET_TSS_ADDR", 0xAE47),
    ("KVM_RUN", 0xAE80),
    ("KVM_GET_REGS", 0x8090AE81),
    ("KVM_SET_REGS", 0x4090AE82),
    ("KVM_GET_SREGS", 0x8138AE83),
    ("KVM_SET_SREGS", 0x4138AE84),
    ("KVM_INTERRUPT", 0x4004AE86),
    ("KVM_SET_CPUID2", 0x4008AE90),
])
def test_ioctl_numbers(name: str, value: int) -> None:
    assert getattr(abi, name) == value, f"{name} = {getattr(abi, name):#x}, expected {value:#x}"


@pytest.mark.parametrize("struct, size", [
    (abi.kvm_regs, 144),
    (abi.kvm_sregs, 312),
    (abi.kvm_segment, 24),
    (abi.kvm_dtable, 16),
    (abi.kvm_userspace_memory_region, 32),
    (abi.kvm_interrupt, 4),
    (abi.kvm_cpuid_entry2, 40),
    (abi.kvm_cpuid2, 8),
])
def test_struct_sizes(struct: type, size: int) -> None:
    assert ctypes.sizeof(struct) == size


def test_kvm_run_layout() -> None:
    run = abi.kvm_run
    assert ctypes.sizeof(run) >= 256
    assert run.exit_reason.offset == 8
    assert run.ready_for_interrupt_injection.offset == 12
    assert run.if_flag.offset == 13
    assert run.exit.offset == 32            # the exit union
    assert run.kvm_valid_regs.offset == 32 + 256
    io = abi._exit_io
    assert (io.direction.offset, io.size.offset, io.port.offset, io.count.offset, io.data_offset.offset) == \
        (0, 1, 2, 4, 8)
    mmio = abi._exit_mmio
    assert (mmio.phys_addr.offset, mmio.data.offset, mmio.len.offset, mmio.is_write.offset) == (0, 8, 16, 20)


def test_cpuid2_buffer_places_entries_after_header() -> None:
    buf = abi.cpuid2_buffer(3)
    assert buf.nent == 3
    assert type(buf).entries.offset == 8
    assert ctypes.sizeof(buf) == 8 + 3 * 40


def test_capabilities_and_exit_reasons() -> None:
    assert abi.Cap.USER_MEMORY == 3
    assert abi.Cap.MAX_VCPUS == 66
    assert abi.Cap.IMMEDIATE_EXIT == 136
    assert abi.ExitReason.IO == 2 and abi.ExitReason.HLT == 5 and abi.ExitReason.MMIO == 6
    assert abi.ExitReason.SHUTDOWN == 8 and abi.ExitReason.INTR == 10
    assert abi.ExitReason.INTERNAL_ERROR == 17 and abi.ExitReason.SYSTEM_EVENT == 24
