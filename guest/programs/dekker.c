/*
 * dekker: two litmus tests on vCPU 0 and vCPU ncpus-1 (on different nodes
 * when the guest spans several); any vCPUs in between only wait.
 *
 * 1. Store buffering. In round r each side stores r to its own variable,
 *    executes mfence, then loads the other side's variable. Under sequential
 *    consistency at least one of the two loads of a round must see r (the
 *    later of the two stores precedes the other side's load); "both old" is
 *    the outcome mfence exists to forbid. Each side records what it saw on
 *    its own pages; vCPU 0 compares afterwards. A side never runs more than
 *    one round ahead of the other, so rounds overlap and actually race.
 * 2. Peterson's lock (its correctness needs exactly that store->load order)
 *    guards a plain read-modify-write counter; the total must be exact.
 *
 * The vCPUs in between park at once, so they take no host CPU from the two
 * sides. With 1 vCPU there is nobody to race: store buffering is skipped (noted in
 * the verdict) and the single vCPU takes Peterson's lock as both sides in
 * turn, which still checks the lock's code and the count.
 *
 * Knobs: -DDEKKER_ROUNDS=N (default 200), -DPETERSON_ITERS=N (per side,
 * default 200). Across nodes every round moves pages between hosts several
 * times (about 1 s for each default on two loaded nodes).
 */
#include "rt.h"

#ifndef DEKKER_ROUNDS
#define DEKKER_ROUNDS 200
#endif
#ifndef PETERSON_ITERS
#define PETERSON_ITERS 200
#endif

/* Every shared variable on its own page: the DSM must order accesses that
 * span pages, which is the interesting case. */
static rt_page_u64 sb_var[2];                   /* side i writes sb_var[i] only */
static struct {
    uint32_t r[DEKKER_ROUNDS + 1];              /* what side i's load saw in round r */
} RT_PAGE_ALIGNED seen[2];

static rt_barrier_t sides;                      /* vCPU 0 and vCPU ncpus-1 only */

static rt_page_u64 want_in[2];
static rt_page_u64 turn;
static rt_page_u64 counter;                     /* plain RMW, guarded by the lock */

static void store_buffering(unsigned side)
{
    volatile uint64_t *mine = &sb_var[side].v, *other = &sb_var[1 - side].v;
    for (uint32_t r = 1; r <= DEKKER_ROUNDS; r++) {
        while (*other + 1 < r)                  /* the other side reached round r-1 */
            rt_pause();
        *mine = r;
        rt_mfence();
        seen[side].r[r] = (uint32_t)*other;
    }
    /* Leave together, so that Peterson's lock is contended from the start
     * instead of one side finishing before the other arrives. */
    while (*other < DEKKER_ROUNDS)
        rt_pause();
}

static void peterson_lock(unsigned side)
{
    unsigned other = 1 - side;
    want_in[side].v = 1;
    turn.v = other;
    rt_mfence();                                /* the store->load order Peterson needs */
    while (want_in[other].v && turn.v == other)
        rt_pause();
}

static void peterson_unlock(unsigned side)
{
    rt_compiler_barrier();                      /* x86 keeps stores in order; stop gcc */
    want_in[side].v = 0;
}

static void increment(void)
{
    counter.v = counter.v + 1;                  /* deliberately a separate load and store */
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    unsigned last = ncpus - 1;
    int side = cpu == 0 ? 0 : cpu == last ? 1 : -1;

    rt_barrier();
    if (side < 0)
        return 0;
    uint64_t t0 = rt_rdtsc();
    /* No barrier between the tests: store buffering ends with both sides
     * in step, and a barrier would let one side go first while the other is
     * still being woken. */
    if (ncpus > 1)
        store_buffering((unsigned)side);
    uint64_t t1 = rt_rdtsc();
    if (ncpus == 1) {
        for (unsigned i = 0; i < PETERSON_ITERS; i++)
            for (unsigned s = 0; s < 2; s++) {
                peterson_lock(s);
                increment();
                peterson_unlock(s);
            }
    } else {
        for (unsigned i = 0; i < PETERSON_ITERS; i++) {
            peterson_lock((unsigned)side);
            increment();
            peterson_unlock((unsigned)side);
        }
        rt_barrier_wait(&sides, 2);
    }
    if (cpu != 0)
        return 0;

    uint64_t t2 = rt_rdtsc();
    uint64_t want = 2ull * PETERSON_ITERS;
    if (counter.v != want) {
        rt_printf("FAIL dekker: Peterson's lock let increments collide: count=%lu want %lu\n",
                  (unsigned long)counter.v, (unsigned long)want);
        rt_exit(1);
    }
    if (ncpus == 1) {
        rt_printf("PASS dekker: vcpus=1 sb_rounds=0 peterson=%lu peterson_cycles=%lu (store buffering needs two vCPUs: skipped)\n",
                  (unsigned long)counter.v, (unsigned long)(t2 - t1));
        rt_exit(0);
    }
    unsigned both_old = 0, first = 0;
    for (uint32_t r = 1; r <= DEKKER_ROUNDS; r++)
        if (seen[0].r[r] < r && seen[1].r[r] < r && both_old++ == 0)
            first = r;
    if (both_old) {
        rt_printf("FAIL dekker: store buffering seen in %u of %u rounds (first: round %u, vCPU 0 saw %u, vCPU %u saw %u)\n",
                  both_old, DEKKER_ROUNDS, first, seen[0].r[first], last, seen[1].r[first]);
        rt_exit(1);
    }
    rt_printf("PASS dekker: vcpus=%u sides=0,%u sb_rounds=%u both_old=0 peterson=%lu sb_cycles=%lu peterson_cycles=%lu\n",
              ncpus, last, DEKKER_ROUNDS, (unsigned long)counter.v, (unsigned long)(t1 - t0),
              (unsigned long)(t2 - t1));
    rt_exit(0);
}
