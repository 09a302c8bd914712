/*
 * migratory: pages that two vCPUs take turns to read and then write, for the
 * DSM's migratory pages (docs/protocol.md) and `make bench`.
 *
 * vCPU 0 (node 0) and vCPU ncpus-1 (the last node when the guest spans
 * several) alternate rounds; in its round a vCPU adds one to the first word
 * of every page of one region, in a fixed shuffled order (a read, then a
 * write of the same page: the read-modify-write of a lock-protected datum
 * handed from node to node). Any other vCPU parks. Each page's word must
 * read exactly the number of rounds before, so a lost or stale write fails
 * the run; at the end vCPU 0 checks every page. vCPU 0 times its accesses
 * of rounds 2 and later, once the pattern has been seen twice (under the
 * DSM the first turns are where a page is learnt to be migratory).
 *
 * Knobs: -DMIGRATORY_PAGES=N (a power of two, default 256), -DMIGRATORY_ROUNDS=R
 * (default 6, at least 4).
 * Output: "MEDIAN migratory: rmw=<cycles>" (one timed access's median) and
 * "PASS migratory: vcpus=V pages=N rounds=R timed=T rmw=<cycles>" (all the
 * timed accesses together).
 */
#include "rt.h"

#ifndef MIGRATORY_PAGES
#define MIGRATORY_PAGES 256
#endif
#ifndef MIGRATORY_ROUNDS
#define MIGRATORY_ROUNDS 6
#endif
_Static_assert((MIGRATORY_PAGES & (MIGRATORY_PAGES - 1)) == 0, "MIGRATORY_PAGES must be a power of two");
_Static_assert(MIGRATORY_ROUNDS >= 4, "MIGRATORY_ROUNDS must leave vCPU 0 a timed round");

#define FIRST_TIMED_ROUND 2
#define MAX_TIMED (MIGRATORY_PAGES * ((MIGRATORY_ROUNDS + 1) / 2))

static uint32_t order[MIGRATORY_PAGES] RT_PAGE_ALIGNED;
static uint32_t samples[MAX_TIMED] RT_PAGE_ALIGNED;
static unsigned timed;
static uint64_t total;
static struct {
    uint64_t bad, page, got, want;
} check RT_PAGE_ALIGNED;
static rt_barrier_t pair;

static uintptr_t page_of(unsigned i) { return rt_free_start() + (uintptr_t)i * RT_PAGE_SIZE; }

static void note_bad(uintptr_t page, uint64_t got, uint64_t want)
{
    if (check.bad++ == 0) {
        check.page = page;
        check.got = got;
        check.want = want;
    }
}

/* One round: each page's word read, checked and written back plus one. */
static void take_turn(unsigned round, int timing)
{
    for (unsigned i = 0; i < MIGRATORY_PAGES; i++) {
        uintptr_t page = page_of(order[i]);
        volatile uint64_t *word = (volatile uint64_t *)page;
        uint64_t t0 = rt_rdtsc();
        uint64_t seen = *word;
        *word = seen + 1;
        uint64_t dt = rt_rdtsc() - t0;
        if (seen != round)
            note_bad(page, seen, round);
        if (timing) {
            samples[timed++] = dt > 0xffffffffu ? 0xffffffffu : (uint32_t)dt;
            total += dt;
        }
    }
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    unsigned other = ncpus - 1, parties = ncpus > 1 ? 2 : 1;
    if (page_of(MIGRATORY_PAGES) > rt_free_end()) {
        if (cpu == 0) {
            rt_printf("FAIL migratory: %u pages do not fit in free memory (raise --mem)\n", MIGRATORY_PAGES);
            rt_exit(1);
        }
        return 0;
    }
    if (cpu != 0 && cpu != other)
        return 0;
    if (cpu == 0) {
        rt_shuffle(order, MIGRATORY_PAGES, 0x9e3779b97f4a7c15ull);
        for (unsigned i = 0; i < MAX_TIMED; i++)
            samples[i] = 0;
    }
    rt_barrier_wait(&pair, parties);
    for (unsigned round = 0; round < MIGRATORY_ROUNDS; round++) {
        /* Even rounds are vCPU 0's, odd ones the other's (both vCPU 0's alone). */
        unsigned turn = round % 2 ? other : 0;
        if (cpu == turn)
            take_turn(round, cpu == 0 && round >= FIRST_TIMED_ROUND && round % 2 == 0);
        rt_barrier_wait(&pair, parties);
    }
    if (cpu != 0)
        return 0;
    for (unsigned i = 0; i < MIGRATORY_PAGES; i++) {
        uint64_t v = *(volatile uint64_t *)page_of(i);
        if (v != MIGRATORY_ROUNDS)
            note_bad(page_of(i), v, MIGRATORY_ROUNDS);
    }
    if (check.bad) {
        rt_printf("FAIL migratory: %lu bad words, first at %lx: got %lu want %lu\n", (unsigned long)check.bad,
                  (unsigned long)check.page, (unsigned long)check.got, (unsigned long)check.want);
        rt_exit(1);
    }
    rt_printf("MEDIAN migratory: rmw=%u\n", rt_median(samples, timed));
    rt_printf("PASS migratory: vcpus=%u pages=%u rounds=%u timed=%u rmw=%lu\n", ncpus, MIGRATORY_PAGES,
              MIGRATORY_ROUNDS, timed, (unsigned long)total);
    rt_exit(0);
}
