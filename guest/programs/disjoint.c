/*
 * disjoint: the scaling baseline for the benchmarks. Each vCPU owns a 2 MiB
 * region of counters that no other vCPU touches and increments every counter
 * once per pass. After the first touch (done before the clock starts) no
 * page ever moves between nodes, so the work should scale with vCPUs whether
 * they share a node or not. Each vCPU checks its own counters at the end.
 *
 * Knob: -DDISJOINT_PASSES=N (default 200).
 * Verdict: "PASS disjoint: vcpus=V ops=N cycles=C max_vcpu_cycles=M" (ops: all
 * increments of all vCPUs; cycles: vCPU 0's TSC from the start barrier to the
 * end barrier; M: the slowest vCPU's own time for its passes, which leaves
 * out barrier skew on a busy host).
 */
#include "rt.h"

#ifndef DISJOINT_PASSES
#define DISJOINT_PASSES 200
#endif
#define REGION (2ul << 20)
#define COUNTERS (REGION / 8)

struct result {
    uint64_t cycles, bad;
} RT_PAGE_ALIGNED;
static struct result results[RT_MAX_CPUS];

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    uintptr_t base = (rt_free_start() + REGION - 1) & ~(REGION - 1);
    if (base + ncpus * REGION > rt_free_end()) {
        if (cpu == 0) {
            rt_printf("FAIL disjoint: %u x 2 MiB do not fit in free memory (raise --mem)\n", ncpus);
            rt_exit(1);
        }
        return 0;
    }
    uint64_t *mine = (uint64_t *)(base + cpu * REGION);
    memset(mine, 0, REGION);                    /* first touch, outside the timing */

    rt_barrier();
    uint64_t t0 = rt_rdtsc();
    for (unsigned pass = 0; pass < DISJOINT_PASSES; pass++) {
        for (size_t i = 0; i < COUNTERS; i++)
            mine[i]++;
        rt_compiler_barrier();                  /* keep gcc from folding the passes */
    }
    results[cpu].cycles = rt_rdtsc() - t0;
    for (size_t i = 0; i < COUNTERS; i++)
        if (mine[i] != DISJOINT_PASSES)
            results[cpu].bad++;
    rt_barrier();
    if (cpu != 0)
        return 0;

    uint64_t cycles = rt_rdtsc() - t0, slowest = 0;
    for (unsigned i = 0; i < ncpus; i++) {
        if (results[i].cycles > slowest)
            slowest = results[i].cycles;
        if (results[i].bad) {
            rt_printf("FAIL disjoint: vCPU %u has %lu counters != %u\n", i,
                      (unsigned long)results[i].bad, DISJOINT_PASSES);
            rt_exit(1);
        }
    }
    rt_printf("PASS disjoint: vcpus=%u ops=%lu cycles=%lu max_vcpu_cycles=%lu\n", ncpus,
              (unsigned long)ncpus * DISJOINT_PASSES * COUNTERS, (unsigned long)cycles,
              (unsigned long)slowest);
    rt_exit(0);
}
