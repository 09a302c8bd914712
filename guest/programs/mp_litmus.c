/*
 * mp_litmus: message passing over many pages. In each round one vCPU (the
 * role rotates) fills every data page with values unique to the round, then
 * publishes the round number in a flag on a page of its own; every vCPU
 * waits for the flag and must then see all of the round's data, never a
 * stale page. Under the DSM this checks that a reader's old copies of the
 * data pages are invalidated before the flag's new value can reach it.
 * With 1 vCPU the writer checks its own data (trivially true).
 *
 * Knobs: -DMP_PAGES=N (default 64), -DMP_ROUNDS_PER_CPU=N (default 2: every
 * vCPU writes twice).
 */
#include "rt.h"

#ifndef MP_PAGES
#define MP_PAGES 64
#endif
#ifndef MP_ROUNDS_PER_CPU
#define MP_ROUNDS_PER_CPU 2
#endif

#define WORDS (RT_PAGE_SIZE / 8)

static uint64_t data[MP_PAGES][WORDS] RT_PAGE_ALIGNED;
static rt_event_t flag;                     /* round + 1 once the round's data is written */

struct result {
    uint64_t checked, bad;
    uint64_t round, page, word, got;        /* the first bad word */
} RT_PAGE_ALIGNED;
static struct result results[RT_MAX_CPUS];

static inline uint64_t value(uint64_t round, unsigned page, unsigned word)
{
    return ((round + 1) << 40) | ((uint64_t)page << 20) | word;
}

static void check_round(uint64_t round, struct result *r)
{
    for (unsigned p = 0; p < MP_PAGES; p++)
        for (unsigned w = 0; w < WORDS; w++) {
            uint64_t v = ((volatile uint64_t *)data[p])[w];
            if (v != value(round, p, w) && r->bad++ == 0) {
                r->round = round;
                r->page = p;
                r->word = w;
                r->got = v;
            }
        }
    r->checked += MP_PAGES * WORDS;
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    unsigned rounds = MP_ROUNDS_PER_CPU * ncpus;
    struct result *r = &results[cpu];
    rt_barrier();
    uint64_t t0 = rt_rdtsc();
    for (unsigned round = 0; round < rounds; round++) {
        if (cpu == round % ncpus) {
            for (unsigned p = 0; p < MP_PAGES; p++)
                for (unsigned w = 0; w < WORDS; w++)
                    data[p][w] = value(round, p, w);
            rt_event_set(&flag, round + 1);
        } else {
            /* Spin, then sleep: a plain spin would hold a host CPU the
             * writer may need when vCPUs outnumber cores. */
            for (uint64_t seen = __atomic_load_n(&flag.value, __ATOMIC_ACQUIRE); seen < round + 1;)
                seen = rt_event_wait(&flag, seen);
        }
        check_round(round, r);
        rt_barrier();                       /* nobody rewrites data still being read */
    }
    if (cpu != 0)
        return 0;

    uint64_t cycles = rt_rdtsc() - t0, checked = 0;
    for (unsigned i = 0; i < ncpus; i++) {
        struct result *x = &results[i];
        checked += x->checked;
        if (x->bad) {
            rt_printf("FAIL mp_litmus: vCPU %u saw %lu stale words, first round %lu page %lu word %lu: got %lx want %lx\n",
                      i, (unsigned long)x->bad, (unsigned long)x->round, (unsigned long)x->page,
                      (unsigned long)x->word, (unsigned long)x->got,
                      (unsigned long)value(x->round, x->page, x->word));
            rt_exit(1);
        }
    }
    rt_printf("PASS mp_litmus: vcpus=%u rounds=%u pages=%u words_checked=%lu cycles=%lu\n",
              ncpus, rounds, MP_PAGES, (unsigned long)checked, (unsigned long)cycles);
    rt_exit(0);
}
