"""Guest RAM: one memfd mapped twice.

The guest view is what KVM sees (memslot 0 at guest-physical 0) and what the
DSM core registers with userfaultfd, so touching it from the VMM could fault
into the DSM. The VMM view maps the same pages without userfaultfd; the VMM
writes the boot tables and the image there and the DSM core moves page bytes
through it. Python never reads or writes the guest view.
"""
from __future__ import annotations

import ctypes
import os

from hypervisor.native_consts import PAGE_SIZE   # the unit the DSM shares RAM in (native/engine.h)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED = 0x01
MAP_NORESERVE = 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value
MADV_NOHUGEPAGE = 15


class GuestMemoryError(Exception):
    """Guest RAM could not be created or an access fell outside it."""




def _map(fd: int, size: int) -> int:
    addr = _libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise GuestMemoryError(f"mmap of {size} bytes of guest RAM failed: {os.strerror(err)}")
    return int(addr)


class GuestRam:
    """`size` bytes of guest RAM: fd, size, guest_addr, vmm_addr."""

    def __init__(self, size: int, name: str = "ivyvm-ram") -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise GuestMemoryError(f"guest RAM size {size} is not a positive multiple of {PAGE_SIZE}")
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.guest_addr = 0
        self.vmm_addr = 0
        try:
            os.ftruncate(self.fd, size)
            self.guest_addr = _map(self.fd, size)
            self.vmm_addr = _map(self.fd, size)
            # 4 KiB granularity is what the DSM shares; a THP would make KVM
            # map (and the DSM chase) 2 MiB at a time.
            if _libc.madvise(self.guest_addr, size, MADV_NOHUGEPAGE) != 0:
                err = ctypes.get_errno()
                raise GuestMemoryError(f"madvise(MADV_NOHUGEPAGE) on guest RAM failed: {os.strerror(err)}")
        except BaseException:
            self.close()
            raise

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise GuestMemoryError(f"access [{offset:#x}, {offset + length:#x}) outside guest RAM of {self.size:#x} bytes")

    def write(self, offset: int, data: bytes) -> None:
        """Write bytes at a guest-physical address through the VMM view."""
        self._check(offset, len(data))
        ctypes.memmove(self.vmm_addr + offset, data, len(data))

    def read(self, offset: int, length: int) -> bytes:
        """Read bytes at a guest-physical address through the VMM view."""
        self._check(offset, length)
        return ctypes.string_at(self.vmm_addr + offset, length)

    def close(self) -> None:
        for attr in ("guest_addr", "vmm_addr"):
            addr = getattr(self, attr)
            if addr:
                _libc.munmap(addr, self.size)
                setattr(self, attr, 0)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "GuestRam":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pages_of(start: int, length: int) -> range:
    """Page numbers covering [start, start + length)."""
    if length <= 0:
        return range(0)
    return range(start // PAGE_SIZE, (start + length - 1) // PAGE_SIZE + 1)
