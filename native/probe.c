/*
 * probe.c - what the profile and the watchdog read about a running node.
 *
 * Three records, all written by the event-loop thread only, on the paths it
 * already takes (no extra syscall: one vDSO clock read per message sent or
 * received, a scan of this node's few vCPU slots per fault):
 *  - per vCPU: how long it has been blocked in page faults, in total and
 *    now (the fault read from userfaultfd until the grant that ends it), as
 *    QEMU's postcopy blocktime does. vCPU threads register their thread id
 *    (UFFD_FEATURE_THREAD_ID ties each fault to its thread);
 *  - per page: the last DSM message sent and received for it;
 *  - the engine's entry for a page, read on demand.
 * Readers in other threads take racy snapshots: every field is an aligned
 * word (no torn reads on x86-64), good for diagnostics, never for decisions.
 */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <stdlib.h>
#include <string.h>

/* The slot of thread `tid`, or NULL for a thread that is no registered vCPU. */
static struct vcpu_slot *slot_of(struct ivy_rt *rt, uint32_t tid)
{
    unsigned n = __atomic_load_n(&rt->nvcpu_slots, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < n; i++)
        if (__atomic_load_n(&rt->vcpu_slots[i].tid, __ATOMIC_ACQUIRE) == tid)
            return &rt->vcpu_slots[i];
    return NULL;
}

static void end_block(struct vcpu_slot *s, uint64_t now)
{
    uint64_t ns = now > s->since ? now - s->since : 0;
    s->blocked_ns += ns;
    if (ns > s->max_ns)
        s->max_ns = ns;
    __atomic_store_n(&s->since, 0, __ATOMIC_RELEASE);
}

void probe_fault_read(struct ivy_rt *rt, uint64_t page, uint32_t tid, uint64_t now)
{
    struct vcpu_slot *s = tid ? slot_of(rt, tid) : NULL;
    if (!s)
        return; /* no vCPU (a test thread, a device model): its fault still counts per page */
    s->faults++;
    if (s->since && s->page == page)
        return; /* woken without a grant (e.g. a spurious wake) and faulting again: the same wait */
    if (s->since)
        end_block(s, now); /* a thread blocks on one fault at a time: the earlier one is over */
    s->page = page;
    __atomic_store_n(&s->since, now ? now : 1, __ATOMIC_RELEASE);
}

void probe_fault_end(struct ivy_rt *rt, uint64_t page, uint64_t now)
{
    unsigned n = __atomic_load_n(&rt->nvcpu_slots, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < n; i++) {
        struct vcpu_slot *s = &rt->vcpu_slots[i];
        if (s->since && s->page == page)
            end_block(s, now);
    }
}

void probe_all_released(struct ivy_rt *rt)
{
    uint64_t now = now_ns();
    unsigned n = __atomic_load_n(&rt->nvcpu_slots, __ATOMIC_ACQUIRE);
    for (unsigned i = 0; i < n; i++)
        if (rt->vcpu_slots[i].since)
            end_block(&rt->vcpu_slots[i], now);
}

void probe_message(struct page_msg *record, uint8_t type, uint16_t peer)
{
    record->ns = now_ns();
    record->type = type;
    record->peer = peer;
}

/* The test kit's lost message (ivy_test_drop_sends): true if `a` is not to be sent. */
bool probe_test_drop(struct ivy_rt *rt, const struct ivy_action *a)
{
    if (a->msg.type != rt->test_drop_type)
        return false;
    rt->test_drops--;
    __atomic_store_n(&rt->test_dropped_page, a->page + 1, __ATOMIC_RELEASE);
    return true;
}

/* ---- the public API (runtime.h) ---------------------------------------- */

int ivy_rt_register_vcpu(struct ivy_rt *rt, uint16_t vcpu, uint32_t tid)
{
    if (!tid)
        return -1;
    unsigned i = __atomic_fetch_add(&rt->vcpu_claims, 1, __ATOMIC_ACQ_REL);
    if (i >= IVY_RT_MAX_VCPUS)
        return -1;
    struct vcpu_slot *s = &rt->vcpu_slots[i];
    s->vcpu = vcpu;
    __atomic_store_n(&s->tid, tid, __ATOMIC_RELEASE);
    /* Publish in claim order, so the event loop never scans a half-written slot. */
    unsigned expected = i;
    while (!__atomic_compare_exchange_n(&rt->nvcpu_slots, &expected, i + 1, false, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED))
        expected = i;
    return 0;
}

unsigned ivy_rt_vcpus(const struct ivy_rt *rt, struct ivy_rt_vcpu_info *out, unsigned n)
{
    unsigned have = __atomic_load_n(&rt->nvcpu_slots, __ATOMIC_ACQUIRE), now = 0;
    uint64_t t = now_ns();
    for (unsigned i = 0; i < have && now < n; i++, now++) {
        const struct vcpu_slot *s = &rt->vcpu_slots[i];
        uint64_t since = __atomic_load_n(&s->since, __ATOMIC_ACQUIRE);
        out[now] = (struct ivy_rt_vcpu_info){
            .vcpu = s->vcpu, .tid = s->tid, .faults = s->faults, .blocked_ns = s->blocked_ns,
            .max_ns = s->max_ns, .page = since ? s->page : 0, .waiting_ns = since && t > since ? t - since : 0,
            .waiting = since != 0};
    }
    return now;
}

unsigned ivy_rt_outstanding(const struct ivy_rt *rt, struct ivy_rt_stall *out, unsigned n, uint64_t min_age_ns)
{
    struct ivy_rt_vcpu_info vcpus[IVY_RT_MAX_VCPUS];
    unsigned nv = ivy_rt_vcpus(rt, vcpus, IVY_RT_MAX_VCPUS), filled = 0;
    for (unsigned i = 0; i < nv && filled < n; i++)
        if (vcpus[i].waiting && vcpus[i].waiting_ns >= min_age_ns)
            out[filled++] = (struct ivy_rt_stall){vcpus[i].page, vcpus[i].waiting_ns, vcpus[i].tid,
                                                  (int32_t)vcpus[i].vcpu};
    /* A fault no registered vCPU raised (another thread touching the guest view). */
    uint64_t t = now_ns();
    for (uint64_t p = 0; p < rt->npages && filled < n; p++) {
        uint64_t t0 = __atomic_load_n(&rt->pg[p].fault_t0, __ATOMIC_RELAXED);
        if (!t0 || t < t0 || t - t0 < min_age_ns)
            continue;
        bool named = false;
        for (unsigned i = 0; i < filled && !named; i++)
            named = out[i].page == p;
        if (!named)
            out[filled++] = (struct ivy_rt_stall){p, t - t0, 0, -1};
    }
    return filled;
}

int ivy_rt_page_info(const struct ivy_rt *rt, uint64_t page, struct ivy_rt_page_info *out)
{
    if (page >= rt->npages)
        return -1;
    const struct ivy_page *p = &rt->pages[page];
    uint64_t t = now_ns(), t0 = __atomic_load_n(&rt->pg[page].fault_t0, __ATOMIC_RELAXED);
    const struct page_msg *s = &rt->pg[page].last_sent, *r = &rt->pg[page].last_recv;
    bool parked = false, held = false; /* one list: the hold window's entries are marked */
    for (const struct parked *q = rt->pg[page].parked; q; q = q->next)
        *(q->held ? &held : &parked) = true;
    *out = (struct ivy_rt_page_info){
        .state = p->state, .owner = p->owner, .pending = p->pending, .probowner = p->probowner,
        .copyset = p->copyset, .version = p->version, .acks_missing = p->acks_missing,
        .access = (uint8_t)ivy_engine_access(&rt->engine, page), .mapped = rt->pg[page].mapped,
        .parked = parked, .held = held,
        .fault_age_ns = t0 && t > t0 ? t - t0 : 0,
        .sent_type = s->type, .sent_peer = s->peer, .sent_age_ns = s->ns && t > s->ns ? t - s->ns : 0,
        .recv_type = r->type, .recv_peer = r->peer, .recv_age_ns = r->ns && t > r->ns ? t - r->ns : 0};
    return 0;
}
