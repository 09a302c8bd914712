"""Typed VM exits: what Vcpu.run() returns.

Each exit is an immutable value decoded from kvm_run by Vcpu.run(), the only
reader of kvm_run, so the run loop and its tests never touch the raw struct.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IoIn:
    """The guest reads `count` items of `size` bytes from `port` (count > 1 for `rep ins`)."""
    port: int
    size: int
    count: int = 1
    data_offset: int = 0  # where in kvm_run the answer goes; used by Vcpu.complete_io_in


@dataclass(frozen=True)
class IoOut:
    """The guest writes `data` (count items of size bytes) to `port`."""
    port: int
    size: int
    data: bytes
    count: int = 1

    def values(self) -> list[int]:
        return [int.from_bytes(self.data[i * self.size:(i + 1) * self.size], "little")
                for i in range(self.count)]


@dataclass(frozen=True)
class MmioRead:
    address: int
    length: int


@dataclass(frozen=True)
class MmioWrite:
    address: int
    length: int
    data: bytes


@dataclass(frozen=True)
class Hlt:
    interrupts_enabled: bool  # RFLAGS.IF when the vCPU executed hlt


@dataclass(frozen=True)
class Shutdown:
    """Triple fault (or a shutdown the CPU could not survive)."""


@dataclass(frozen=True)
class FailEntry:
    hardware_reason: int
    cpu: int


@dataclass(frozen=True)
class InternalError:
    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True)
class SystemEvent:
    type: int
    data: tuple[int, ...]


@dataclass(frozen=True)
class IrqWindowOpen:
    """The guest can take an interrupt now (we asked with request_interrupt_window)."""


@dataclass(frozen=True)
class Interrupted:
    """KVM_RUN returned EINTR: a signal or immediate_exit kicked the vCPU out."""


@dataclass(frozen=True)
class Unknown:
    reason: int
    hardware_reason: int = 0


VmExit = (IoIn | IoOut | MmioRead | MmioWrite | Hlt | Shutdown | FailEntry | InternalError
          | SystemEvent | IrqWindowOpen | Interrupted | Unknown)
