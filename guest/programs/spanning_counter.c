/*
 * spanning_counter: smp_counter (counter.h) for a guest whose vCPUs run on
 * several nodes. Every change of writer moves a page between hosts (tens of
 * microseconds), so the default count is small.
 * Knob: -DSPANNING_ITERS=N (per vCPU, default 2000).
 */
#include "counter.h"

#ifndef SPANNING_ITERS
#define SPANNING_ITERS 2000
#endif

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    return counter_main("spanning_counter", SPANNING_ITERS, cpu, ncpus);
}
