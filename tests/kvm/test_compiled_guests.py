"""Guests compiled here with gcc, for what hand-assembled bytes cannot reach easily.

Interrupt delivery (guest ABI section 5): the guest stays at CPL0 (no TSS or privilege change needed), so it is slow per
instruction but exercises exactly the VMM paths: 0xf6 routing, highest-first
delivery of queued vectors (through hlt and through the 0xf7 loop), no duplicates,
hlt with IF=1, and the 0xf7 wait loop under a ping-pong that would hang on any
lost wake-up.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import requires_kvm
from hypervisor.loader import load_image
from hypervisor.machine import Machine, State

pytestmark = requires_kvm

MIB = 1 << 20

GUEST_C = r"""
typedef unsigned long u64; typedef unsigned int u32; typedef unsigned short u16; typedef unsigned char u8;
static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0,%1" :: "a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0,%1" :: "a"(v), "Nd"(p)); }
static inline void ipi(u32 cpu, u32 vector) { outl(0xf6, (vector << 8) | cpu); }
struct gate { u16 lo, sel; u8 ist, type; u16 mid; u32 hi, zero; } __attribute__((packed));
static struct gate idt[256] __attribute__((aligned(16)));
volatile u32 order[16], norder, sent, phase, pings[2];
/* vectors 64-66 append themselves to order[]; 80 and 81 count pings for vCPU 0 and 1 */
extern void ping0(void), ping1(void), rec64(void), rec65(void), rec66(void);
__asm__("ping0: lock incl pings(%rip)\n iretq\n ping1: lock incl pings+4(%rip)\n iretq\n");
__asm__("rec64: push %rax\n mov $64, %eax\n jmp rec\n rec65: push %rax\n mov $65, %eax\n jmp rec\n"
        " rec66: push %rax\n mov $66, %eax\n jmp rec\n"
        "rec: push %rcx\n push %rdx\n mov norder(%rip), %ecx\n lea order(%rip), %rdx\n"
        " mov %eax, (%rdx,%rcx,4)\n incl norder(%rip)\n pop %rdx\n pop %rcx\n pop %rax\n iretq\n");
static void gate(int v, void (*f)(void)) { u64 a = (u64)f; idt[v] = (struct gate){ a, 8, 0, 0x8e, a >> 16, a >> 32, 0 }; }
static void say(const char *s) { while (*s) outb(0x3f8, *s++); }
/* The delay widens the race the 0xf7 contract closes: the ping often lands between the check
   and the write, and the write must then return at once instead of sleeping for good. */
static void wait_ping(u32 cpu, u32 want) {
  while (pings[cpu] < want) { for (volatile int k = 0; k < 10; k++) ; outb(0xf7, 0); }
}
void cmain(u64 cpu) {
  struct { u16 lim; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
  if (cpu == 0) { gate(64, rec64); gate(65, rec65); gate(66, rec66); gate(80, ping0); gate(81, ping1); phase = 1; }
  while (phase < 1) ;
  __asm__ volatile("lidt %0" :: "m"(idtr));
  if (cpu == 1) {
    ipi(0, 65); ipi(0, 64); ipi(0, 66); ipi(0, 66);   /* vCPU 0 has IF=0: all stay queued, 66 once */
    sent = 1;
    while (phase < 2) ;
    ipi(0, 64); ipi(0, 66); ipi(0, 65);              /* again, to be taken by the 0xf7 loop */
    sent = 2;
    __asm__ volatile("sti");
    for (u32 i = 1; i <= ROUNDS; i++) { wait_ping(1, i); ipi(0, 80); }
    outb(0xf5, 0);
  }
  while (!sent) ;
  __asm__ volatile("sti");
  while (norder < 3) __asm__ volatile("hlt");          /* hlt with IF=1 sleeps until delivery */
  int ok = norder == 3 && order[0] == 66 && order[1] == 65 && order[2] == 64;
  __asm__ volatile("cli");
  phase = 2;
  while (sent < 2) ;
  __asm__ volatile("sti");
  while (norder < 6) outb(0xf7, 0);                  /* one wake-up signal, three vectors to take */
  ok = ok && order[3] == 66 && order[4] == 65 && order[5] == 64;
  for (u32 i = 1; i <= ROUNDS && ok; i++) { ipi(1, 81); wait_ping(0, i); }
  ok = ok && pings[0] == ROUNDS && norder == 6;
  say(ok ? "PASS interrupts\n" : "FAIL interrupts\n");
  outl(0xf4, ok ? 0 : 1);
}
__asm__(".globl _start\n_start: call cmain\n hlt\n");
"""

ROUNDS = 300


def compile_guest(work: Path, name: str, source: str, *defines: str) -> Path:
    """A static image at 2 MiB from one freestanding C file (entry _start)."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the test guests"
    src, elf = work / f"{name}.c", work / f"{name}.elf"
    src.write_text(source)
    subprocess.run([gcc, *(f"-D{d}" for d in defines), "-O1", "-ffreestanding", "-fno-pic",
                    "-fno-stack-protector", "-mno-red-zone", "-nostdlib", "-static", "-Wl,-Ttext=0x200000",
                    "-Wl,-e,_start", "-Wl,--build-id=none", "-o", str(elf), str(src)], check=True)
    return elf


@pytest.fixture(scope="module")
def interrupt_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_guest(tmp_path_factory.mktemp("irqguest"), "irq", GUEST_C, f"ROUNDS={ROUNDS}")


@pytest.mark.parametrize("repeat", range(3))
def test_priority_hlt_and_pingpong(interrupt_guest: Path, repeat: int) -> None:
    out = bytearray()
    image = load_image(interrupt_guest, 64 * MIB, 2)
    with Machine(image, vcpus=2, mem=64 * MIB, console=out.extend) as machine:
        watchdog = threading.Timer(10, machine.stop, args=(99, "hung: a wake-up was lost"))
        watchdog.start()
        result = machine.run()
        watchdog.cancel()
    assert out.decode() == "PASS interrupts\n", (out, result)
    assert result.status == 0, result


def test_inject_from_the_host_wakes_a_sleeping_vcpu() -> None:
    """Machine.inject, the seam the cluster uses, queues and wakes like 0xf6 does."""
    from test_boot import STI_HLT, tiny_image
    with Machine(tiny_image(STI_HLT), vcpus=1, mem=64 * MIB, console=lambda b: None) as machine:
        machine.start()
        deadline = time.monotonic() + 5
        while machine.states()[0] is not State.WAITING_HLT and time.monotonic() < deadline:
            time.sleep(0.01)
        assert machine.states()[0] is State.WAITING_HLT
        # No IDT: the delivered vector is a triple fault, which proves it was injected.
        machine.inject(0, 0x40)
        result = machine.wait(5)
    assert result is not None and result.status == 5, result


# The guest maps guest-virtual 64 MiB to guest-physical 256 MiB (beyond its 64 MiB of RAM)
# in page tables of its own, then touches it: KVM reports MMIO, which the ABI makes an error.
MMIO_C = r"""
typedef unsigned long u64; typedef unsigned int u32;
static u64 pml4[512] __attribute__((aligned(4096))), pdpt[512] __attribute__((aligned(4096))),
           pd[512] __attribute__((aligned(4096)));
void cmain(void) {
  pml4[0] = (u64)pdpt | 3; pdpt[0] = (u64)pd | 3;
  for (u64 i = 0; i < 32; i++) pd[i] = (i << 21) | 0x83;     /* identity map of RAM: code, stack */
  pd[32] = 0x10000000 | 0x83;                                  /* virt 64 MiB -> phys 256 MiB */
  __asm__ volatile("mov %0, %%cr3" :: "r"(pml4) : "memory");
  volatile u32 *hole = (volatile u32 *)(64UL << 20) + 4;
#ifdef WRITE
  *hole = 0xabcd;
#else
  (void)*hole;
#endif
  __asm__ volatile("outl %0, %1" :: "a"(0), "Nd"(0xf4));     /* not reached */
}
__asm__(".globl _start\n_start: call cmain\n hlt\n");
"""


@pytest.mark.parametrize("access, pattern", [
    ("WRITE", r"vcpu 0: MMIO: write of 4 bytes 0xabcd at 0x10000010 \(outside RAM\), rip 0x[0-9a-f]+"),
    ("READ", r"vcpu 0: MMIO: read of 4 bytes at 0x10000010 \(outside RAM\), rip 0x[0-9a-f]+"),
])
def test_mmio_is_a_guest_error(tmp_path: Path, access: str, pattern: str) -> None:
    elf = compile_guest(tmp_path, "mmio", MMIO_C, access)
    with Machine(load_image(elf, 64 * MIB, 1), vcpus=1, mem=64 * MIB, console=lambda b: None) as machine:
        result = machine.run()
    assert result.status == 4 and result.error, result
    assert re.fullmatch(pattern, result.message), result.message
