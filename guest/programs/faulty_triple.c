/*
 * faulty_triple: vCPU 0 triple-faults at CPL0, for the VMM's error path
 * (expected: `ivyvm run` reports a triple fault and exits 5). It loads an
 * IDT with limit 0 and executes ud2: #UD cannot be delivered -> #GP, which
 * cannot be delivered either -> #DF, which cannot be -> shutdown. It never
 * prints a verdict; the other vCPUs just park.
 *
 * Not int3: on the PVM-style hosts, CPL0 code goes through KVM's instruction
 * emulator, which cannot emulate INT n in long mode and reports a KVM
 * internal error (status 6) instead of raising the exception. ud2 (and a
 * non-canonical access) do raise it, as on real hardware.
 */
#include "rt.h"

void rt_cpl0_hook(unsigned cpu)
{
    static const struct __attribute__((packed)) {
        uint16_t limit;
        uint64_t base;
    } empty_idt = { 0, 0 };

    if (cpu != 0)
        return;
    rt_puts("faulty_triple: vCPU 0 loads an empty IDT and executes ud2 at CPL0\n");
    __asm__ volatile("lidt %0\n\tud2" :: "m"(empty_idt) : "memory");
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ncpus, (void)ram;
    /* Only reached by the other vCPUs (vCPU 0 never gets here). */
    if (cpu == 0) {
        rt_puts("FAIL faulty_triple: vCPU 0 survived the triple fault\n");
        rt_exit(1);
    }
    return 0;
}
