"""Guests on real KVM: every program with 1, 2 and 4 vCPUs, the error paths, and stopping.

Programs from guest/ (built by `make guests`) check the whole ABI end to end; a few
hand-assembled images (raw x86-64 bytes in an ELF built here) pin single behaviours.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, guest_elf, requires_kvm
from hypervisor.loader import EHDR, PHDR, Image, load_image, parse_image
from hypervisor.machine import Machine, RunResult, State
from hypervisor.memory import PAGE_SIZE

pytestmark = requires_kvm

MIB = 1 << 20
ENTRY = 2 * MIB


def tiny_image(code: bytes, mem: int = 64 * MIB, vcpus: int = 1) -> Image:
    """An image whose only segment is `code` at 2 MiB."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    offset = EHDR.size + PHDR.size
    elf = (EHDR.pack(ident, 2, 62, 1, ENTRY, EHDR.size, 0, 0, EHDR.size, PHDR.size, 1, 64, 0, 0)
           + PHDR.pack(1, 5, offset, ENTRY, ENTRY, len(code), len(code), 0x1000) + code)
    return parse_image(elf, mem, vcpus)


SPIN = bytes.fromhex("ebfe")                                  # jmp .
PARK = bytes.fromhex("66baf500 ee")                           # outb 0xf5
HLT_IF0 = bytes.fromhex("f4")                                 # hlt, interrupts off: park
STI_HLT = bytes.fromhex("fb f4 ebfd")                         # sti; 1: hlt; jmp 1b
WAIT_LOOP = bytes.fromhex("66baf700 ee ebfd")                 # 1: outb 0xf7; jmp 1b
LSR_EXIT = bytes.fromhex("66bafd03 ec 0fb6c0 66baf400 ef")    # exit(inb(0x3fd))
BAD_IPI = bytes.fromhex("66baf600 b801100000 ef")             # outl 0xf6, vector 0x10 -> vcpu 1
READ_EXIT_PORT = bytes.fromhex("66baf400 ed")                 # inl 0xf4
UD2 = bytes.fromhex("0f0b")                                   # no IDT: triple fault
# The last vCPU exits with (rsp >> 16) & 0xff, all others park: checks rdi, rsi and rsp.
REGS = bytes.fromhex("488d46ff 4839c7 750c 4889e0 48c1e810 66baf400 ef 66baf500 ee")


def boot(image: Image, vcpus: int = 1, mem: int = 64 * MIB, verbose: bool = False) -> tuple[RunResult, bytes]:
    out = bytearray()
    lock = threading.Lock()

    def console(data: bytes) -> None:
        with lock:
            out.extend(data)

    with Machine(image, vcpus=vcpus, mem=mem, console=console, verbose=verbose) as machine:
        result = machine.run()
    return result, bytes(out)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "hypervisor.cli", *args], capture_output=True, env=env,
                          timeout=timeout, cwd=ROOT)


VCPUS = [1, 2, 4]


@pytest.mark.parametrize("vcpus", VCPUS)
def test_hello(vcpus: int) -> None:
    result, out = boot(load_image(guest_elf("hello"), 64 * MIB, vcpus), vcpus)
    text = out.decode()
    assert result.status == 0 and not result.error, result
    for i in range(vcpus):
        assert f"vCPU {i} of {vcpus}" in text
    assert re.search(r"^PASS", text, re.M), text


# Every program in guest/programs/ except the deliberately faulty ones, so a new program is
# covered as soon as it exists; the core three are required even if their sources moved.
PROGRAMS = sorted({"hello", "smp_counter", "memtest"}
                  | {p.stem for p in (ROOT / "guest" / "programs").glob("*.c") if not p.stem.startswith("faulty")})


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("vcpus", VCPUS)
def test_program_passes(program: str, vcpus: int) -> None:
    result, out = boot(load_image(guest_elf(program), 64 * MIB, vcpus), vcpus)
    text = out.decode()
    assert re.search(rf"^PASS {program}", text, re.M), text
    assert "FAIL" not in text
    assert (result.status, result.error) == (0, False), result


@pytest.mark.parametrize("vcpus", VCPUS)
def test_cli_smp_counter(vcpus: int) -> None:
    proc = cli("run", str(guest_elf("smp_counter")), "--vcpus", str(vcpus))
    assert proc.returncode == 0, proc.stderr
    assert re.search(rb"^PASS smp_counter", proc.stdout, re.M), proc.stdout
    assert proc.stderr == b""


def test_cli_hello_with_more_memory() -> None:
    proc = cli("run", str(guest_elf("hello")), "--vcpus", "2", "--mem", "256M")
    assert proc.returncode == 0, proc.stderr
    assert b"vCPU 1 of 2" in proc.stdout and re.search(rb"^PASS", proc.stdout, re.M)


ERROR_LINE = r"^ivyvm: vcpu \d+: {kind}.*, rip 0x[0-9a-f]+$"


@pytest.mark.parametrize("vcpus", VCPUS)
def test_cli_faulty_port(vcpus: int) -> None:
    proc = cli("run", str(guest_elf("faulty_port")), "--vcpus", str(vcpus))
    assert proc.returncode == 4
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert re.match(ERROR_LINE.format(kind="unhandled port I/O: write of .* to port 0x[0-9a-f]+"), lines[0])


@pytest.mark.parametrize("vcpus", VCPUS)
def test_cli_faulty_triple(vcpus: int) -> None:
    proc = cli("run", str(guest_elf("faulty_triple")), "--vcpus", str(vcpus))
    assert proc.returncode == 5
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and re.match(ERROR_LINE.format(kind="triple fault"), lines[0]), lines


def test_cli_verbose_adds_registers() -> None:
    proc = cli("run", str(guest_elf("faulty_port")), "-v")
    assert proc.returncode == 4
    err = proc.stderr.decode()
    assert re.match(ERROR_LINE.format(kind="unhandled port I/O"), err.splitlines()[0])
    for reg in ("rax=", "rsp=", "rip=", "rflags="):
        assert reg in err


@pytest.mark.parametrize("vcpus", VCPUS)
def test_entry_registers(vcpus: int) -> None:
    mem = 66 * MIB
    result, _ = boot(tiny_image(REGS, mem, vcpus), vcpus, mem)
    assert result.status == ((mem - (vcpus - 1) * 64 * 1024) >> 16) & 0xFF


def test_line_status_reads_0x60() -> None:
    assert boot(tiny_image(LSR_EXIT))[0].status == 0x60


@pytest.mark.parametrize("code", [PARK, HLT_IF0], ids=["port-0xf5", "hlt-with-IF0"])
def test_all_parked_stops_with_0(code: bytes) -> None:
    result, _ = boot(tiny_image(code, vcpus=4), 4)
    assert (result.status, result.error) == (0, False)


@pytest.mark.parametrize("code, status, pattern", [
    (BAD_IPI, 4, r"vcpu [01]: bad 0xf6 write 0x1001: vector 16 is below 32, rip 0x20000a"),
    (READ_EXIT_PORT, 4, r"vcpu [01]: unhandled port I/O: read of 4 bytes from port 0xf4 .*, rip 0x200004"),
    (UD2, 5, r"vcpu [01]: triple fault.*, rip 0x200000"),
], ids=["bad-0xf6", "read-0xf4", "triple-fault"])
def test_guest_errors(code: bytes, status: int, pattern: str) -> None:
    result, _ = boot(tiny_image(code, vcpus=2), 2)
    assert result.status == status and result.error
    assert re.fullmatch(pattern, result.message), result.message


@pytest.mark.parametrize("code", [SPIN, STI_HLT, WAIT_LOOP], ids=["spin", "hlt-IF1", "0xf7-loop"])
@pytest.mark.parametrize("vcpus", VCPUS)
def test_stop_is_prompt(code: bytes, vcpus: int) -> None:
    with Machine(tiny_image(code, vcpus=vcpus), vcpus=vcpus, mem=64 * MIB, console=lambda b: None) as machine:
        machine.start()
        time.sleep(0.3)
        assert machine.wait(0) is None                    # still going: nothing stops these on their own
        start = time.monotonic()
        machine.stop(42, "stopped by the test")
        result = machine.wait(5)
        elapsed = time.monotonic() - start
    assert result is not None and result.status == 42
    assert elapsed < 1.0, f"stop took {elapsed:.3f}s"


def test_stop_waits_for_no_vcpu_from_another_thread() -> None:
    with Machine(tiny_image(SPIN, vcpus=2), vcpus=2, mem=64 * MIB, console=lambda b: None) as machine:
        threading.Timer(0.2, machine.stop, args=(9, "from a timer")).start()
        start = time.monotonic()
        result = machine.run()
        assert time.monotonic() - start < 2
        assert all(state is State.DONE for state in machine.states().values())
    assert result.status == 9


def test_cli_ctrl_c_exits_130(tmp_path: Path) -> None:
    spin = tmp_path / "spin.elf"
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    offset = EHDR.size + PHDR.size
    spin.write_bytes(EHDR.pack(ident, 2, 62, 1, ENTRY, EHDR.size, 0, 0, EHDR.size, PHDR.size, 1, 64, 0, 0)
                     + PHDR.pack(1, 5, offset, ENTRY, ENTRY, 2, 2, 0x1000) + SPIN)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # A shell runs background jobs with SIGINT ignored and Python keeps that; the test wants Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "hypervisor.cli", "run", str(spin), "--vcpus", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.0)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130
    assert err.decode().strip() == "ivyvm: interrupted by SIGINT"


def test_image_pages_are_reported_for_the_dsm() -> None:
    image = load_image(guest_elf("hello"), 64 * MIB, 1)
    with Machine(image, vcpus=1, mem=64 * MIB, console=lambda b: None) as machine:
        pages = machine.written_pages
        assert {ENTRY // PAGE_SIZE, 1} <= pages                     # first image page, the PML4
        assert all(p < (64 * MIB) // PAGE_SIZE for p in pages)
        seg = image.segments[0]
        assert machine.ram is not None
        assert machine.ram.read(seg.paddr, len(seg.data)) == seg.data


def test_secondary_node_writes_no_memory() -> None:
    image = tiny_image(PARK, vcpus=4)
    with Machine(image, vcpus=4, mem=64 * MIB, local_vcpus={2, 3}, write_memory=False,
                 console=lambda b: None) as machine:
        assert machine.written_pages == set()
        assert machine.ram is not None and machine.ram.read(ENTRY, 2) == b"\0\0"
        assert sorted(machine.states()) == [2, 3]
