/*
 * memtest: the free RAM between the end of the image and the vCPU stacks is
 * split into one contiguous share per vCPU. Each vCPU checks that its share
 * is zero (guest ABI 2: free memory is zero at boot), fills it with a pattern
 * that depends on the address, verifies it, and then, after a barrier,
 * verifies the next vCPU's share too, so every byte is read by a vCPU that
 * did not write it.
 */
#include "rt.h"

struct result {
    uint64_t nonzero;                    /* qwords that were not zero at boot */
    uint64_t mismatches;
    uint64_t first_bad, got, want;
} RT_PAGE_ALIGNED;                       /* one page each: results never share */

static struct result results[RT_MAX_CPUS];

/* vCPU i's share of the free pages starts here; share i = ncpus is the end.
 * Every vCPU computes the split itself rather than writing a shared table. */
static uintptr_t share_start(unsigned i, unsigned ncpus)
{
    uintptr_t pages = (rt_free_end() - rt_free_start()) / RT_PAGE_SIZE;
    return rt_free_start() + (pages * i / ncpus) * RT_PAGE_SIZE;
}

static inline uint64_t pattern(uintptr_t addr)
{
    /* A multiplicative hash: neighbouring qwords and pages all differ, so a
     * misplaced or stale page cannot pass. */
    return (addr * 0x9e3779b97f4a7c15ull) ^ 0xa5a5a5a5a5a5a5a5ull;
}

static void verify(uintptr_t start, uintptr_t end, struct result *r)
{
    for (uintptr_t a = start; a < end; a += 8) {
        uint64_t v = *(volatile uint64_t *)a;
        if (v != pattern(a)) {
            if (r->mismatches++ == 0) {
                r->first_bad = a;
                r->got = v;
                r->want = pattern(a);
            }
        }
    }
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    uintptr_t start = rt_free_start(), end = rt_free_end();
    struct result *r = &results[cpu];
    uintptr_t mine = share_start(cpu, ncpus), mine_end = share_start(cpu + 1, ncpus);
    for (uintptr_t a = mine; a < mine_end; a += 8) {
        volatile uint64_t *p = (volatile uint64_t *)a;
        if (*p != 0)
            r->nonzero++;
        *p = pattern(a);
    }
    verify(mine, mine_end, r);
    rt_barrier();
    unsigned next = (cpu + 1) % ncpus;
    verify(share_start(next, ncpus), share_start(next + 1, ncpus), r);
    rt_barrier();
    if (cpu != 0)
        return 0;

    int failed = 0;
    for (unsigned i = 0; i < ncpus; i++) {
        struct result *x = &results[i];
        if (x->nonzero) {
            rt_printf("FAIL memtest: vCPU %u found %lu nonzero qwords in free memory at boot\n",
                      i, (unsigned long)x->nonzero);
            failed = 1;
        }
        if (x->mismatches) {
            rt_printf("FAIL memtest: vCPU %u saw %lu bad qwords, first at %lx: got %lx want %lx\n",
                      i, (unsigned long)x->mismatches, (unsigned long)x->first_bad,
                      (unsigned long)x->got, (unsigned long)x->want);
            failed = 1;
        }
    }
    if (failed)
        rt_exit(1);
    rt_printf("PASS memtest: vcpus=%u kib=%lu range=%lx-%lx\n", ncpus,
              (unsigned long)((end - start) >> 10), (unsigned long)start, (unsigned long)end);
    rt_exit(0);
}
