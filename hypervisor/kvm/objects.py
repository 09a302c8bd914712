"""Kvm, Vm and Vcpu: each owns one file descriptor and has one method per ioctl.

ioctls go through libc via ctypes rather than fcntl.ioctl: a ctypes call drops
the GIL for its whole duration (KVM_RUN may last seconds), and it reports
EINTR to us instead of retrying it, which is what lets stop() kick a vCPU out.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os

from hypervisor.kvm import abi
from hypervisor.kvm.abi import ExitReason
from hypervisor.kvm.exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut,
                                  IrqWindowOpen, MmioRead, MmioWrite, Shutdown, SystemEvent,
                                  Unknown, VmExit)

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int

_IOCTL_NAMES = {getattr(abi, n): n for n in dir(abi) if n.startswith("KVM_") and isinstance(getattr(abi, n), int)
                and getattr(abi, n) > 0xff}


class KvmError(Exception):
    """An ioctl on a KVM fd failed; carries the ioctl name and errno."""

    def __init__(self, what: str, err: int) -> None:
        self.what, self.errno = what, err
        super().__init__(f"{what} failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})")


def _call(fd: int, request: int, arg: int | None = 0) -> int:
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        raise KvmError(_IOCTL_NAMES.get(request, hex(request)), ctypes.get_errno())
    return ret


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Kvm(_Fd):
    """/dev/kvm."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(f"open {path}", e.errno or errno.ENODEV) from None
        super().__init__(fd)
        version = self.get_api_version()
        if version != abi.KVM_API_VERSION:
            self.close()
            raise KvmError(f"KVM_GET_API_VERSION returned {version}, expected {abi.KVM_API_VERSION}",
                           errno.EPROTO)

    def get_api_version(self) -> int:
        return _call(self.fd, abi.KVM_GET_API_VERSION)

    def check_extension(self, cap: abi.Cap) -> int:
        return _call(self.fd, abi.KVM_CHECK_EXTENSION, int(cap))

    def get_vcpu_mmap_size(self) -> int:
        return _call(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE)

    def get_supported_cpuid(self) -> ctypes.Structure:
        nent = 64
        while True:
            buf = abi.cpuid2_buffer(nent)
            ret = _ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, ctypes.addressof(buf))
            if ret >= 0:
                return buf
            err = ctypes.get_errno()
            if err != errno.E2BIG or nent >= 4096:
                raise KvmError("KVM_GET_SUPPORTED_CPUID", err)
            nent *= 2

    def create_vm(self) -> "Vm":
        return Vm(_call(self.fd, abi.KVM_CREATE_VM, 0), self.get_vcpu_mmap_size())


class Vm(_Fd):
    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        super().__init__(fd)
        self.vcpu_mmap_size = vcpu_mmap_size

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int, userspace_addr: int,
                               flags: int = 0) -> None:
        region = abi.kvm_userspace_memory_region(slot, flags, guest_phys_addr, size, userspace_addr)
        _call(self.fd, abi.KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region))

    def set_tss_addr(self, address: int) -> None:
        _call(self.fd, abi.KVM_SET_TSS_ADDR, address)

    def create_vcpu(self, vcpu_id: int) -> "Vcpu":
        return Vcpu(_call(self.fd, abi.KVM_CREATE_VCPU, vcpu_id), vcpu_id, self.vcpu_mmap_size)


class Vcpu(_Fd):
    def __init__(self, fd: int, vcpu_id: int, mmap_size: int) -> None:
        super().__init__(fd)
        self.id = vcpu_id
        try:
            self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        self._run = abi.kvm_run.from_buffer(self._map)
        # Snapshot of the interrupt state KVM reported at the last exit.
        self.ready_for_interrupt = False
        self.interrupts_enabled = False

    def close(self) -> None:
        if self.fd >= 0:
            del self._run
            self._map.close()
        super().close()

    # --- ioctls -------------------------------------------------------------
    def get_regs(self) -> abi.kvm_regs:
        regs = abi.kvm_regs()
        _call(self.fd, abi.KVM_GET_REGS, ctypes.addressof(regs))
        return regs

    def set_regs(self, regs: abi.kvm_regs) -> None:
        _call(self.fd, abi.KVM_SET_REGS, ctypes.addressof(regs))

    def get_sregs(self) -> abi.kvm_sregs:
        sregs = abi.kvm_sregs()
        _call(self.fd, abi.KVM_GET_SREGS, ctypes.addressof(sregs))
        return sregs

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        _call(self.fd, abi.KVM_SET_SREGS, ctypes.addressof(sregs))

    def set_cpuid2(self, cpuid: ctypes.Structure) -> None:
        _call(self.fd, abi.KVM_SET_CPUID2, ctypes.addressof(cpuid))

    def has_device_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR: whether this vCPU has the attribute (ENXIO: it has not)."""
        query = abi.kvm_device_attr(0, group, attr, 0)
        try:
            _call(self.fd, abi.KVM_HAS_DEVICE_ATTR, ctypes.addressof(query))
        except KvmError as err:
            if err.errno in (errno.ENXIO, errno.EINVAL, errno.ENOTTY):
                return False
            raise
        return True

    def get_device_attr(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR of a 64-bit attribute."""
        value = ctypes.c_uint64()
        query = abi.kvm_device_attr(0, group, attr, ctypes.addressof(value))
        _call(self.fd, abi.KVM_GET_DEVICE_ATTR, ctypes.addressof(query))
        return value.value

    def set_device_attr(self, group: int, attr: int, value: int) -> None:
        """KVM_SET_DEVICE_ATTR of a 64-bit attribute."""
        word = ctypes.c_uint64(value & (2**64 - 1))
        query = abi.kvm_device_attr(0, group, attr, ctypes.addressof(word))
        _call(self.fd, abi.KVM_SET_DEVICE_ATTR, ctypes.addressof(query))

    def interrupt(self, vector: int) -> None:
        irq = abi.kvm_interrupt(vector)
        _call(self.fd, abi.KVM_INTERRUPT, ctypes.addressof(irq))
        self.ready_for_interrupt = False   # one injection per entry

    def run(self) -> VmExit:
        """KVM_RUN once and decode why it returned (the only reader of kvm_run)."""
        ret = _ioctl(self.fd, abi.KVM_RUN, 0)
        run = self._run
        self.ready_for_interrupt = bool(run.ready_for_interrupt_injection)
        self.interrupts_enabled = bool(run.if_flag)
        if ret < 0:
            err = ctypes.get_errno()
            if err in (errno.EINTR, errno.EAGAIN):
                return Interrupted()
            raise KvmError("KVM_RUN", err)
        return self._decode(run)

    def _decode(self, run: abi.kvm_run) -> VmExit:
        reason = run.exit_reason
        ex = run.exit
        if reason == ExitReason.IO:
            io = ex.io
            if io.direction == abi.KVM_EXIT_IO_OUT:
                data = bytes(self._map[io.data_offset:io.data_offset + io.size * io.count])
                return IoOut(io.port, io.size, data, io.count)
            return IoIn(io.port, io.size, io.count, io.data_offset)
        if reason == ExitReason.MMIO:
            m = ex.mmio
            length = min(m.len, 8)
            if m.is_write:
                return MmioWrite(m.phys_addr, length, bytes(m.data[:length]))
            return MmioRead(m.phys_addr, length)
        if reason == ExitReason.HLT:
            return Hlt(bool(run.if_flag))
        if reason == ExitReason.SHUTDOWN:
            return Shutdown()
        if reason == ExitReason.FAIL_ENTRY:
            return FailEntry(ex.fail_entry.hardware_entry_failure_reason, ex.fail_entry.cpu)
        if reason == ExitReason.INTERNAL_ERROR:
            n = min(ex.internal.ndata, 16)
            return InternalError(ex.internal.suberror, tuple(ex.internal.data[:n]))
        if reason == ExitReason.SYSTEM_EVENT:
            n = min(ex.system_event.ndata, 16)
            return SystemEvent(ex.system_event.type, tuple(ex.system_event.data[:n]))
        if reason == ExitReason.IRQ_WINDOW_OPEN:
            return IrqWindowOpen()
        if reason == ExitReason.INTR:
            return Interrupted()
        return Unknown(reason, ex.hw.hardware_exit_reason)

    # --- kvm_run inputs -----------------------------------------------------
    def complete_io_in(self, exit: IoIn, data: bytes) -> None:
        """Give the guest the bytes its `in` reads; KVM picks them up on the next run()."""
        assert len(data) == exit.size * exit.count, (len(data), exit)
        self._map[exit.data_offset:exit.data_offset + len(data)] = data

    def set_immediate_exit(self, on: bool) -> None:
        """Safe from any thread: makes the next (or current, with a signal) KVM_RUN return EINTR."""
        self._run.immediate_exit = 1 if on else 0

    def set_request_interrupt_window(self, on: bool) -> None:
        self._run.request_interrupt_window = 1 if on else 0
