/*
 * pagecost: what one page costs a guest, access by access, for `make bench`.
 *
 * vCPU 0 (node 0) is the toucher, vCPU ncpus-1 (the last node when the guest
 * spans several) the writer; any other vCPU parks. Five regions of
 * PAGECOST_PAGES pages each, every access timed alone with rdtsc:
 *   first_touch  vCPU 0 stores to pages nobody has touched since boot (under
 *                the DSM node 0 owns them: no other node is involved);
 *   read_seq     the writer filled the pages; vCPU 0 reads them in order;
 *   read_rand    the same in a shuffled order (no sequential run to detect);
 *   write_inval  vCPU 0 stores to the pages it just read in read_rand: the
 *                writer still holds a copy of each, which the store must
 *                invalidate (no page data travels);
 *   rmw          the writer filled the pages; vCPU 0 reads a word and stores
 *                it back plus one, in the shuffled order (a migratory page).
 * Every page read is checked word by word, and the writer checks vCPU 0's
 * stores afterwards. With 1 vCPU, vCPU 0 plays both parts: only first_touch
 * then costs anything beyond the CPU's own work (the floor, with no DSM).
 *
 * Knob: -DPAGECOST_PAGES=N (a power of two, default 256; 5 N pages must fit
 * in free memory).
 * Output: for each phase a line "HIST phase: c0 c1 ..." (pages whose access
 * took [2^i, 2^(i+1)) TSC cycles), then "MEDIAN pagecost: <phase>=<cycles> ..."
 * (one access's median) and "PASS pagecost: vcpus=V pages=N <phase>=<cycles> ..."
 * (all the phase's accesses together).
 */
#include "rt.h"

#ifndef PAGECOST_PAGES
#define PAGECOST_PAGES 256
#endif
_Static_assert((PAGECOST_PAGES & (PAGECOST_PAGES - 1)) == 0, "PAGECOST_PAGES must be a power of two");

enum { FIRST_TOUCH, READ_SEQ, READ_RAND, WRITE_INVAL, RMW, PHASES };
static const char *const phase_names[PHASES] = {"first_touch", "read_seq", "read_rand", "write_inval", "rmw"};
#define REGIONS 4                  /* write_inval reuses read_rand's pages */
#define WORDS (RT_PAGE_SIZE / 8)
#define HIST_BUCKETS 40

/* vCPU 0's bookkeeping; touched before any clock starts. */
static uint32_t order[PAGECOST_PAGES] RT_PAGE_ALIGNED;
static uint32_t samples[PHASES][PAGECOST_PAGES] RT_PAGE_ALIGNED;
static uint64_t totals[PHASES] RT_PAGE_ALIGNED;

struct check {
    uint64_t bad, page, word, got, want;
} RT_PAGE_ALIGNED;
static struct check reader_check, writer_check;
static rt_barrier_t pair;

static inline uint64_t pattern(uintptr_t a) { return a * 0x9e3779b97f4a7c15ull ^ 0x5bd1e995u; }

static uintptr_t region(unsigned r) { return rt_free_start() + (uintptr_t)r * PAGECOST_PAGES * RT_PAGE_SIZE; }
static uintptr_t page_of(unsigned r, unsigned i) { return region(r) + (uintptr_t)i * RT_PAGE_SIZE; }

static void note_bad(struct check *c, uintptr_t page, unsigned word, uint64_t got, uint64_t want)
{
    if (c->bad++ == 0) {
        c->page = page;
        c->word = word;
        c->got = got;
        c->want = want;
    }
}

static void fill_region(unsigned r)
{
    for (unsigned i = 0; i < PAGECOST_PAGES; i++)
        for (unsigned w = 0; w < WORDS; w++) {
            uintptr_t a = page_of(r, i) + 8 * w;
            *(volatile uint64_t *)a = pattern(a);
        }
}

static void verify_page(uintptr_t page, struct check *c)
{
    for (unsigned w = 0; w < WORDS; w++) {
        uint64_t v = ((volatile uint64_t *)page)[w], want = pattern(page + 8 * w);
        if (v != want)
            note_bad(c, page, w, v, want);
    }
}

/* One timed access per page of region r; `shuffled` picks the order. */
static void run_phase(unsigned phase, unsigned r, int shuffled)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < PAGECOST_PAGES; i++) {
        uintptr_t page = page_of(r, shuffled ? order[i] : i);
        volatile uint64_t *word = (volatile uint64_t *)page;
        uint64_t t0 = rt_rdtsc();
        switch (phase) {
        case FIRST_TOUCH: *word = pattern(page); break;
        case WRITE_INVAL: *word = pattern(page) + 1; break;
        case RMW: *word = *word + 1; break;
        default: (void)*word; break;
        }
        uint64_t dt = rt_rdtsc() - t0;
        samples[phase][i] = dt > 0xffffffffu ? 0xffffffffu : (uint32_t)dt;
        sum += dt;
        if (phase == READ_SEQ || phase == READ_RAND)
            verify_page(page, &reader_check);
        else if (phase == RMW && *word != pattern(page) + 1)
            note_bad(&reader_check, page, 0, *word, pattern(page) + 1);
    }
    totals[phase] = sum;
}

/* What the writer finds afterwards: vCPU 0's stores, the rest untouched. */
static void writer_verifies(void)
{
    for (unsigned i = 0; i < PAGECOST_PAGES; i++) {
        uintptr_t first = page_of(0, i), inval = page_of(2, i), rmw = page_of(3, i);
        uint64_t v;
        if ((v = *(volatile uint64_t *)first) != pattern(first))
            note_bad(&writer_check, first, 0, v, pattern(first));
        if ((v = *(volatile uint64_t *)inval) != pattern(inval) + 1)
            note_bad(&writer_check, inval, 0, v, pattern(inval) + 1);
        if ((v = *(volatile uint64_t *)rmw) != pattern(rmw) + 1)
            note_bad(&writer_check, rmw, 0, v, pattern(rmw) + 1);
        if ((v = ((volatile uint64_t *)rmw)[1]) != pattern(rmw + 8))
            note_bad(&writer_check, rmw, 1, v, pattern(rmw + 8));
    }
}

static void print_histogram(unsigned phase)
{
    uint32_t hist[HIST_BUCKETS] = {0};
    for (unsigned i = 0; i < PAGECOST_PAGES; i++) {
        unsigned b = 0;
        while (b + 1 < HIST_BUCKETS && (samples[phase][i] >> (b + 1)))
            b++;
        hist[b]++;
    }
    char line[256];
    int n = rt_snprintf(line, sizeof line, "HIST %s:", phase_names[phase]);
    for (unsigned b = 0; b < HIST_BUCKETS && n < (int)sizeof line - 12; b++)
        n += rt_snprintf(line + n, sizeof line - (size_t)n, " %u", hist[b]);
    rt_printf("%s\n", line);
}

static void report_bad(const char *who, const struct check *c)
{
    rt_printf("FAIL pagecost: %s found %lu bad words, first at %lx word %lu: got %lx want %lx\n", who,
              (unsigned long)c->bad, (unsigned long)c->page, (unsigned long)c->word, (unsigned long)c->got,
              (unsigned long)c->want);
    rt_exit(1);
}

int main(unsigned cpu, unsigned ncpus, unsigned long ram)
{
    (void)ram;
    unsigned writer = ncpus - 1, parties = ncpus > 1 ? 2 : 1;
    if (region(REGIONS) > rt_free_end()) {
        if (cpu == 0) {
            rt_printf("FAIL pagecost: %u x %u pages do not fit in free memory (raise --mem)\n", REGIONS,
                      PAGECOST_PAGES);
            rt_exit(1);
        }
        return 0;
    }
    if (cpu != 0 && cpu != writer)
        return 0;
    if (cpu == 0) {
        rt_shuffle(order, PAGECOST_PAGES, 0x2545f4914f6cdd1dull);
        memset(samples, 0, sizeof samples);
    }
    rt_barrier_wait(&pair, parties);
    if (cpu == 0)
        run_phase(FIRST_TOUCH, 0, 0);
    if (cpu == writer) {
        fill_region(1);
        fill_region(2);
        fill_region(3);
    }
    rt_barrier_wait(&pair, parties);
    if (cpu == 0) {
        run_phase(READ_SEQ, 1, 0);
        run_phase(READ_RAND, 2, 1);
        run_phase(WRITE_INVAL, 2, 1);
        run_phase(RMW, 3, 1);
    }
    rt_barrier_wait(&pair, parties);
    if (cpu == writer)
        writer_verifies();
    rt_barrier_wait(&pair, parties);
    if (cpu != 0)
        return 0;
    if (reader_check.bad)
        report_bad("vCPU 0", &reader_check);
    if (writer_check.bad)
        report_bad("the writer", &writer_check);

    char medians[256], line[256];
    int m = rt_snprintf(medians, sizeof medians, "MEDIAN pagecost:");
    int n = rt_snprintf(line, sizeof line, "PASS pagecost: vcpus=%u pages=%u", ncpus, PAGECOST_PAGES);
    for (unsigned p = 0; p < PHASES; p++) {
        print_histogram(p);
        n += rt_snprintf(line + n, sizeof line - (size_t)n, " %s=%lu", phase_names[p], (unsigned long)totals[p]);
        m += rt_snprintf(medians + m, sizeof medians - (size_t)m, " %s=%u", phase_names[p],
                         rt_median(samples[p], PAGECOST_PAGES));
    }
    rt_printf("%s\n", medians);
    rt_printf("%s\n", line);
    rt_exit(0);
}
