"""The port bus, the devices and the local interrupt controller (guest ABI sections 4-5)."""
from __future__ import annotations

import threading
import time

import pytest

from hypervisor.devices import (BusError, ExitPort, GuestIoError, InterruptPort, LocalInterrupts, PortBus, Serial,
                                build_bus)


class Dev:
    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, vcpu: int, port: int, size: int) -> int:
        return 0x1234_5678

    def write(self, vcpu: int, port: int, size: int, value: int) -> None:
        self.writes.append((port, size, value))


def test_bus_rejects_overlaps() -> None:
    bus = PortBus()
    bus.register(0x3F8, 8, Dev(), "COM1")
    with pytest.raises(BusError, match="overlap COM1"):
        bus.register(0x3FF, 1, Dev(), "late")
    with pytest.raises(BusError, match="overlap COM1"):
        bus.register(0x3F0, 0x10, Dev(), "wide")
    with pytest.raises(BusError):
        bus.register(0x100, 0, Dev(), "empty")
    with pytest.raises(BusError):
        bus.register(0xFFFF, 2, Dev(), "wraps")
    bus.register(0x3F7, 1, Dev(), "neighbour below")   # adjacent ranges are fine
    bus.register(0x400, 1, Dev(), "neighbour above")


def test_bus_routes_and_masks_reads() -> None:
    bus, dev = PortBus(), Dev()
    bus.register(0x10, 4, dev, "dev")
    assert bus.io(0, 0x12, 2, True, 7) is None
    assert dev.writes == [(0x12, 2, 7)]
    assert bus.io(0, 0x13, 1, False, 0) == 0x78
    with pytest.raises(GuestIoError, match="unhandled port I/O: read of 1 byte from port 0x14"):
        bus.io(0, 0x14, 1, False, 0)


def make_bus() -> tuple[PortBus, bytearray, list[tuple[int, str]], list[tuple[int, int]]]:
    out, stops, irqs = bytearray(), [], []

    class Router:
        def raise_interrupt(self, target: int, vector: int) -> None:
            irqs.append((target, vector))

    bus = build_bus(out.extend, lambda status, msg: stops.append((status, msg)), Router(), vcpus=4)
    return bus, out, stops, irqs


def test_serial() -> None:
    bus, out, _, _ = make_bus()
    for ch in b"hi\n":
        bus.io(0, 0x3F8, 1, True, ch)
    assert bytes(out) == b"hi\n"
    assert bus.io(1, 0x3FD, 1, False, 0) == 0x60
    for port in (0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FC, 0x3FE, 0x3FF):
        assert bus.io(0, port, 1, False, 0) == 0
    bus.io(0, 0x3F9, 1, True, 0xFF)      # ignored
    bus.io(0, 0x3FB, 1, True, 0x80)
    assert bytes(out) == b"hi\n"


def test_exit_port_stops_with_the_low_byte() -> None:
    bus, _, stops, _ = make_bus()
    bus.io(2, 0xF4, 4, True, 0x1_2A)
    assert stops[0][0] == 0x2A and "vcpu 2" in stops[0][1]
    with pytest.raises(GuestIoError):
        bus.io(0, 0xF4, 4, False, 0)


def test_interrupt_port_validates_and_routes() -> None:
    bus, _, _, irqs = make_bus()
    bus.io(0, 0xF6, 4, True, (0x40 << 8) | 3)
    bus.io(1, 0xF6, 4, True, (255 << 8) | 0)
    assert irqs == [(3, 0x40), (0, 255)]
    with pytest.raises(GuestIoError, match="vector 31 is below 32"):
        bus.io(0, 0xF6, 4, True, (31 << 8) | 1)
    with pytest.raises(GuestIoError, match="vcpu 4 does not exist"):
        bus.io(0, 0xF6, 4, True, (0x40 << 8) | 4)
    with pytest.raises(GuestIoError, match="bad 0xf6 write"):
        bus.io(0, 0xF6, 1, True, 0x40)
    assert len(irqs) == 2


def test_local_ports_are_not_on_the_bus() -> None:
    bus, _, _, _ = make_bus()
    for port in (0xF5, 0xF7):
        with pytest.raises(GuestIoError):
            bus.io(0, port, 1, True, 0)


def test_controller_delivers_highest_first_without_duplicates() -> None:
    irq = LocalInterrupts()
    assert irq.queue(0x40) and irq.queue(0x42) and irq.queue(0x41)
    assert not irq.queue(0x42)                 # already queued: not twice
    assert irq.pending() == [0x42, 0x41, 0x40]
    assert [irq.take(), irq.take()] == [0x42, 0x41]
    assert irq.queue(0x42)                     # delivered, so it may be queued again
    assert [irq.take(), irq.take(), irq.take()] == [0x42, 0x40, None]
    with pytest.raises(ValueError):
        irq.queue(31)


def test_wait_returns_at_once_when_queued_since_the_last_wait() -> None:
    irq = LocalInterrupts()
    irq.queue(0x40)
    irq.take()                                  # delivered before the guest reached 0xf7
    assert irq.wait_port(timeout=0)             # the wake-up is not lost
    assert not irq.wait_port(timeout=0.05)      # consumed: the next write sleeps


def test_wait_sleeps_until_a_queue() -> None:
    irq = LocalInterrupts()
    timer = threading.Timer(0.1, irq.queue, args=(0x50,))
    start = time.monotonic()
    timer.start()
    assert irq.wait_port(timeout=5)
    assert 0.05 < time.monotonic() - start < 4


def test_wait_does_not_sleep_on_a_deliverable_vector() -> None:
    irq = LocalInterrupts()
    irq.queue(0x40)
    assert irq.wait_port(timeout=0)             # consumes the signal; the vector is still queued
    assert not irq.wait_port(deliverable_now=False, timeout=0.02)
    assert irq.wait_port(deliverable_now=True, timeout=0)


def test_hlt_wait_needs_a_queued_vector() -> None:
    irq = LocalInterrupts()
    assert not irq.wait_hlt(timeout=0.02)
    irq.queue(0x60)
    assert irq.wait_hlt(timeout=0)


def test_close_wakes_every_waiter() -> None:
    irq = LocalInterrupts()
    results: list[bool] = []
    waiters = [threading.Thread(target=lambda: results.append(irq.wait_port())),
               threading.Thread(target=lambda: results.append(irq.wait_hlt()))]
    for t in waiters:
        t.start()
    time.sleep(0.05)
    irq.close()
    for t in waiters:
        t.join(2)
        assert not t.is_alive()
    assert results == [False, False]


def test_serial_and_ports_are_independent_objects() -> None:
    out: list[bytes] = []
    Serial(out.append).write(0, 0x3F8, 1, 0x141)
    assert out == [b"\x41"]
    stops: list[tuple[int, str]] = []
    ExitPort(lambda s, m: stops.append((s, m))).write(0, 0xF4, 1, 3)
    assert stops[0][0] == 3
    with pytest.raises(GuestIoError):
        InterruptPort(type("R", (), {"raise_interrupt": lambda *a: None})(), 1).read(0, 0xF6, 4)
