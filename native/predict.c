/*
 * predict.c - the write-soon predictor (cfg.migratory; docs/protocol.md,
 * "Migratory pages"): are this node's remote reads followed soon by a write
 * to the same page? While it says so, read faults go to the engine as
 * IVY_EV_READ_FAULT_WRITE_SOON, and an owner that is the page's only holder
 * grants such a read writable at once: a read-modify-write of a page last
 * written elsewhere then costs one round trip and no fault more.
 *
 * One score for the node, learnt two ways:
 *  - an unhinted remote read enters a ring of the last PRED_RECENT; a write
 *    fault on a page in the ring is a hit; a page pushed out unwritten, a miss;
 *  - a writable grant faults no more, so the word its read faulted on is
 *    remembered, and looked at again at the next read fault (or grant): a
 *    changed word is a hit, an unchanged one a miss. A write elsewhere in
 *    the page goes unseen, so the guess errs towards not hinting.
 * Misses weigh twice a hit: hinting stops after a few hinted pages go
 * unwritten, and what a miss costs is one page's copy at its server.
 */
#include "rt_internal.h"

#define PRED_MAX 8 /* the score saturates here */
#define PRED_ON 4  /* hint while the score is at least this */

static void pred_score(struct ivy_rt *rt, bool hit)
{
    struct predictor *pr = &rt->pred;
    if (hit)
        pr->score = pr->score < PRED_MAX ? pr->score + 1 : PRED_MAX;
    else
        pr->score = pr->score > 2 ? pr->score - 2 : 0;
}

static uint64_t word_at(struct ivy_rt *rt, uint64_t page, uint16_t off)
{
    return __atomic_load_n((uint64_t *)(void *)(vmm_page(rt, page) + off), __ATOMIC_RELAXED);
}

/* Judge the last writable grant: did its faulting word change since? */
static void pred_settle(struct ivy_rt *rt)
{
    struct predictor *pr = &rt->pred;
    if (!pr->watch_page)
        return;
    const bool written = word_at(rt, pr->watch_page - 1, pr->watch_off) != pr->watch_val;
    if (!written)
        rt->stats.hints_unused++;
    pred_score(rt, written);
    pr->watch_page = 0;
}

static void pred_remember(struct ivy_rt *rt, uint64_t page)
{
    struct predictor *pr = &rt->pred;
    if (pr->recent[pr->next])
        pred_score(rt, false); /* read, never written while PRED_RECENT more reads came */
    pr->recent[pr->next] = page + 1;
    pr->next = (pr->next + 1) % PRED_RECENT;
}

bool pred_hint(struct ivy_rt *rt)
{
    if (!rt->cfg.migratory)
        return false;
    pred_settle(rt);
    return rt->pred.score >= PRED_ON;
}

void pred_read_fault(struct ivy_rt *rt, uint64_t page, uint8_t pending_before, uint16_t off)
{
    if (!rt->cfg.migratory || pending_before != IVY_IDLE || rt->pages[page].pending != IVY_WANT_READ)
        return; /* no READ went out for this fault */
    if (rt->pages[page].write_soon) {
        rt->stats.hinted_reads++;
        rt->pg[page].hint_off = off;
    } else {
        pred_remember(rt, page);
    }
}

void pred_write_fault(struct ivy_rt *rt, uint64_t page)
{
    struct predictor *pr = &rt->pred;
    if (!rt->cfg.migratory)
        return;
    for (unsigned i = 0; i < PRED_RECENT; i++) {
        if (pr->recent[i] == page + 1) {
            pr->recent[i] = 0;
            pred_score(rt, true);
            return;
        }
    }
}

void pred_granted(struct ivy_rt *rt, uint64_t page, bool writable)
{
    const uint16_t off = rt->pg[page].hint_off;
    rt->pg[page].hint_off = NO_WATCH;
    if (!writable) { /* served as a plain read (other copies were left): learn as from one */
        pred_remember(rt, page);
        return;
    }
    rt->stats.writable_grants++;
    pred_settle(rt);
    rt->pred.watch_page = page + 1;
    rt->pred.watch_off = off;
    rt->pred.watch_val = word_at(rt, page, off);
}
