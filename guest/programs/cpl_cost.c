/*
 * cpl_cost: what privilege level costs on this host. vCPU 0 counts to
 * CPL_COST_ITERS with the same loop at CPL0 (in rt_cpl0_hook, before the
 * runtime drops to CPL3) and at CPL3, timing each with rdtsc. On nested
 * hosts that emulate CPL0 the ratio is in the thousands; on hardware it is
 * about 1. The verdict line carries both counts of cycles and the ratio.
 */
#include "rt.h"

#ifndef CPL_COST_ITERS
#define CPL_COST_ITERS 10000
#endif

static volatile uint64_t counter;
static uint64_t cpl0_cycles;

/* noinline: both levels run the very same instructions. */
static __attribute__((noinline)) uint64_t count_timed(void)
{
    counter = 0;
    uint64_t start = rt_rdtsc();
    for (uint64_t i = 0; i < CPL_COST_ITERS; i++)
        counter = counter + 1;
    return rt_rdtsc() - start;
}

void rt_cpl0_hook(unsigned cpu)
{
    if (cpu == 0)
        cpl0_cycles = count_timed();
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ncpus;
    (void)ram;
    if (cpu != 0)
        return 0;
    uint64_t cpl3_cycles = count_timed();
    if (counter != CPL_COST_ITERS || cpl0_cycles == 0) {
        rt_printf("FAIL cpl_cost: counted to %lu, CPL0 took %lu cycles\n", (unsigned long)counter,
                  (unsigned long)cpl0_cycles);
        return 1;
    }
    rt_printf("PASS cpl_cost: iters=%u cpl0_cycles=%lu cpl3_cycles=%lu ratio=%lu\n", CPL_COST_ITERS,
              (unsigned long)cpl0_cycles, (unsigned long)cpl3_cycles,
              (unsigned long)(cpl0_cycles / (cpl3_cycles ? cpl3_cycles : 1)));
    return 0;
}
