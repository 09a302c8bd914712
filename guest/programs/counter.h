/*
 * counter.h: the body shared by smp_counter (one node, many iterations) and
 * spanning_counter (vCPUs on several nodes, few iterations). Every vCPU
 * increments one counter with lock-prefixed adds and a second, plain counter
 * under a spinlock; both totals must come out exact.
 *
 * Verdict: "PASS NAME: vcpus=V iters=I atomic=A locked=L ops=N cycles=C",
 * where ops counts every increment of both counters and cycles is vCPU 0's
 * TSC from the start barrier to the end barrier.
 */
#include "rt.h"

static rt_page_u64 atomic_counter;
/* The lock and the data it guards share a page: across nodes, taking the
 * lock brings the counter along in the same page transfer. */
static struct {
    rt_spinlock_t lock;
    uint64_t counter;                    /* plain: only the lock protects it */
} RT_PAGE_ALIGNED guarded;

static int counter_main(const char *name, unsigned iters, unsigned cpu, unsigned ncpus)
{
    rt_barrier();                        /* start together so they contend */
    uint64_t t0 = rt_rdtsc();
    for (unsigned i = 0; i < iters; i++) {
        rt_atomic_add(&atomic_counter.v, 1);
        rt_spin_lock(&guarded.lock);
        guarded.counter++;
        rt_spin_unlock(&guarded.lock);
    }
    rt_barrier();
    if (cpu != 0)
        return 0;

    uint64_t cycles = rt_rdtsc() - t0;
    uint64_t want = (uint64_t)iters * ncpus;
    if (atomic_counter.v != want || guarded.counter != want) {
        rt_printf("FAIL %s: atomic=%lu locked=%lu want %lu\n", name,
                  (unsigned long)atomic_counter.v, (unsigned long)guarded.counter, (unsigned long)want);
        rt_exit(1);
    }
    rt_printf("PASS %s: vcpus=%u iters=%u atomic=%lu locked=%lu ops=%lu cycles=%lu\n", name, ncpus, iters,
              (unsigned long)atomic_counter.v, (unsigned long)guarded.counter, (unsigned long)(2 * want),
              (unsigned long)cycles);
    rt_exit(0);
}
