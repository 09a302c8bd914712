/*
 * hello: every vCPU greets, then vCPU 0 checks that all of them got to main
 * at CPL3 with interrupts enabled (and that rt_cpu() knows who it is), and
 * prints the verdict.
 *
 * Only CS's RPL and RFLAGS.IF are checked: on PVM-style hosts, CPL3 code runs
 * on the host's own user segments (CS reads 0x33, not 0x1b) and PUSHF shows
 * the host's IOPL 0 while the guest's IOPL 3 is virtualized, so the selector
 * and IOPL values are not observable facts of the guest.
 */
#include "rt.h"

static volatile uint64_t checked_in;
static volatile uint64_t bad_state;     /* bit i: vCPU i was not at CPL3 with IF = 1, or rt_cpu() was wrong */

static int state_ok(void)
{
    uint64_t cs, flags;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    __asm__ volatile("pushfq; popq %0" : "=r"(flags));
    return (cs & 3) == 3 && (flags & 0x200);
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    rt_printf("hello from vCPU %u of %u\n", cpu, ncpus);
    if (!state_ok() || rt_cpu() != cpu)
        __atomic_or_fetch(&bad_state, 1ull << cpu, __ATOMIC_SEQ_CST);
    rt_atomic_add(&checked_in, 1);
    rt_barrier();
    if (cpu != 0)
        return 0;

    if (checked_in != ncpus) {
        rt_printf("FAIL hello: %lu of %u vCPUs checked in\n", (unsigned long)checked_in, ncpus);
        rt_exit(1);
    }
    if (bad_state) {
        rt_printf("FAIL hello: vCPUs %lx not at CPL3 with IF=1 or rt_cpu() wrong\n", (unsigned long)bad_state);
        rt_exit(1);
    }
    rt_printf("PASS hello: vcpus=%u\n", ncpus);
    rt_exit(0);
}
