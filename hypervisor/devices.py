"""Port I/O devices (guest ABI sections 4 and 5) and the bus that routes to them.

The run loop reaches devices only through one seam, `PortIo.io(vcpu, port, size,
is_write, value)`, and interrupts only through `InterruptRouter.raise_interrupt`,
so a node that does not own the devices can substitute forwarding versions.
Ports 0xf5 (park) and 0xf7 (wait) concern only the calling vCPU: the run loop
handles them itself on whatever node the vCPU runs, and they never reach a bus.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol

PORT_PARK = 0xF5
PORT_WAIT = 0xF7
LOCAL_PORTS = frozenset({PORT_PARK, PORT_WAIT})
MIN_VECTOR, MAX_VECTOR = 32, 255


class BusError(Exception):
    """A device registration is invalid (overlap, empty or out-of-range range)."""


class GuestIoError(Exception):
    """The guest did port I/O the ABI does not allow; the message names port, width and value."""


class PortIo(Protocol):
    def io(self, vcpu: int, port: int, size: int, is_write: bool, value: int) -> int | None:
        """Perform one access; return the value read (reads) or None (writes)."""


class InterruptRouter(Protocol):
    def raise_interrupt(self, target_vcpu: int, vector: int) -> None:
        """Queue `vector` for `target_vcpu`, wherever it runs."""


class PortDevice(Protocol):
    def read(self, vcpu: int, port: int, size: int) -> int: ...
    def write(self, vcpu: int, port: int, size: int, value: int) -> None: ...


def describe_access(port: int, size: int, is_write: bool, value: int) -> str:
    unit = "byte" if size == 1 else "bytes"
    if is_write:
        return f"write of {size} {unit} {value:#x} to port {port:#x}"
    return f"read of {size} {unit} from port {port:#x}"


@dataclass(frozen=True)
class _Range:
    base: int
    length: int
    device: PortDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.length


class PortBus:
    """Port ranges mapped to devices; implements PortIo."""

    def __init__(self) -> None:
        self._ranges: list[_Range] = []

    def register(self, base: int, length: int, device: PortDevice, name: str) -> None:
        if length <= 0 or base < 0 or base + length > 0x10000:
            raise BusError(f"{name}: port range [{base:#x}, {base + length:#x}) is empty or outside 0..0xffff")
        for r in self._ranges:
            if base < r.end and r.base < base + length:
                raise BusError(f"{name}: ports [{base:#x}, {base + length:#x}) overlap {r.name} "
                               f"[{r.base:#x}, {r.end:#x})")
        self._ranges.append(_Range(base, length, device, name))

    def find(self, port: int) -> tuple[PortDevice, str] | None:
        for r in self._ranges:
            if r.base <= port < r.end:
                return r.device, r.name
        return None

    def io(self, vcpu: int, port: int, size: int, is_write: bool, value: int = 0) -> int | None:
        found = self.find(port)
        if found is None:
            raise GuestIoError(f"unhandled port I/O: {describe_access(port, size, is_write, value)}")
        device, _ = found
        if is_write:
            device.write(vcpu, port, size, value)
            return None
        return device.read(vcpu, port, size) & ((1 << (8 * size)) - 1)


class Serial:
    """COM1 as a write-only console: enough of a 16550 for polling UART code."""
    BASE = 0x3F8
    LENGTH = 8
    LINE_STATUS = BASE + 5
    LSR_THR_EMPTY = 0x60   # THRE | TEMT: always ready to send

    def __init__(self, console: Callable[[bytes], None]) -> None:
        self._console = console

    def read(self, vcpu: int, port: int, size: int) -> int:
        return self.LSR_THR_EMPTY if port == self.LINE_STATUS else 0

    def write(self, vcpu: int, port: int, size: int, value: int) -> None:
        if port == self.BASE:
            self._console(bytes([value & 0xFF]))


class ExitPort:
    """0xf4: the guest stops the whole VM with a status."""
    PORT = 0xF4

    def __init__(self, stop: Callable[[int, str], None]) -> None:
        self._stop = stop

    def read(self, vcpu: int, port: int, size: int) -> int:
        raise GuestIoError(f"unhandled port I/O: {describe_access(port, size, False, 0)} (0xf4 is write-only)")

    def write(self, vcpu: int, port: int, size: int, value: int) -> None:
        self._stop(value & 0xFF, f"vcpu {vcpu} exited with status {value & 0xFF}")


class InterruptPort:
    """0xf6: (vector << 8) | target_vcpu queues an interrupt for a vCPU."""
    PORT = 0xF6

    def __init__(self, router: InterruptRouter, vcpus: int) -> None:
        self._router = router
        self._vcpus = vcpus

    def read(self, vcpu: int, port: int, size: int) -> int:
        raise GuestIoError(f"unhandled port I/O: {describe_access(port, size, False, 0)} (0xf6 is write-only)")

    def write(self, vcpu: int, port: int, size: int, value: int) -> None:
        vector, target = (value >> 8) & 0xFF, value & 0xFF
        if size < 2 or value >> 16:
            raise GuestIoError(f"bad 0xf6 write: {describe_access(port, size, True, value)}; "
                               "expected a 32-bit (vector << 8) | target")
        if vector < MIN_VECTOR:
            raise GuestIoError(f"bad 0xf6 write {value:#x}: vector {vector} is below {MIN_VECTOR}")
        if target >= self._vcpus:
            raise GuestIoError(f"bad 0xf6 write {value:#x}: vcpu {target} does not exist "
                               f"(the VM has {self._vcpus})")
        self._router.raise_interrupt(target, vector)


def build_bus(console: Callable[[bytes], None], stop: Callable[[int, str], None],
              router: InterruptRouter, vcpus: int) -> PortBus:
    """The devices of node 0, one registration per line."""
    bus = PortBus()
    bus.register(Serial.BASE, Serial.LENGTH, Serial(console), "COM1")              # console out, LSR reads 0x60
    bus.register(ExitPort.PORT, 1, ExitPort(stop), "exit")                          # stop the VM with a status
    bus.register(InterruptPort.PORT, 1, InterruptPort(router, vcpus), "interrupt")  # send an interrupt to a vCPU
    # 0xf5 (park) and 0xf7 (wait for an interrupt) are LOCAL_PORTS: handled by the vCPU's run loop.
    return bus


class LocalInterrupts:
    """One vCPU's interrupt controller: the queued vectors and the 0xf7 wake-up flag.

    `signalled` records "an interrupt was queued since the last 0xf7 write", which is
    what makes `while (!seen) outb(0xf7, 0)` immune to lost wake-ups: an interrupt
    that lands between the guest's check and its write leaves the flag set, so the
    write returns at once instead of sleeping.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._signalled = False
        self._closed = False

    def queue(self, vector: int) -> bool:
        """Queue a vector; False if it was already queued (it is not queued twice)."""
        if not MIN_VECTOR <= vector <= MAX_VECTOR:
            raise ValueError(f"vector {vector} outside {MIN_VECTOR}..{MAX_VECTOR}")
        with self._cond:
            fresh = vector not in self._pending
            self._pending.add(vector)
            self._signalled = True
            self._cond.notify_all()
            return fresh

    def has_pending(self) -> bool:
        with self._cond:
            return bool(self._pending)

    def pending(self) -> list[int]:
        """Queued vectors, highest (delivered first) first."""
        with self._cond:
            return sorted(self._pending, reverse=True)

    def take(self) -> int | None:
        """Remove and return the highest queued vector, the one to inject now."""
        with self._cond:
            if not self._pending:
                return None
            vector = max(self._pending)
            self._pending.discard(vector)
            return vector

    def wait_port(self, deliverable_now: bool = False, timeout: float | None = None) -> bool:
        """A 0xf7 write: return at once if signalled since the last one, else sleep until a queue.

        With `deliverable_now` (the guest has IF=1) a vector still queued also returns at
        once: the caller injects it, which is the event the guest is waiting for.
        Returns False only on timeout or close (the VM is stopping).
        """
        def ready() -> bool:
            return self._signalled or self._closed or (deliverable_now and bool(self._pending))
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                return False
            self._signalled = False
            return not self._closed

    def wait_hlt(self, timeout: float | None = None) -> bool:
        """hlt with IF=1: sleep until a vector is queued (it is then injected)."""
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._pending) or self._closed, timeout) and not self._closed

    def close(self) -> None:
        """Wake every waiter for good: the VM is stopping."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
