/*
 * spanning_counter: smp_counter for a guest whose vCPUs run on several nodes.
 * Every vCPU increments one counter with lock-prefixed adds and a plain
 * counter under a spinlock; both totals must be exact. Across nodes every
 * change of writer moves a page between hosts (tens of microseconds), so the
 * default count is small. Knob: -DSPANNING_ITERS=N (per vCPU, default 2000).
 *
 * Verdict: "PASS spanning_counter: vcpus=V ops=N cycles=C", where ops counts
 * every increment of both counters and cycles is vCPU 0's TSC from the start
 * barrier to the end barrier.
 */
#include "rt.h"

#ifndef SPANNING_ITERS
#define SPANNING_ITERS 2000
#endif

static rt_page_u64 atomic_counter;
/* The lock and the data it guards share a page: taking the lock brings the
 * counter along in the same page transfer. */
static struct {
    rt_spinlock_t lock;
    uint64_t counter;
} RT_PAGE_ALIGNED guarded;

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    rt_barrier();
    uint64_t t0 = rt_rdtsc();
    for (unsigned i = 0; i < SPANNING_ITERS; i++) {
        rt_atomic_add(&atomic_counter.v, 1);
        rt_spin_lock(&guarded.lock);
        guarded.counter++;
        rt_spin_unlock(&guarded.lock);
    }
    rt_barrier();
    if (cpu != 0)
        return 0;

    uint64_t cycles = rt_rdtsc() - t0;
    uint64_t want = (uint64_t)SPANNING_ITERS * ncpus;
    if (atomic_counter.v != want || guarded.counter != want) {
        rt_printf("FAIL spanning_counter: atomic=%lu locked=%lu want %lu\n",
                  (unsigned long)atomic_counter.v, (unsigned long)guarded.counter, (unsigned long)want);
        rt_exit(1);
    }
    rt_printf("PASS spanning_counter: vcpus=%u ops=%lu cycles=%lu\n",
              ncpus, (unsigned long)(2 * want), (unsigned long)cycles);
    rt_exit(0);
}
