"""A VM on one node: RAM, vCPUs, their threads and run loops, the devices.

Each vCPU thread runs a small state machine:

    RUNNING --(exit)--> handle_exit() decides:
        Resume            -> RUNNING
        WaitPort (0xf7)   -> WAITING_PORT --(interrupt queued / already signalled)--> RUNNING
        WaitHlt (hlt,IF=1)-> WAITING_HLT  --(interrupt queued)--> RUNNING (it is then injected)
        Park (0xf5, hlt,IF=0) -> PARKED (the thread ends)
        GuestError        -> stop the VM with the documented status
    any state --(stop)--> DONE

handle_exit() is pure: it maps a typed exit to a decision, calling only the
PortIo seam, so it is tested without KVM.
"""
from __future__ import annotations

import enum
import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from hypervisor import boot, clock
from hypervisor.devices import (LOCAL_PORTS, PORT_PARK, PORT_WAIT, GuestIoError, InterruptRouter, LocalInterrupts,
                                PortIo, build_bus, describe_access)
from hypervisor.kvm import Kvm, KvmError, Vcpu
from hypervisor.kvm.abi import Cap, kvm_regs
from hypervisor.kvm.exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, IrqWindowOpen, MmioRead,
                                  MmioWrite, Shutdown, SystemEvent, Unknown, VmExit)
from hypervisor.loader import Image, guest_area
from hypervisor.memory import GuestMemoryError, GuestRam
from hypervisor.status import Status

# Exit statuses (guest ABI section 7).

KICK_SIGNAL = signal.SIGUSR1


class MachineError(Exception):
    """The host cannot run this VM (KVM missing or refusing, out of resources)."""


# --- decisions ---------------------------------------------------------------
@dataclass(frozen=True)
class Resume:
    in_data: bytes | None = None   # bytes answering an IoIn


@dataclass(frozen=True)
class WaitPort:
    pass


@dataclass(frozen=True)
class WaitHlt:
    pass


@dataclass(frozen=True)
class Park:
    pass


@dataclass(frozen=True)
class GuestError:
    status: int
    kind: str          # the kind of exit, e.g. "unhandled port I/O", "triple fault"
    detail: str = ""   # port or address and values


Decision = Resume | WaitPort | WaitHlt | Park | GuestError


def handle_exit(exit: VmExit, vcpu: int, io: PortIo) -> Decision:
    """What the run loop does after `exit` on vCPU `vcpu` (global index)."""
    if isinstance(exit, (Interrupted, IrqWindowOpen)):
        return Resume()
    if isinstance(exit, IoOut):
        if exit.port == PORT_PARK:
            return Park()
        if exit.port == PORT_WAIT:
            return WaitPort()
        try:
            for value in exit.values():
                io.io(vcpu, exit.port, exit.size, True, value)
        except GuestIoError as e:
            return GuestError(Status.GUEST_IO, str(e))
        return Resume()
    if isinstance(exit, IoIn):
        if exit.port in LOCAL_PORTS:
            return GuestError(Status.GUEST_IO, f"unhandled port I/O: {describe_access(exit.port, exit.size, False, 0)}")
        data = bytearray()
        try:
            for _ in range(exit.count):
                value = io.io(vcpu, exit.port, exit.size, False, 0) or 0
                data += value.to_bytes(exit.size, "little")
        except GuestIoError as e:
            return GuestError(Status.GUEST_IO, str(e))
        return Resume(bytes(data))
    if isinstance(exit, Hlt):
        return WaitHlt() if exit.interrupts_enabled else Park()
    if isinstance(exit, MmioRead):
        return GuestError(Status.GUEST_IO, "MMIO", f"read of {exit.length} bytes at {exit.address:#x} (outside RAM)")
    if isinstance(exit, MmioWrite):
        value = int.from_bytes(exit.data, "little")
        return GuestError(Status.GUEST_IO, "MMIO",
                          f"write of {exit.length} bytes {value:#x} at {exit.address:#x} (outside RAM)")
    if isinstance(exit, Shutdown):
        return GuestError(Status.TRIPLE_FAULT, "triple fault (shutdown exit)")
    if isinstance(exit, FailEntry):
        return GuestError(Status.ENTRY_FAILURE, "VM entry failure",
                          f"hardware reason {exit.hardware_reason:#x} on host cpu {exit.cpu}")
    if isinstance(exit, InternalError):
        words = " ".join(f"{d:#x}" for d in exit.data)
        return GuestError(Status.ENTRY_FAILURE, "KVM internal error",
                          f"suberror {exit.suberror}" + (f" data {words}" if words else ""))
    if isinstance(exit, SystemEvent):
        return GuestError(Status.ENTRY_FAILURE, "unexpected system event", f"type {exit.type}")
    if isinstance(exit, Unknown):
        return GuestError(Status.ENTRY_FAILURE, "unexpected exit",
                          f"reason {exit.reason} hardware reason {exit.hardware_reason:#x}")
    raise TypeError(f"not a VM exit: {exit!r}")


def format_registers(regs: kvm_regs) -> str:
    names = [field[0] for field in kvm_regs._fields_]
    return "\n".join("  " + " ".join(f"{n}={getattr(regs, n):#018x}" for n in names[i:i + 4])
                     for i in range(0, len(names), 4))


@dataclass(frozen=True)
class RunResult:
    status: int
    message: str
    error: bool = False   # True when `message` should be shown to the user (guest or host error)


class State(enum.Enum):
    RUNNING = "running"
    WAITING_PORT = "waiting on 0xf7"
    WAITING_HLT = "waiting in hlt"
    PARKED = "parked"
    DONE = "done"


class _Slot:
    """One local vCPU: its KVM object, interrupt controller and thread bookkeeping."""

    def __init__(self, index: int, vcpu: Vcpu) -> None:
        self.index = index
        self.vcpu = vcpu
        self.irq = LocalInterrupts()
        self.state = State.RUNNING
        self.thread: threading.Thread | None = None
        self.thread_id: int | None = None
        self.native_id: int | None = None     # the kernel's id of the thread: what userfaultfd reports
        self.in_run = False
        self.exited = False
        self.kick_lock = threading.Lock()


def _ignore_kick(signum: int, frame: object) -> None:
    """The kick signal's only job is to make KVM_RUN return EINTR."""


def _install_kick_handler() -> None:
    if signal.getsignal(KICK_SIGNAL) is _ignore_kick:
        return
    if threading.current_thread() is not threading.main_thread():
        raise MachineError("the first Machine must be started from the main thread (it installs a SIGUSR1 handler)")
    signal.signal(KICK_SIGNAL, _ignore_kick)


class Machine:
    """A VM whose vCPUs `local_vcpus` (default: all `vcpus`) run in this process."""

    def __init__(self, image: Image, *, vcpus: int, mem: int, local_vcpus: Iterable[int] | None = None,
                 write_memory: bool = True, ram: GuestRam | None = None, io: PortIo | None = None,
                 router: InterruptRouter | None = None, console: Callable[[bytes], None] | None = None,
                 verbose: bool = False, node: int | None = None,
                 on_all_parked: Callable[[], None] | None = None, kvm_path: str = "/dev/kvm",
                 on_vcpu_thread: Callable[[int, int], None] | None = None) -> None:
        self.vcpus = vcpus
        self.mem = mem
        self.local_vcpus = sorted(set(range(vcpus) if local_vcpus is None else local_vcpus))
        if not self.local_vcpus or any(not 0 <= i < vcpus for i in self.local_vcpus):
            raise MachineError(f"local vCPUs {self.local_vcpus} must be a non-empty subset of 0..{vcpus - 1}")
        low, high = guest_area(mem, vcpus)
        if high <= low:
            raise MachineError(f"{mem} bytes of RAM leave no room for the guest beside {vcpus} x 64 KiB stacks")
        self.image = image
        self.verbose = verbose
        self.node = node
        self.router: InterruptRouter = router or self
        self._console = console or _stdout_console
        self.io: PortIo = io or build_bus(self._console, self.stop, self.router, vcpus)
        self._on_all_parked = on_all_parked or (lambda: self.stop(0, "every vCPU parked"))
        # Called in each vCPU thread before its first KVM_RUN with (vCPU, native thread id).
        self._on_vcpu_thread = on_vcpu_thread
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._result: RunResult | None = None
        self._parked = 0
        self._started = False
        self._slots: dict[int, _Slot] = {}
        self._owns_ram = ram is None
        self.ram: GuestRam | None = ram
        self.written_pages: set[int] = set()
        self._kvm: Kvm | None = None
        try:
            self._create(write_memory, kvm_path)
        except MachineError:
            self.close()
            raise
        except (KvmError, GuestMemoryError, OSError) as e:
            self.close()
            raise MachineError(str(e)) from None

    def _create(self, write_memory: bool, kvm_path: str) -> None:
        self._kvm = kvm = Kvm(kvm_path)
        max_vcpus = kvm.check_extension(Cap.MAX_VCPUS) or kvm.check_extension(Cap.NR_VCPUS)
        if self.vcpus > max_vcpus:
            raise MachineError(f"KVM supports at most {max_vcpus} vCPUs per VM, {self.vcpus} asked")
        if not kvm.check_extension(Cap.IMMEDIATE_EXIT):
            raise MachineError("KVM lacks KVM_CAP_IMMEDIATE_EXIT, needed to stop vCPUs reliably")
        # No KVM_SET_TSS_ADDR: it only serves real-mode emulation, and vCPUs start in long mode.
        self._vm = kvm.create_vm()
        if self.ram is None:
            self.ram = GuestRam(self.mem)
        elif self.ram.size != self.mem:
            raise MachineError(f"RAM of {self.ram.size} bytes given for a {self.mem}-byte machine")
        self._vm.set_user_memory_region(0, 0, self.ram.size, self.ram.guest_addr)
        if write_memory:
            self.written_pages = boot.write_boot_area(self.ram) | self.image.write_to(self.ram)
        cpuid = kvm.get_supported_cpuid()
        for index in self.local_vcpus:
            vcpu = self._vm.create_vcpu(index)
            self._slots[index] = _Slot(index, vcpu)
            _set_apic_id(cpuid, index)
            vcpu.set_cpuid2(cpuid)
            vcpu.set_sregs(boot.initial_sregs(vcpu.get_sregs()))
            vcpu.set_regs(boot.initial_regs(boot.EntryState(index, self.vcpus, self.mem, self.image.entry)))

    # --- control (thread-safe) --------------------------------------------
    def stop(self, status: int, message: str = "", error: bool = False) -> None:
        """Stop the VM; the first call decides the result. Returns at once, never blocks on vCPUs."""
        with self._lock:
            if self._result is None:
                self._result = RunResult(status, message, error)
            self._stopping.set()
        for slot in self._slots.values():
            slot.irq.close()
            self._kick(slot)

    def tsc_offset(self) -> int:
        """The guest-TSC offset of this node's first vCPU (hypervisor/clock.py)."""
        return clock.offset_of(self._slots[self.local_vcpus[0]].vcpu)

    def align_tsc(self, offset: int) -> list[int]:
        """Every local vCPU gets `offset` before it runs; the offsets they report after."""
        assert not self._started, "a running vCPU's clock must not jump"
        return clock.align((slot.vcpu for slot in self._slots.values()), offset)

    def inject(self, vcpu: int, vector: int) -> None:
        """Queue `vector` for local vCPU `vcpu` and make it notice (guest ABI section 5)."""
        slot = self._slots.get(vcpu)
        if slot is None:
            raise MachineError(f"vcpu {vcpu} does not run on this node")
        slot.irq.queue(vector)
        self._kick(slot)

    def raise_interrupt(self, target_vcpu: int, vector: int) -> None:
        """InterruptRouter for a single node: every vCPU is local."""
        self.inject(target_vcpu, vector)

    def _kick(self, slot: _Slot) -> None:
        # immediate_exit covers a vCPU about to enter KVM_RUN: its loop clears the flag
        # before looking at pending work, so work queued before this line is seen either
        # by that look or by KVM_RUN returning at once. The signal covers one inside KVM_RUN.
        slot.vcpu.set_immediate_exit(True)
        with slot.kick_lock:
            if slot.in_run and not slot.exited and slot.thread_id is not None:
                signal.pthread_kill(slot.thread_id, KICK_SIGNAL)

    # --- running ------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            raise MachineError("machine already started")
        _install_kick_handler()
        self._started = True
        for slot in self._slots.values():
            slot.thread = threading.Thread(target=self._vcpu_main, args=(slot,), name=f"vcpu{slot.index}",
                                           daemon=True)
        for slot in self._slots.values():
            assert slot.thread is not None
            slot.thread.start()

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait for the VM to stop and every vCPU thread to end; None on timeout."""
        if not self._stopping.wait(timeout):
            return None
        for slot in self._slots.values():
            if slot.thread is None:      # start() was interrupted before making this vCPU's thread
                continue
            while slot.thread.is_alive():
                self._kick(slot)   # belt and braces: a vCPU must never keep the VM alive
                slot.thread.join(0.05)
        assert self._result is not None
        return self._result

    def run(self) -> RunResult:
        """Start, wait until the VM stops (Ctrl-C stops it with 130) and return the result."""
        try:
            # start() is inside: vCPU 0 may already print while vCPU 1's thread starts, and a
            # Ctrl-C then must stop the started ones, not escape past them.
            self.start()
            while (result := self.wait(0.25)) is None:
                pass
        except KeyboardInterrupt:
            self.stop(Status.INTERRUPTED, "interrupted")
            result = self.wait()
            assert result is not None
        return result

    @property
    def result(self) -> RunResult | None:
        return self._result

    def states(self) -> dict[int, State]:
        return {i: s.state for i, s in self._slots.items()}

    def vcpu_threads(self) -> dict[int, int]:
        """Kernel thread id -> vCPU index of every local vCPU thread started so far."""
        return {slot.native_id: slot.index for slot in self._slots.values() if slot.native_id is not None}

    def close(self) -> None:
        for slot in self._slots.values():
            if slot.thread is not None and slot.thread.is_alive():
                raise MachineError("close() while vCPU threads run: stop() and wait() first")
            slot.vcpu.close()
        self._slots.clear()
        if getattr(self, "_vm", None) is not None:
            self._vm.close()
        if self._kvm is not None:
            self._kvm.close()
        if self._owns_ram and self.ram is not None:
            self.ram.close()
            self.ram = None

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.stop(Status.INTERRUPTED, "machine closed")
            self.wait()
        self.close()

    # --- the vCPU thread ------------------------------------------------------
    def _who(self, index: int) -> str:
        return f"vcpu {index}" if self.node is None else f"node {self.node} vcpu {index}"

    def _vcpu_main(self, slot: _Slot) -> None:
        slot.thread_id = threading.get_ident()
        slot.native_id = threading.get_native_id()
        try:
            if self._on_vcpu_thread is not None:
                self._on_vcpu_thread(slot.index, slot.native_id)
            while slot.state is not State.DONE:
                if self._stopping.is_set():
                    slot.state = State.DONE
                elif slot.state is State.RUNNING:
                    slot.state = self._step(slot)
                elif slot.state is State.WAITING_PORT:
                    # A vector the guest could take right now must be injected, not slept on:
                    # the 0xf7 loop is waiting for exactly that delivery.
                    slot.irq.wait_port(deliverable_now=slot.vcpu.interrupts_enabled)
                    slot.state = State.RUNNING
                elif slot.state is State.WAITING_HLT:
                    slot.irq.wait_hlt()
                    slot.state = State.RUNNING
                elif slot.state is State.PARKED:
                    self._count_parked()
                    slot.state = State.DONE
        except KvmError as e:
            self.stop(Status.HOST, f"{self._who(slot.index)}: host error: {e}", error=True)
        except Exception as e:   # a bug here must stop the VM, not leave it half-running
            self.stop(Status.HOST, f"{self._who(slot.index)}: internal error: {type(e).__name__}: {e}", error=True)
        finally:
            with slot.kick_lock:
                slot.exited = True

    def _step(self, slot: _Slot) -> State:
        vcpu = slot.vcpu
        vcpu.set_immediate_exit(False)
        if self._stopping.is_set():
            return State.DONE
        self._offer_interrupt(slot)
        slot.in_run = True
        try:
            exit = vcpu.run()
        finally:
            slot.in_run = False
        decision = handle_exit(exit, slot.index, self.io)
        if isinstance(decision, Resume):
            if decision.in_data is not None:
                assert isinstance(exit, IoIn)
                vcpu.complete_io_in(exit, decision.in_data)
            return State.RUNNING
        if isinstance(decision, WaitPort):
            return State.WAITING_PORT
        if isinstance(decision, WaitHlt):
            return State.WAITING_HLT
        if isinstance(decision, Park):
            return State.PARKED
        assert isinstance(decision, GuestError)
        self.stop(decision.status, self._error_line(slot, decision), error=True)
        return State.DONE

    def _offer_interrupt(self, slot: _Slot) -> None:
        """Inject the highest queued vector if the guest can take it now, else ask KVM to tell us when."""
        vcpu = slot.vcpu
        if not slot.irq.has_pending():
            vcpu.set_request_interrupt_window(False)
            return
        if vcpu.ready_for_interrupt and vcpu.interrupts_enabled:
            vector = slot.irq.take()
            if vector is not None:
                vcpu.interrupt(vector)
        vcpu.set_request_interrupt_window(slot.irq.has_pending())

    def _error_line(self, slot: _Slot, error: GuestError) -> str:
        try:
            regs: kvm_regs | None = slot.vcpu.get_regs()
        except KvmError:
            regs = None
        rip = f"rip {regs.rip:#x}" if regs is not None else "rip unknown"
        detail = f": {error.detail}" if error.detail else ""
        line = f"{self._who(slot.index)}: {error.kind}{detail}, {rip}"
        if self.verbose and regs is not None:
            line += "\n" + format_registers(regs)
        return line

    def _count_parked(self) -> None:
        with self._lock:
            self._parked += 1
            everyone = self._parked == len(self._slots)
        if everyone:
            self._on_all_parked()


def _set_apic_id(cpuid, index: int) -> None:  # type: ignore[no-untyped-def]
    """Make CPUID's initial APIC id match the vCPU index, as a guest reading it expects."""
    for i in range(cpuid.nent):
        e = cpuid.entries[i]
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | ((index & 0xFF) << 24)
        elif e.function in (0xB, 0x1F):
            e.edx = index


def _stdout_console(data: bytes) -> None:
    os.write(1, data)


__all__ = ["Machine", "MachineError", "RunResult", "State", "handle_exit", "Decision", "Resume", "WaitPort",
           "WaitHlt", "Park", "GuestError", "format_registers"]
