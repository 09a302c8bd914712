/*
 * smp_counter: locked and spinlocked increments from every vCPU, totals
 * checked (counter.h). Meant for one node: 200000 iterations on each of 4
 * vCPUs take well under a second natively. Knob: -DSMP_ITERS=N (per vCPU).
 */
#include "counter.h"

#ifndef SMP_ITERS
#define SMP_ITERS 200000
#endif

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    return counter_main("smp_counter", SMP_ITERS, cpu, ncpus);
}
