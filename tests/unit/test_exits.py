"""handle_exit, the pure exit dispatcher, fed synthetic exits (no KVM)."""
from __future__ import annotations

import pytest

from hypervisor.devices import GuestIoError
from hypervisor.kvm.exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, IrqWindowOpen, MmioRead,
                                  MmioWrite, Shutdown, SystemEvent, Unknown)
from hypervisor.machine import GuestError, Park, Resume, WaitHlt, WaitPort, handle_exit


class FakeIo:
    """Records accesses; port 0x3fd reads 0x60; port 0x80 is unhandled."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, bool, int]] = []

    def io(self, vcpu: int, port: int, size: int, is_write: bool, value: int) -> int | None:
        self.calls.append((vcpu, port, size, is_write, value))
        if port == 0x80:
            raise GuestIoError(f"unhandled port I/O: port {port:#x}")
        return None if is_write else 0x60


def test_out_goes_to_the_io_seam_and_resumes() -> None:
    io = FakeIo()
    assert handle_exit(IoOut(0x3F8, 1, b"A"), 3, io) == Resume()
    assert io.calls == [(3, 0x3F8, 1, True, 0x41)]


def test_string_out_is_split_into_items() -> None:
    io = FakeIo()
    assert handle_exit(IoOut(0x3F8, 2, b"abcd", count=2), 0, io) == Resume()
    assert [c[4] for c in io.calls] == [0x6261, 0x6463]


def test_in_returns_the_bytes_for_kvm_run() -> None:
    io = FakeIo()
    assert handle_exit(IoIn(0x3FD, 1), 1, io) == Resume(b"\x60")
    assert handle_exit(IoIn(0x3FD, 4, count=2), 1, io) == Resume(b"\x60\0\0\0" * 2)


def test_park_and_wait_ports_stay_local() -> None:
    io = FakeIo()
    assert handle_exit(IoOut(0xF5, 4, b"\0\0\0\0"), 0, io) == Park()
    assert handle_exit(IoOut(0xF5, 1, b"\0"), 0, io) == Park()
    assert handle_exit(IoOut(0xF7, 2, b"\0\0"), 0, io) == WaitPort()
    assert io.calls == []


def test_reading_a_local_port_is_a_guest_error() -> None:
    decision = handle_exit(IoIn(0xF7, 1), 0, FakeIo())
    assert isinstance(decision, GuestError) and decision.status == 4 and "0xf7" in decision.kind


def test_unhandled_port_is_status_4() -> None:
    for exit in (IoOut(0x80, 1, b"\x55"), IoIn(0x80, 1)):
        decision = handle_exit(exit, 0, FakeIo())
        assert isinstance(decision, GuestError)
        assert decision.status == 4 and "0x80" in decision.kind


def test_hlt_parks_with_interrupts_off_and_waits_with_them_on() -> None:
    assert handle_exit(Hlt(interrupts_enabled=False), 0, FakeIo()) == Park()
    assert handle_exit(Hlt(interrupts_enabled=True), 0, FakeIo()) == WaitHlt()


@pytest.mark.parametrize("exit", [Interrupted(), IrqWindowOpen()])
def test_kicks_and_windows_resume(exit: object) -> None:
    assert handle_exit(exit, 0, FakeIo()) == Resume()   # type: ignore[arg-type]


@pytest.mark.parametrize("exit, status, words", [
    (MmioRead(0xFEE00000, 4), 4, ["MMIO", "read of 4 bytes at 0xfee00000"]),
    (MmioWrite(0xFEC00000, 2, b"\x34\x12"), 4, ["MMIO", "0x1234", "0xfec00000"]),
    (Shutdown(), 5, ["triple fault"]),
    (FailEntry(0x21, 1), 6, ["VM entry failure", "0x21"]),
    (InternalError(1, (7, 8)), 6, ["internal error", "suberror 1", "0x7 0x8"]),
    (SystemEvent(2, ()), 6, ["system event", "type 2"]),
    (Unknown(99, 0x30), 6, ["unexpected exit", "reason 99"]),
])
def test_error_exits_map_to_documented_statuses(exit: object, status: int, words: list[str]) -> None:
    decision = handle_exit(exit, 2, FakeIo())   # type: ignore[arg-type]
    assert isinstance(decision, GuestError) and decision.status == status
    text = f"{decision.kind}: {decision.detail}"
    for word in words:
        assert word in text


def test_not_an_exit_is_a_bug() -> None:
    with pytest.raises(TypeError):
        handle_exit("exit", 0, FakeIo())   # type: ignore[arg-type]


def test_missing_kvm_is_a_host_error_naming_the_device() -> None:
    from hypervisor.loader import parse_image
    from hypervisor.machine import Machine, MachineError
    from test_loader import CODE, make_elf
    image = parse_image(make_elf([(2 << 20, CODE, 2)]), 64 << 20, 1)
    with pytest.raises(MachineError, match="/nonexistent/kvm.*ENOENT"):
        Machine(image, vcpus=1, mem=64 << 20, kvm_path="/nonexistent/kvm")
