/*
 * pagewalk: bulk page migration. vCPU 0 writes a pattern over a large region,
 * vCPU ncpus-1 (on the last node when the guest spans several) verifies it
 * and overwrites it with a second pattern, then vCPU 0 verifies that one.
 * Every page thus travels to the other node and back. With 1 vCPU, vCPU 0
 * plays both parts (nothing moves, but the patterns are still checked).
 * Any other vCPUs park at once, leaving the host CPUs to the two that work.
 *
 * Knob: -DPAGEWALK_MIB=N (default 8); the region starts after the image and
 * must fit below the stacks (8 MiB needs --mem of 16 MiB or more).
 * Verdict: "PASS pagewalk: vcpus=V mib=M cycles=C write=W verify_rewrite=X verify=Y"
 * (cycles: vCPU 0's TSC over all three phases; X is measured by the peer).
 */
#include "rt.h"

#ifndef PAGEWALK_MIB
#define PAGEWALK_MIB 8
#endif

struct result {
    uint64_t cycles, bad, first_bad, got;
} RT_PAGE_ALIGNED;
static struct result results[3];                  /* one per phase */
static rt_barrier_t pair;                         /* vCPU 0 and the peer */

static inline uint64_t pattern(uintptr_t a, unsigned which)
{
    uint64_t h = a * 0x9e3779b97f4a7c15ull;
    return which ? ~h ^ 0x0123456789abcdefull : h;
}

static void fill(uintptr_t start, uintptr_t end, unsigned which)
{
    for (uintptr_t a = start; a < end; a += 8)
        *(volatile uint64_t *)a = pattern(a, which);
}

static void verify(uintptr_t start, uintptr_t end, unsigned which, struct result *r)
{
    for (uintptr_t a = start; a < end; a += 8) {
        uint64_t v = *(volatile uint64_t *)a;
        if (v != pattern(a, which) && r->bad++ == 0) {
            r->first_bad = a;
            r->got = v;
        }
    }
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    unsigned peer = ncpus - 1;
    uintptr_t start = rt_free_start(), end = start + ((uintptr_t)PAGEWALK_MIB << 20);
    if (end > rt_free_end()) {
        if (cpu == 0) {
            rt_printf("FAIL pagewalk: %u MiB do not fit in free memory %lx-%lx (raise --mem)\n",
                      PAGEWALK_MIB, (unsigned long)start, (unsigned long)rt_free_end());
            rt_exit(1);
        }
        return 0;
    }

    if (cpu != 0 && cpu != peer)
        return 0;
    unsigned parties = ncpus > 1 ? 2 : 1;
    rt_barrier_wait(&pair, parties);
    uint64_t t0 = rt_rdtsc(), t;
    if (cpu == 0) {
        fill(start, end, 0);
        results[0].cycles = rt_rdtsc() - t0;
    }
    rt_barrier_wait(&pair, parties);
    if (cpu == peer) {
        t = rt_rdtsc();
        verify(start, end, 0, &results[1]);
        fill(start, end, 1);
        results[1].cycles = rt_rdtsc() - t;
    }
    rt_barrier_wait(&pair, parties);
    if (cpu != 0)
        return 0;
    t = rt_rdtsc();
    verify(start, end, 1, &results[2]);
    results[2].cycles = rt_rdtsc() - t;
    uint64_t cycles = rt_rdtsc() - t0;

    for (unsigned phase = 1; phase < 3; phase++) {
        struct result *r = &results[phase];
        if (r->bad) {
            unsigned which = phase == 1 ? 0 : 1;
            rt_printf("FAIL pagewalk: vCPU %u found %lu bad words of pattern %u, first at %lx: got %lx want %lx\n",
                      phase == 1 ? peer : 0, (unsigned long)r->bad, which, (unsigned long)r->first_bad,
                      (unsigned long)r->got, (unsigned long)pattern(r->first_bad, which));
            rt_exit(1);
        }
    }
    rt_printf("PASS pagewalk: vcpus=%u mib=%u cycles=%lu write=%lu verify_rewrite=%lu verify=%lu\n",
              ncpus, PAGEWALK_MIB, (unsigned long)cycles, (unsigned long)results[0].cycles,
              (unsigned long)results[1].cycles, (unsigned long)results[2].cycles);
    rt_exit(0);
}
