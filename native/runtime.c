/*
 * runtime.c - one DSM node: a single event-loop thread drives the engine.
 *
 * The loop waits in epoll on: the userfaultfd of the guest view (local
 * faults), one TCP socket per peer (frames), an eventfd (stop) and a timerfd
 * (heartbeats and silence detection). Every event becomes engine input; every
 * engine action is performed here, in order (links live in link.c). There
 * are no per-page locks: the engine's PARK/UNPARK holds a request that reaches
 * a page being acquired, and the loop goes on serving every other page
 * meanwhile. docs/dsm.md gives the argument that this cannot deadlock.
 */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Newer than the distribution's uapi header (Linux 6.6+). */
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif

static uint8_t *guest_page(struct ivy_rt *rt, uint64_t page)
{
    return (uint8_t *)(uintptr_t)(rt->cfg.guest_addr + page * IVY_PAGE_SIZE);
}

const char *rt_type_name(uint8_t type)
{
    return type == IVY_WIRE_PING ? "PING" : type == IVY_WIRE_BYE ? "BYE" : ivy_msg_name(type);
}

uint64_t rt_awaited(const struct ivy_rt *rt, uint64_t *first, uint8_t *kind)
{
    uint64_t waiting = 0;
    *first = IVY_RT_NO_PAGE;
    *kind = IVY_IDLE;
    for (uint64_t p = 0; p < rt->npages; p++) {
        /* A hold window awaits nothing from a peer. */
        const uint8_t pending = rt->pages[p].pending;
        if (pending != IVY_IDLE && pending != IVY_HOLDING && waiting++ == 0) {
            *first = p;
            *kind = rt->pages[p].pending;
        }
    }
    return waiting;
}

/* What this node is waiting for, for error messages. */
void rt_describe_wait(struct ivy_rt *rt, char *buf, size_t len)
{
    uint64_t first;
    uint8_t kind;
    uint64_t waiting = rt_awaited(rt, &first, &kind);
    if (!waiting) {
        /* Only a heartbeat was due, so the loss is found by liveness, not by a missing page. */
        snprintf(buf, len, "while waiting for its heartbeats only (no page was awaited)");
        return;
    }
    const char *what = kind == IVY_WANT_WRITE ? "write" : kind == IVY_WAIT_ACKS ? "invalidation acks" : "read";
    if (waiting == 1)
        snprintf(buf, len, "while waiting for page 0x%llx (%s)", (unsigned long long)first, what);
    else
        snprintf(buf, len, "while waiting for page 0x%llx (%s) and %llu other pages",
                 (unsigned long long)first, what, (unsigned long long)(waiting - 1));
}

void rt_fail_as(struct ivy_rt *rt, enum ivy_rt_fail_kind kind, uint16_t peer, uint64_t page, const char *what,
                const char *fmt, ...)
{
    if (rt->failed || rt->leaving)
        return;
    struct ivy_rt_failure *f = &rt->failure;
    f->kind = (uint8_t)kind;
    f->peer = peer;
    f->page = page;
    f->awaited = rt_awaited(rt, &f->awaited_page, &f->awaited_kind);
    snprintf(f->what, sizeof f->what, "%s", what);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->text, sizeof f->text, fmt, ap);
    va_end(ap);
    __atomic_store_n(&rt->failed, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(rt->failfd, &one, sizeof one) < 0) {
        /* eventfd cannot overflow with one write; nothing else to report */
    }
}

#ifdef IVY_PROFILE
void rt_prof(struct ivy_rt *rt, unsigned event)
{
    if (!rt->prof)
        rt->prof = malloc(PROF_CAP * sizeof *rt->prof);
    if (rt->prof && rt->nprof < PROF_CAP)
        rt->prof[rt->nprof++] = now_ns() << 4 | event;
}

static void prof_dump(struct ivy_rt *rt)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/ivy-prof-%d-%u.txt", (int)getpid(), rt->cfg.self);
    FILE *f = fopen(path, "w");
    for (size_t i = 0; f && i < rt->nprof; i++)
        fprintf(f, "%llu %u\n", (unsigned long long)(rt->prof[i] >> 4), (unsigned)(rt->prof[i] & 15));
    if (f)
        fclose(f);
    free(rt->prof);
    rt->prof = NULL;
}
#endif

/* ---- userfaultfd: grant, zap, protect ---------------------------------- */

static int uffd_ioctl(struct ivy_rt *rt, unsigned long req, void *arg)
{
    for (;;) {
        if (ioctl(rt->uffd, req, arg) == 0)
            return 0;
        if (errno != EAGAIN && errno != EINTR)
            return -errno;
        /* EAGAIN: the mm is changing (fork, mremap); the request is still valid. */
    }
}

static void uffd_wake(struct ivy_rt *rt, uint64_t page)
{
    struct uffdio_range r = {(uint64_t)(uintptr_t)guest_page(rt, page), IVY_PAGE_SIZE};
    rt->stats.wakes++;
    int e = uffd_ioctl(rt, UFFDIO_WAKE, &r);
    if (e)
        rt_fail(rt, "UFFDIO_WAKE page 0x%llx: %s", (unsigned long long)page, strerror(-e));
}

/* Write-protect on or off; turning it off wakes threads waiting on the page. */
static void uffd_protect(struct ivy_rt *rt, uint64_t page, bool on)
{
    struct uffdio_writeprotect wp = {{(uint64_t)(uintptr_t)guest_page(rt, page), IVY_PAGE_SIZE},
                                     on ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
    int r = uffd_ioctl(rt, UFFDIO_WRITEPROTECT, &wp);
    if (r)
        rt_fail(rt, "UFFDIO_WRITEPROTECT(%d) page 0x%llx: %s", on, (unsigned long long)page, strerror(-r));
    if (on)
        rt->stats.wrprotects++;
    else
        rt->stats.wp_clears++;
}

/*
 * Make the guest view of `page` readable (rw=false) or writable and wake
 * faulters. A page with no PTE gets UFFDIO_CONTINUE (bytes are already in the
 * memfd); a mapped page only changes its write protection. EEXIST means our
 * record said "not mapped" but a PTE is there (a duplicate fault already
 * handled): fix the protection and wake explicitly.
 */
static void grant(struct ivy_rt *rt, uint64_t page, bool rw, bool force_continue)
{
    uint8_t m = rt->pg[page].mapped;
    if (m == MAP_NONE || force_continue) {
        struct uffdio_continue c = {{(uint64_t)(uintptr_t)guest_page(rt, page), IVY_PAGE_SIZE},
                                    rw ? 0 : UFFDIO_CONTINUE_MODE_WP, 0};
        int r = uffd_ioctl(rt, UFFDIO_CONTINUE, &c);
        rt->stats.continues++;
        if (r == 0) {
            rt->pg[page].mapped = rw ? MAP_RW : MAP_RO;
            return;
        }
        if (r != -EEXIST) {
            rt_fail(rt, "UFFDIO_CONTINUE page 0x%llx: %s", (unsigned long long)page, strerror(-r));
            return;
        }
        rt->stats.eexist++;
        uffd_protect(rt, page, !rw);
        rt->pg[page].mapped = rw ? MAP_RW : MAP_RO;
        uffd_wake(rt, page);
        return;
    }
    if (rw && m == MAP_RO) {
        uffd_protect(rt, page, false);
    } else if (!rw && m == MAP_RW) {
        uffd_protect(rt, page, true);
        uffd_wake(rt, page);
    } else {
        uffd_wake(rt, page);
    }
    rt->pg[page].mapped = rw ? MAP_RW : MAP_RO;
}

/*
 * Remove the guest mapping; the bytes stay in the memfd for version elision.
 * A write-protected PTE leaves a uffd-wp marker behind: measured harmless, the
 * next access still raises a MINOR fault, so no WP clear is spent first.
 */
static void zap(struct ivy_rt *rt, uint64_t page)
{
    rt->stats.zaps++;
    if (madvise(guest_page(rt, page), IVY_PAGE_SIZE, MADV_DONTNEED))
        rt_fail(rt, "MADV_DONTNEED page 0x%llx: %s", (unsigned long long)page, strerror(errno));
    rt->pg[page].mapped = MAP_NONE;
}

static void wrprotect(struct ivy_rt *rt, uint64_t page)
{
    uffd_protect(rt, page, true);
    if (rt->pg[page].mapped == MAP_RW)
        rt->pg[page].mapped = MAP_RO;
}

/* A fault the engine says needs nothing: make the mapping match its access. */
static void wake_spurious(struct ivy_rt *rt, uint64_t page, bool minor)
{
    int access = ivy_engine_access(&rt->engine, page);
    rt->stats.faults_spurious++;
    rt->pg[page].fault_t0 = 0; /* nothing is being acquired: no latency to record */
    rt->pg[page].write_off = NO_WATCH;
    probe_fault_end(rt, page, now_ns());
    if (access == 0)
        uffd_wake(rt, page); /* it will fault again and be handled then */
    else
        grant(rt, page, access == 2, minor);
}

/* ---- engine driver ----------------------------------------------------- */

static void fifo_push(struct fifo *f, const struct ivy_msg *m)
{
    if (f->len == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        struct ivy_msg *q = malloc(cap * sizeof *q);
        if (!q)
            abort();
        for (size_t i = 0; i < f->len; i++)
            q[i] = f->q[(f->head + i) % f->cap];
        free(f->q);
        f->q = q;
        f->head = 0;
        f->cap = cap;
    }
    f->q[(f->head + f->len) % f->cap] = *m;
    f->len++;
}

static bool fifo_pop(struct fifo *f, struct ivy_msg *m)
{
    if (!f->len)
        return false;
    *m = f->q[f->head];
    f->head = (f->head + 1) % f->cap;
    f->len--;
    return true;
}

static struct parked *list_append(struct parked **head, const struct ivy_msg *m)
{
    struct parked *p = malloc(sizeof *p), **tail = head;
    if (!p)
        abort();
    p->next = NULL;
    p->msg = *m;
    p->held = false;
    while (*tail)
        tail = &(*tail)->next;
    *tail = p;
    return p;
}

/* Move every message of a list to the delivery queue, in arrival order. */
static void list_to_fifo(struct ivy_rt *rt, struct parked **head)
{
    struct parked *p = *head;
    *head = NULL;
    while (p) {
        struct parked *next = p->next;
        fifo_push(&rt->fifo, &p->msg);
        free(p);
        p = next;
    }
}

/* ---- the hold window ----------------------------------------------------
 *
 * The engine decides (docs/protocol.md, "The hold window"): after an owner's
 * local fault completes, the page is IVY_HOLDING and the engine parks every
 * request for it, so the woken thread runs its access before the page can
 * be taken away again. The runtime only supplies the clock and the watched
 * word: HOLD starts the clock (hold_until[p]), and once the window has run
 * out, or the woken writer's word changed, it feeds the engine
 * IVY_EV_HOLD_EXPIRED or IVY_EV_STORE_SEEN, which unparks. It looks only
 * when a request waits (held_pages) or arrives: cost when nobody waits, one
 * clock read per completed fault (shared with the latency figure, vDSO) and
 * one 8-byte load per write grant.
 */

static void run_actions(struct ivy_rt *rt, const struct ivy_actions *acts, bool minor);

static uint64_t watched_word(struct ivy_rt *rt, uint64_t page)
{
    return __atomic_load_n((uint64_t *)(void *)(vmm_page(rt, page) + rt->pg[page].watch_off), __ATOMIC_RELAXED);
}

/* Before a write grant wakes the faulting thread: remember the word it is
 * about to write, so its store shows that it ran. */
static void watch_arm(struct ivy_rt *rt, uint64_t page)
{
    rt->pg[page].watch_off = rt->pg[page].write_off;
    rt->pg[page].write_off = NO_WATCH;
    if (rt->pg[page].watch_off != NO_WATCH)
        rt->pg[page].watch_val = watched_word(rt, page);
}

/* The woken writer changed its word: the access the window protects is done.
 * (A store of an equal value goes unseen: the window then runs to its end.) */
static bool hold_progressed(struct ivy_rt *rt, uint64_t page)
{
    return rt->pg[page].watch_off != NO_WATCH && watched_word(rt, page) != rt->pg[page].watch_val;
}

static bool page_holding(const struct ivy_rt *rt, uint64_t page)
{
    return rt->pages[page].pending == IVY_HOLDING;
}

/* A request waits for page's window: look at the page when the loop wakes. */
static void hold_watch(struct ivy_rt *rt, uint64_t page)
{
    for (size_t i = 0; i < rt->nheld; i++)
        if (rt->held_pages[i] == page)
            return;
    if (rt->nheld == rt->held_cap) {
        size_t cap = rt->held_cap ? rt->held_cap * 2 : 16;
        uint64_t *n = realloc(rt->held_pages, cap * sizeof *n);
        if (!n)
            abort();
        rt->held_pages = n;
        rt->held_cap = cap;
    }
    rt->held_pages[rt->nheld++] = page;
}

/* HOLD: the engine started page's window, now (the DONE just before read the clock). */
static void hold_start(struct ivy_rt *rt, uint64_t page)
{
    rt->pg[page].hold_until = rt->done_ns + rt->hold_ns;
    if (!rt->pg[page].parked)
        return;
    for (struct parked *p = rt->pg[page].parked; p; p = p->next) {
        rt->stats.held++; /* parked while acquiring, now waiting for the window too */
        TRACE(rt, trace_hold, IVY_TR_HOLD_BEGIN, page, &p->msg);
    }
    hold_watch(rt, page);
}

/* If page's window is over (clock, or the writer's store), tell the engine,
 * which unparks what waited. Returns whether it was over. */
static bool hold_check(struct ivy_rt *rt, uint64_t page, uint64_t now)
{
    unsigned event;
    if (now >= rt->pg[page].hold_until) {
        event = IVY_EV_HOLD_EXPIRED;
    } else if (hold_progressed(rt, page)) {
        event = IVY_EV_STORE_SEEN;
        rt->stats.holds_cut++;
    } else {
        return false;
    }
    rt->pg[page].watch_off = NO_WATCH;
    struct ivy_actions acts;
    acts.n = 0;
    ivy_engine_hold_event(&rt->engine, page, event, &acts);
    run_actions(rt, &acts, false);
    return true;
}

/*
 * Tell the engine about every watched window that is over. Returns the
 * earliest deadline still pending (0: none), which bounds the next epoll
 * wait. A page that left HOLDING by itself (a new acquisition) is dropped:
 * the engine unparks at that acquisition's end, or holds again.
 */
static uint64_t hold_release_expired(struct ivy_rt *rt)
{
    uint64_t now = now_ns(), next = 0;
    for (size_t i = 0; i < rt->nheld;) {
        uint64_t page = rt->held_pages[i], until = rt->pg[page].hold_until;
        if (!page_holding(rt, page) || !rt->pg[page].parked || hold_check(rt, page, now)) {
            if (!page_holding(rt, page))
                TRACE(rt, trace_hold, IVY_TR_HOLD_END, page, NULL);
            rt->held_pages[i] = rt->held_pages[--rt->nheld];
            continue;
        }
        if (!next || until < next)
            next = until;
        i++;
    }
    return next;
}

static void park(struct ivy_rt *rt, const struct ivy_msg *m)
{
    struct parked *p = list_append(&rt->pg[m->page].parked, m);
    if (page_holding(rt, m->page)) {
        p->held = true; /* by the window, not by an acquisition: counted apart */
        rt->stats.held++;
        TRACE(rt, trace_hold, IVY_TR_HOLD_BEGIN, m->page, m);
        hold_watch(rt, m->page);
    } else {
        rt->stats.parked++;
    }
}

/* Re-deliver, in arrival order, what the engine parked for `page`. */
static void unpark(struct ivy_rt *rt, uint64_t page)
{
    for (struct parked *p = rt->pg[page].parked; p; p = p->next)
        if (!p->held)
            rt->stats.unparked++;
    list_to_fifo(rt, &rt->pg[page].parked);
}

static void fault_done(struct ivy_rt *rt, uint64_t page)
{
    const bool ahead = rt->pg[page].prefetch && !rt->pg[page].fault_t0;
    rt->pg[page].prefetch = 0;
    if (rt->pg[page].remote) {
        if (ahead)
            rt->stats.prefetched++; /* mapped before the vCPU came: no fault completed */
        else
            rt->stats.faults_remote++;
        rt->waiting_remote--;
        if (ahead) {
            rt->pg[page].remote = 0;
            return;
        }
    } else {
        rt->stats.faults_local++;
    }
    rt->pg[page].remote = 0;
    uint64_t now = now_ns();
    rt->done_ns = now; /* a HOLD that follows starts its window here */
    probe_fault_end(rt, page, now);
    if (!rt->pg[page].fault_t0)
        return;
    uint64_t ns = now - rt->pg[page].fault_t0;
    rt->pg[page].fault_t0 = 0;
    unsigned b = 0;
    while (b + 1 < IVY_RT_LAT_BUCKETS && (ns >> (b + 1)))
        b++;
    rt->stats.lat_hist[b]++;
    rt->stats.lat_count++;
    rt->stats.lat_sum_ns += ns;
    if (ns > rt->stats.lat_max_ns)
        rt->stats.lat_max_ns = ns;
}

static void send_action(struct ivy_rt *rt, const struct ivy_action *a)
{
    const struct ivy_msg *m = &a->msg;
    bool request = m->type == IVY_MSG_READ || m->type == IVY_MSG_WRITE;
    if (request && m->requester == rt->cfg.self) {
        if (!rt->pg[a->page].remote) { /* a stale classic-Ivy read asks again: same fault */
            rt->pg[a->page].remote = 1;
            rt->waiting_remote++;
        }
    } else if (request) {
        rt->stats.forwards++;
    }
    if (a->to == rt->cfg.self) {
        fifo_push(&rt->fifo, m);
        return;
    }
    if (a->to >= rt->cfg.nnodes) {
        rt_fail_as(rt, IVY_FAIL_ENGINE, a->to, a->page, "SEND action", "engine asked to send %s to node %u of %u",
                   ivy_msg_name(m->type), a->to, rt->cfg.nnodes);
        return;
    }
    probe_message(&rt->pg[a->page].last_sent, m->type, a->to);
    if (__builtin_expect(rt->test_drops != 0, 0) && probe_test_drop(rt, a))
        return;
    bool data = m->type == IVY_MSG_REPLY && (m->flags & IVY_REPLY_DATA);
    link_send(rt, &rt->conns[a->to], m->type, m, data ? vmm_page(rt, a->page) : NULL);
    if ((request && m->requester == rt->cfg.self) || m->type == IVY_MSG_INVALIDATE)
        rt->answer_soon |= 1ull << a->to;
}

/* Perform actions strictly in order; `minor` describes the fault being handled, if any. */
static void run_actions(struct ivy_rt *rt, const struct ivy_actions *acts, bool minor)
{
    for (unsigned i = 0; i < acts->n && !rt->failed; i++) {
        const struct ivy_action *a = &acts->a[i];
        if (a->page >= rt->npages) {
            rt_fail_as(rt, IVY_FAIL_ENGINE, IVY_RT_NO_NODE, a->page, "action page",
                       "engine action %u names page 0x%llx beyond RAM", a->kind, (unsigned long long)a->page);
            return;
        }
        if (a->kind != IVY_ACT_PARK || !page_holding(rt, a->page)) /* a hold's PARK: HOLD_BEGIN */
            TRACE(rt, trace_action, a);
        switch (a->kind) {
        case IVY_ACT_SEND: send_action(rt, a); break;
        case IVY_ACT_MAP_RO:
            if (rt->pg[a->page].hint_off != NO_WATCH)
                pred_granted(rt, a->page, false);
            grant(rt, a->page, false, false);
            PROF(rt, PROF_GRANTED);
            break;
        case IVY_ACT_MAP_RW:
            if (rt->pg[a->page].hint_off != NO_WATCH)
                pred_granted(rt, a->page, true); /* before the faulter is woken: the word as granted */
            watch_arm(rt, a->page);
            grant(rt, a->page, true, false);
            PROF(rt, PROF_GRANTED);
            break;
        case IVY_ACT_ZAP: zap(rt, a->page); PROF(rt, PROF_ZAPPED); break;
        case IVY_ACT_WRPROTECT: wrprotect(rt, a->page); PROF(rt, PROF_WRPROTECTED); break;
        case IVY_ACT_WAKE: wake_spurious(rt, a->page, minor); break;
        case IVY_ACT_PARK: park(rt, &a->msg); break;
        case IVY_ACT_UNPARK: unpark(rt, a->page); break;
        case IVY_ACT_DONE: fault_done(rt, a->page); break;
        case IVY_ACT_HOLD: hold_start(rt, a->page); break;
        default:
            rt_fail_as(rt, IVY_FAIL_ENGINE, IVY_RT_NO_NODE, a->page, "action kind",
                       "engine returned unknown action kind %u", a->kind);
            return;
        }
    }
}

/* Feed queued messages (unparked or self-addressed) until none is left. */
static void drain_fifo(struct ivy_rt *rt)
{
    struct ivy_msg m;
    struct ivy_actions acts;
    while (!rt->failed && fifo_pop(&rt->fifo, &m)) {
        acts.n = 0;
        ivy_engine_message(&rt->engine, &m, &acts);
        run_actions(rt, &acts, false);
    }
}

/*
 * The window heuristic. A read fault on run_next (just past the pages last
 * asked for ahead) means the run went on and those pages were used without a
 * fault: the window doubles (up to IVY_RT_PREFETCH_MAX) and the next `window`
 * pages are asked for. A fault inside [run_lo, run_next) is a prefetched
 * page the vCPU reached before its reply: still used, nothing changes. Any
 * other fault ends the run: the window halves (pages asked for but not used
 * cost a message each) and a new run may start at the next page.
 */
static void run_prefetch(struct ivy_rt *rt, uint64_t page)
{
    if (page >= rt->run_lo && page < rt->run_next)
        return;
    if (page != rt->run_next) {
        rt->window /= 2;
        rt->run_lo = rt->run_next = page + 1;
        return;
    }
    rt->window = rt->window ? rt->window * 2 : 1;
    if (rt->window > IVY_RT_PREFETCH_MAX)
        rt->window = IVY_RT_PREFETCH_MAX;
    rt->run_lo = page + 1;
    rt->run_next = page + 1 + rt->window;
    for (uint64_t q = rt->run_lo; q < rt->run_next && q < rt->npages && !rt->failed; q++) {
        struct ivy_actions acts;
        acts.n = 0;
        ivy_engine_prefetch(&rt->engine, q, &acts);
        if (acts.n == 0)
            continue; /* readable, asked for or owned already */
        rt->stats.prefetches++;
        rt->pg[q].prefetch = 1;
        run_actions(rt, &acts, false);
    }
}

static void handle_fault(struct ivy_rt *rt, const struct uffd_msg *um)
{
    uint64_t addr = um->arg.pagefault.address, flags = um->arg.pagefault.flags;
    if (addr < rt->cfg.guest_addr || addr >= rt->cfg.guest_addr + rt->cfg.size)
        return;
    uint64_t page = (addr - rt->cfg.guest_addr) / IVY_PAGE_SIZE;
    bool wp = flags & UFFD_PAGEFAULT_FLAG_WP;
    bool write = wp || (flags & UFFD_PAGEFAULT_FLAG_WRITE);
    TRACE(rt, trace_fault, page, wp ? IVY_TR_ACCESS_WP : write, um->arg.pagefault.feat.ptid);
    if (wp)
        rt->stats.faults_wp++;
    else if (write)
        rt->stats.faults_write++;
    else
        rt->stats.faults_read++;
    if (rt->pg[page].fault_count != UINT32_MAX)
        rt->pg[page].fault_count++;
    uint64_t now = now_ns();
    if (!rt->pg[page].fault_t0)
        rt->pg[page].fault_t0 = now;
    probe_fault_read(rt, page, um->arg.pagefault.feat.ptid, now);
    if (write && rt->pg[page].write_off == NO_WATCH)
        rt->pg[page].write_off = (uint16_t)(addr % IVY_PAGE_SIZE & ~7u);
    struct ivy_actions acts;
    acts.n = 0;
    const uint8_t pending_before = rt->pages[page].pending;
    if (!write && pred_hint(rt))
        ivy_engine_read_fault_write_soon(&rt->engine, page, &acts);
    else
        ivy_engine_fault(&rt->engine, page, write, &acts);
    if (write)
        pred_write_fault(rt, page);
    else
        pred_read_fault(rt, page, pending_before, (uint16_t)(addr % IVY_PAGE_SIZE & ~7u));
    if (acts.n == 0)
        rt->stats.faults_duplicate++; /* another thread's fault on this page is being served */
    run_actions(rt, &acts, !wp);
    if (rt->cfg.prefetch && !write)
        run_prefetch(rt, page);
    drain_fifo(rt);
}

static void read_faults(struct ivy_rt *rt)
{
    struct uffd_msg msgs[UFFD_BATCH];
    while (!rt->failed) {
        ssize_t n = read(rt->uffd, msgs, sizeof msgs);
        PROF(rt, PROF_UFFD_READ);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            rt_fail(rt, "reading userfaultfd: %s", strerror(errno));
            return;
        }
        for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                handle_fault(rt, &msgs[i]);
        /* A short read drained the queue; epoll reports anything newer (saves a syscall per fault). */
        if ((size_t)n < sizeof msgs)
            return;
    }
}

/* The row whose guard refused a message (and the guard), or the key no row matched. */
static void rt_name_refusal(const struct ivy_rt *rt, const struct ivy_msg *m, const struct ivy_verdict *v,
                            char *buf, size_t len)
{
    if (v->refused_by >= 0) {
        const struct ivy_row *r = ivy_engine_row((unsigned)v->refused_by);
        snprintf(buf, len, "%s (guard %s)", r->name, r->guard_name ? r->guard_name : "?");
        return;
    }
    const struct ivy_page *p = &rt->pages[m->page];
    snprintf(buf, len, "none for %s at %s/%s%s", ivy_msg_name(m->type), ivy_state_name(p->state),
             ivy_pending_name(p->pending), p->owner ? " (owner)" : "");
}

void rt_handle_frame(struct ivy_rt *rt, struct conn *c, const struct ivy_wire_frame *f)
{
    const struct ivy_msg *m = &f->msg;
    TRACE(rt, trace_recv, c, f);
    rt->stats.msgs_recv[m->type]++;
    rt->stats.bytes_recv[m->type] += f->frame_len;
    if (m->sender != c->peer) {
        rt_fail_as(rt, IVY_FAIL_PEER_GARBAGE, c->peer, IVY_RT_NO_PAGE, "sender id",
                   "node %u sent a %s claiming to be node %u; dropping the link", c->peer, rt_type_name(m->type),
                   m->sender);
        return;
    }
    if (m->type == IVY_WIRE_PING)
        return;
    if (m->type == IVY_WIRE_BYE) {
        c->bye = true;
        return;
    }
    /* A window that ran out with nobody waiting ends now, so this request
     * is served at once; one that others wait behind keeps it, parked behind
     * them until the loop's next pass releases them all (arrival order). */
    if ((m->type == IVY_MSG_READ || m->type == IVY_MSG_WRITE) && page_holding(rt, m->page) &&
        !rt->pg[m->page].parked)
        hold_check(rt, m->page, now_ns());
    /* What the pure decoder cannot check: does the message fit the page's
     * state (a reply answers our request, an ack one we wait for, ...)? The
     * engine's table answers, once per frame, before any byte is copied, so
     * a peer can neither trip an assert nor get bytes written into a page
     * nobody asked for. An authenticated peer never sends such a message, so
     * a refusal is a protocol bug: its kind says so and `what` names the row. */
    const struct ivy_verdict v = ivy_engine_check(&rt->engine, m);
    if (v.row < 0) {
        char row[IVY_RT_WHAT_LEN];
        rt_name_refusal(rt, m, &v, row, sizeof row);
        rt_fail_as(rt, IVY_FAIL_PROTOCOL, c->peer, m->page, row,
                   "node %u sent %s (%s page 0x%llx requester %u sender %u txid 0x%llx); dropping the link",
                   c->peer, v.why, ivy_msg_name(m->type), (unsigned long long)m->page, m->requester, m->sender,
                   (unsigned long long)m->txid);
        return;
    }
    probe_message(&rt->pg[m->page].last_recv, m->type, c->peer);
    if (m->type == IVY_MSG_REPLY) {
        rt->stats.reply_hops += m->hops;
        if (f->data) {
            memcpy(vmm_page(rt, m->page), f->data, IVY_PAGE_SIZE);
            rt->stats.replies_data++;
        } else {
            rt->stats.replies_elided++;
        }
    }
    struct ivy_actions acts;
    acts.n = 0;
    ivy_engine_apply(&rt->engine, m, (unsigned)v.row, &acts);
    run_actions(rt, &acts, false);
    drain_fifo(rt);
}

/*
 * Let every thread blocked in a fault go on without us. UFFDIO_UNREGISTER
 * wakes only MISSING-mode faulters (measured on 6.18), so MINOR and WP ones
 * get an explicit UFFDIO_WAKE after it; they retry on a plain mapping.
 */
static void release_faulters(struct ivy_rt *rt)
{
    if (!rt->registered)
        return;
    struct uffdio_range r = {rt->cfg.guest_addr, rt->cfg.size};
    if (ioctl(rt->uffd, UFFDIO_UNREGISTER, &r) == 0)
        rt->registered = false;
    /* Best effort at the end of the node's life: a failure leaves nothing to report to, and a
     * faulter still blocked is woken when the userfaultfd is closed right after. */
    (void)ioctl(rt->uffd, UFFDIO_WAKE, &r);
    probe_all_released(rt);
}

/*
 * A request or invalidation was just sent: on a loaded or single CPU the
 * peer usually ran while our send was in the kernel, so its answer is
 * already queued. Reading it now saves the epoll_wait round that would
 * only report it; an empty socket costs one EAGAIN recv.
 */
static void read_answers(struct ivy_rt *rt)
{
    while (rt->answer_soon && !rt->failed) {
        link_end_pass(rt); /* what the peer is to answer must have left */
        unsigned peer = (unsigned)__builtin_ctzll(rt->answer_soon);
        rt->answer_soon &= rt->answer_soon - 1;
        if (rt->conns[peer].fd >= 0)
            link_read(rt, &rt->conns[peer]); /* may send again and set answer_soon */
    }
}

#define LOOP_EVENTS 64

/* Phase 1: feed the engine the hold windows that ran out; the earliest still running (0: none). */
static uint64_t loop_release_holds(struct ivy_rt *rt)
{
    uint64_t next_release = 0;
    while (rt->nheld && !rt->failed) {
        next_release = hold_release_expired(rt);
        if (!rt->fifo.len)
            break;
        drain_fifo(rt); /* may park new requests behind a window: look again */
    }
    return next_release;
}

/* Phase 2: wait for events: busy-poll while a reply is due (cfg.poll_us), then sleep, no
 * longer than the next hold window. The number of events, or -1 with errno. */
static int loop_wait(struct ivy_rt *rt, struct epoll_event *evs, uint64_t next_release)
{
    int n = 0;
    PROF(rt, PROF_EPOLL_IN);
    if (rt->waiting_remote && rt->cfg.poll_us) {
        /* A reply is due within tens of microseconds: poll for it rather than
         * sleep, since waking an idle CPU costs as much again on a VM host. */
        uint64_t until = now_ns() + (uint64_t)rt->cfg.poll_us * 1000u;
        do
            n = epoll_wait(rt->epfd, evs, LOOP_EVENTS, 0);
        while (n == 0 && now_ns() < until);
    }
    if (n == 0 && next_release) {
        uint64_t now = now_ns(), ns = next_release > now ? next_release - now : 0;
        struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
        n = epoll_pwait2(rt->epfd, evs, LOOP_EVENTS, &ts, NULL);
    } else if (n == 0) {
        n = epoll_wait(rt->epfd, evs, LOOP_EVENTS, -1);
    }
    PROF(rt, PROF_EPOLL_OUT);
    return n;
}

/* Phase 3: serve each event (faults, frames, heartbeats); true once asked to stop. */
static bool loop_dispatch(struct ivy_rt *rt, const struct epoll_event *evs, int n)
{
    bool stop = false;
    for (int i = 0; i < n && !rt->failed; i++) {
        uint64_t tag = evs[i].data.u64;
        if (tag == EP_STOP) {
            stop = true;
        } else if (tag == EP_UFFD) {
            read_faults(rt);
        } else if (tag == EP_TIMER) {
            link_heartbeat(rt);
        } else {
            struct conn *c = &rt->conns[tag];
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT)
                link_flush(rt, c);
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                link_read(rt, c);
        }
    }
    return stop;
}

static void *event_loop(void *arg)
{
    struct ivy_rt *rt = arg;
    struct epoll_event evs[LOOP_EVENTS];
    bool stop = false;
    /* The hold window is tens of microseconds: the default 50 us timer slack
     * would stretch every epoll timeout below to several windows. */
    (void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); /* cannot fail for a valid slack; only precision */
    while (!stop && !rt->failed) {
        uint64_t next_release = loop_release_holds(rt);
        link_end_pass(rt); /* nothing may wait in a batch while the loop sleeps */
        int n = loop_wait(rt, evs, next_release);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rt_fail(rt, "epoll_wait: %s", strerror(errno));
            break;
        }
        stop = loop_dispatch(rt, evs, n);
        read_answers(rt); /* phase 4: answers the requests just sent may already have */
    }
    if (!rt->failed)
        link_say_bye(rt);
    release_faulters(rt);
#ifdef IVY_PROFILE
    prof_dump(rt);
#endif
    return NULL;
}

/* ---- lifecycle --------------------------------------------------------- */

static int setup_uffd(struct ivy_rt *rt, char *err, size_t errlen)
{
    rt->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (rt->uffd < 0) {
        int fd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            rt->uffd = ioctl(fd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
            close(fd);
        }
    }
    if (rt->uffd < 0) {
        snprintf(err, errlen, "userfaultfd: %s (needs root or vm.unprivileged_userfaultfd=1)", strerror(errno));
        return -1;
    }
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM |
                                         UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EXACT_ADDRESS |
                                         UFFD_FEATURE_THREAD_ID /* ties a fault to its vCPU (trace, profile) */};
    if (ioctl(rt->uffd, UFFDIO_API, &api)) {
        snprintf(err, errlen, "UFFDIO_API with MINOR_SHMEM|WP_SHMEM|EXACT_ADDRESS|THREAD_ID: %s (kernel too old?)",
                 strerror(errno));
        return -1;
    }
    /* Drop any mapping made before we manage the view, so every page starts faulting. */
    if (madvise((void *)(uintptr_t)rt->cfg.guest_addr, rt->cfg.size, MADV_DONTNEED)) {
        snprintf(err, errlen, "MADV_DONTNEED on the guest view: %s", strerror(errno));
        return -1;
    }
    /* Every page in the page cache, so a first touch is a MINOR fault, never MISSING. */
    if (madvise((void *)(uintptr_t)rt->cfg.vmm_addr, rt->cfg.size, MADV_POPULATE_WRITE)) {
        snprintf(err, errlen, "MADV_POPULATE_WRITE on the VMM view: %s", strerror(errno));
        return -1;
    }
    struct uffdio_register reg = {{rt->cfg.guest_addr, rt->cfg.size},
                                  UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP, 0};
    if (ioctl(rt->uffd, UFFDIO_REGISTER, &reg)) {
        snprintf(err, errlen, "UFFDIO_REGISTER MINOR|WP on the guest view (0x%llx, %llu bytes): %s",
                 (unsigned long long)rt->cfg.guest_addr, (unsigned long long)rt->cfg.size, strerror(errno));
        return -1;
    }
    rt->registered = true;
    if (!(reg.ioctls & (1ull << _UFFDIO_CONTINUE)) || !(reg.ioctls & (1ull << _UFFDIO_WRITEPROTECT))) {
        snprintf(err, errlen, "the guest view does not support UFFDIO_CONTINUE and UFFDIO_WRITEPROTECT "
                              "(is it a MAP_SHARED memfd view?)");
        return -1;
    }
    return 0;
}

static int setup_loop(struct ivy_rt *rt, char *err, size_t errlen)
{
    rt->epfd = epoll_create1(EPOLL_CLOEXEC);
    rt->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rt->failfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rt->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (rt->epfd < 0 || rt->stopfd < 0 || rt->failfd < 0 || rt->timerfd < 0) {
        snprintf(err, errlen, "creating epoll/eventfd/timerfd: %s", strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    const struct { int fd; uint64_t tag; const char *name; } own[] = {
        {rt->uffd, EP_UFFD, "userfaultfd"}, {rt->stopfd, EP_STOP, "stop eventfd"}, {rt->timerfd, EP_TIMER, "timerfd"}};
    for (unsigned i = 0; i < sizeof own / sizeof own[0]; i++) {
        ev.data.u64 = own[i].tag;
        if (epoll_ctl(rt->epfd, EPOLL_CTL_ADD, own[i].fd, &ev)) {
            snprintf(err, errlen, "epoll_ctl adding the %s: %s", own[i].name, strerror(errno));
            return -1;
        }
    }
    for (unsigned i = 0; i < rt->cfg.nnodes; i++) {
        struct conn *c = &rt->conns[i];
        if (c->fd < 0)
            continue;
        int one = 1, flags = fcntl(c->fd, F_GETFL);
        /* A link that cannot be made non-blocking would stall the whole loop; one without
         * TCP_NODELAY (not TCP, e.g. a socketpair in the tests) only loses latency. */
        if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK)) {
            snprintf(err, errlen, "making the link to node %u (fd %d) non-blocking: %s", i, c->fd, strerror(errno));
            return -1;
        }
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) && errno != EOPNOTSUPP &&
            errno != ENOPROTOOPT) {
            snprintf(err, errlen, "TCP_NODELAY on the link to node %u (fd %d): %s", i, c->fd, strerror(errno));
            return -1;
        }
        c->in = malloc(IN_CAP);
        if (!c->in) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        ev.data.u64 = i;
        if (epoll_ctl(rt->epfd, EPOLL_CTL_ADD, c->fd, &ev)) {
            snprintf(err, errlen, "epoll_ctl on the link to node %u (fd %d): %s", i, c->fd, strerror(errno));
            return -1;
        }
    }
    return 0;
}

struct ivy_rt *ivy_rt_create(const struct ivy_rt_config *cfg, char *err, size_t errlen)
{
    if (cfg->nnodes == 0 || cfg->nnodes > IVY_MAX_NODES || cfg->self >= cfg->nnodes) {
        snprintf(err, errlen, "node %u of %u: need 1 <= nnodes <= %u and self < nnodes", cfg->self,
                 cfg->nnodes, IVY_MAX_NODES);
        return NULL;
    }
    if (!cfg->size || cfg->size % IVY_PAGE_SIZE || cfg->guest_addr % IVY_PAGE_SIZE ||
        cfg->vmm_addr % IVY_PAGE_SIZE) {
        snprintf(err, errlen, "RAM size 0x%llx and both views must be non-empty and page aligned",
                 (unsigned long long)cfg->size);
        return NULL;
    }
    if (cfg->hold_us > 1000000u) {
        snprintf(err, errlen, "hold_us %u: the hold window must be at most 1000000 us", cfg->hold_us);
        return NULL;
    }
    if (cfg->read_ownership > IVY_READ_IVY || cfg->manager > IVY_MGR_FIXED) {
        snprintf(err, errlen, "read_ownership %u / manager %u out of range", cfg->read_ownership, cfg->manager);
        return NULL;
    }
    if (cfg->first_touch > IVY_TOUCH_WRITE) {
        snprintf(err, errlen, "first_touch %u out of range", cfg->first_touch);
        return NULL;
    }
    if (cfg->prefetch > 1 || (cfg->prefetch && cfg->read_ownership != IVY_READ_IVY)) {
        snprintf(err, errlen, "prefetch %u: a flag, and only with ivy reads", cfg->prefetch);
        return NULL;
    }
    if (cfg->migratory > 1 || (cfg->migratory && cfg->read_ownership != IVY_READ_GIANTVM)) {
        snprintf(err, errlen, "migratory %u: a flag, and only with giantvm reads", cfg->migratory);
        return NULL;
    }
    if (cfg->batch > 1 || cfg->batch_bytes > IVY_RT_BATCH_MAX_BYTES) {
        snprintf(err, errlen, "batch %u / batch_bytes %u: a flag, and at most %u bytes", cfg->batch,
                 cfg->batch_bytes, IVY_RT_BATCH_MAX_BYTES);
        return NULL;
    }
    for (unsigned i = 0; i < cfg->nnodes; i++) {
        if ((i == cfg->self) != (cfg->peer_fds[i] < 0)) {
            snprintf(err, errlen, "node %u: a socket is needed for every peer and none for self (peer %u fd %d)",
                     cfg->self, i, cfg->peer_fds[i]);
            return NULL;
        }
    }
    for (unsigned i = 0; i < cfg->nnodes && !cfg->insecure_plaintext; i++) {
        static const uint8_t zero[IVY_AEAD_KEY_SIZE];
        if (i != cfg->self && (!memcmp(cfg->send_keys + i * IVY_AEAD_KEY_SIZE, zero, sizeof zero) ||
                               !memcmp(cfg->recv_keys + i * IVY_AEAD_KEY_SIZE, zero, sizeof zero))) {
            snprintf(err, errlen, "node %u: no link keys for peer %u (every link is sealed)", cfg->self, i);
            return NULL;
        }
    }
    struct ivy_rt *rt = calloc(1, sizeof *rt);
    if (!rt) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rt->cfg = *cfg;
    if (!rt->cfg.heartbeat_ms)
        rt->cfg.heartbeat_ms = IVY_RT_HEARTBEAT_MS;
    if (!rt->cfg.timeout_ms)
        rt->cfg.timeout_ms = IVY_RT_TIMEOUT_MS;
    if (!rt->cfg.batch_bytes)
        rt->cfg.batch_bytes = IVY_RT_BATCH_BYTES;
    rt->uffd = rt->epfd = rt->stopfd = rt->timerfd = rt->failfd = -1;
    rt->npages = cfg->size / IVY_PAGE_SIZE;
    for (unsigned i = 0; i < IVY_MAX_NODES; i++) {
        rt->conns[i].fd = i < cfg->nnodes ? cfg->peer_fds[i] : -1;
        rt->conns[i].peer = (uint16_t)i;
    }
    for (unsigned i = 0; i < cfg->nnodes && !cfg->insecure_plaintext; i++) {
        if (i != cfg->self && link_init_keys(&rt->conns[i], cfg->send_keys + i * IVY_AEAD_KEY_SIZE,
                                             cfg->recv_keys + i * IVY_AEAD_KEY_SIZE)) {
            snprintf(err, errlen, "node %u: libcrypto could not set up AES-256-GCM", cfg->self);
            ivy_rt_destroy(rt);
            return NULL;
        }
    }
    rt->pages = calloc(rt->npages, sizeof *rt->pages);
    rt->pg = calloc(rt->npages, sizeof *rt->pg);
    rt->hold_ns = (uint64_t)cfg->hold_us * 1000u;
    for (uint64_t p = 0; rt->pg && p < rt->npages; p++)
        rt->pg[p].write_off = rt->pg[p].watch_off = rt->pg[p].hint_off = NO_WATCH;
    if (!rt->pages || !rt->pg) {
        snprintf(err, errlen, "out of memory for %llu pages", (unsigned long long)rt->npages);
        ivy_rt_destroy(rt);
        return NULL;
    }
    struct ivy_config ec = {.self = cfg->self, .nnodes = cfg->nnodes, .read_ownership = cfg->read_ownership,
                            .manager = cfg->manager, .hold = cfg->hold_us != 0,
                            .migratory = cfg->migratory, .first_touch = cfg->first_touch,
                            .prefetch = cfg->prefetch,
                            .npages = rt->npages};
    ivy_engine_init(&rt->engine, &ec, rt->pages);
    if (trace_create(rt, err, errlen) || setup_uffd(rt, err, errlen) || setup_loop(rt, err, errlen)) {
        ivy_rt_destroy(rt);
        return NULL;
    }
    return rt;
}

int ivy_rt_set_version(struct ivy_rt *rt, uint64_t page, uint64_t version)
{
    if (rt->started || page >= rt->npages || version == 0)
        return -1;
    ivy_engine_set_version(&rt->engine, page, version);
    return 0;
}

/*
 * Map pages [first, first + n) writable with one UFFDIO_CONTINUE. The kernel
 * may stop part-way (a signal, the mm changing): go on from where it
 * stopped; a page found mapped (EEXIST) is granted alone, as a fault would.
 */
static int map_range(struct ivy_rt *rt, uint64_t first, uint64_t n)
{
    while (n && !rt->failed) {
        struct uffdio_continue c = {{(uint64_t)(uintptr_t)guest_page(rt, first), n * IVY_PAGE_SIZE}, 0, 0};
        int r = ioctl(rt->uffd, UFFDIO_CONTINUE, &c) ? -errno : 0;
        rt->stats.continues++;
        uint64_t done = r == 0 ? n : c.mapped > 0 ? (uint64_t)c.mapped / IVY_PAGE_SIZE : 0;
        for (uint64_t p = first; p < first + done; p++)
            rt->pg[p].mapped = MAP_RW;
        first += done;
        n -= done;
        if (r == -EEXIST && done == 0) {
            grant(rt, first, true, true);
            first++;
            n--;
        } else if (r && r != -EAGAIN && r != -EINTR && r != -EEXIST) {
            rt_fail(rt, "UFFDIO_CONTINUE of %llu pages from 0x%llx: %s", (unsigned long long)n,
                    (unsigned long long)first, strerror(-r));
            return -1;
        }
    }
    return rt->failed ? -1 : 0;
}

/* Node 0 owns every page at boot: the engine makes each one still INITIAL
 * MODIFIED, and runs of them are mapped writable with one ioctl each. */
static int map_owned_up_front(struct ivy_rt *rt)
{
    struct ivy_actions acts; /* the row's actions: none */
    uint64_t run = 0;
    for (uint64_t p = 0; p <= rt->npages; p++) {
        if (p < rt->npages && rt->pg[p].mapped == MAP_NONE && ivy_engine_map_owned(&rt->engine, p, &acts)) {
            run++;
            continue;
        }
        if (run && map_range(rt, p - run, run))
            return -1;
        rt->stats.mapped_up_front += run;
        run = 0;
    }
    return 0;
}

int ivy_rt_start(struct ivy_rt *rt)
{
    if (rt->started)
        return -1;
    if (rt->cfg.map_owned && rt->cfg.self == 0 && map_owned_up_front(rt))
        return -1;
    uint64_t now = now_ns();
    for (unsigned i = 0; i < rt->cfg.nnodes; i++)
        rt->conns[i].last_recv_ns = rt->conns[i].last_send_ns = now;
    uint64_t ns = (uint64_t)rt->cfg.heartbeat_ms * 1000000ull;
    struct itimerspec its = {{(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)},
                             {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)}};
    if (timerfd_settime(rt->timerfd, 0, &its, NULL)) {
        /* Without it no heartbeat is sent and no silent peer is noticed. */
        rt_fail(rt, "timerfd_settime: %s", strerror(errno));
        return -1;
    }
    int r = pthread_create(&rt->thread, NULL, event_loop, rt);
    if (r) {
        rt_fail(rt, "pthread_create: %s", strerror(r));
        return -1;
    }
    char name[16];
    snprintf(name, sizeof name, "ivy-dsm-%u", rt->cfg.self);
    pthread_setname_np(rt->thread, name); /* for top, perf and ps: cosmetic, may fail */
    rt->started = true;
    if (rt->cfg.fifo_priority) {
        struct sched_param sp = {.sched_priority = rt->cfg.fifo_priority};
        r = pthread_setschedparam(rt->thread, SCHED_FIFO, &sp);
        if (r) {
            rt_fail(rt, "SCHED_FIFO priority %u for the DSM thread: %s (needs root or CAP_SYS_NICE)",
                    rt->cfg.fifo_priority, strerror(r));
            ivy_rt_stop(rt); /* joins the loop, which saw the failure */
            return -1;
        }
    }
    return 0;
}

void ivy_rt_stop(struct ivy_rt *rt)
{
    if (rt->stopped)
        return;
    rt->stopped = true;
    if (rt->started) {
        uint64_t one = 1;
        if (write(rt->stopfd, &one, sizeof one) < 0) {
            /* cannot fail for an eventfd far from overflow */
        }
        pthread_join(rt->thread, NULL);
    }
    release_faulters(rt);
    for (unsigned i = 0; i < IVY_MAX_NODES; i++) {
        struct conn *c = &rt->conns[i];
        if (c->fd >= 0 && rt->epfd >= 0)
            link_close(rt, c);
        else if (c->fd >= 0)
            close(c->fd), c->fd = -1;
    }
    int *fds[] = {&rt->uffd, &rt->epfd, &rt->stopfd, &rt->timerfd};
    for (unsigned i = 0; i < sizeof fds / sizeof fds[0]; i++) {
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
}

void ivy_rt_destroy(struct ivy_rt *rt)
{
    if (!rt)
        return;
    ivy_rt_stop(rt);
    if (rt->failfd >= 0)
        close(rt->failfd);
    for (unsigned i = 0; i < IVY_MAX_NODES; i++) {
        free(rt->conns[i].in);
        free(rt->conns[i].out);
        link_free_keys(&rt->conns[i]);
    }
    for (uint64_t p = 0; rt->pg && p < rt->npages; p++) {
        while (rt->pg[p].parked) {
            struct parked *next = rt->pg[p].parked->next;
            free(rt->pg[p].parked);
            rt->pg[p].parked = next;
        }
    }
    free(rt->fifo.q);
    free(rt->pages);
    free(rt->pg);
    free(rt->held_pages);
    trace_destroy(rt);
    free(rt);
}

const struct ivy_rt_stats *ivy_rt_stats(const struct ivy_rt *rt) { return &rt->stats; }

const struct ivy_rt_failure *ivy_rt_failure(const struct ivy_rt *rt)
{
    return __atomic_load_n(&rt->failed, __ATOMIC_ACQUIRE) ? &rt->failure : NULL;
}

const char *ivy_rt_error(const struct ivy_rt *rt)
{
    const struct ivy_rt_failure *f = ivy_rt_failure(rt);
    return f ? f->text : NULL;
}

int ivy_rt_failure_fd(const struct ivy_rt *rt) { return rt->failfd; }

unsigned ivy_rt_top_pages(const struct ivy_rt *rt, uint64_t *pages, uint32_t *counts, unsigned n)
{
    unsigned filled = 0;
    for (uint64_t p = 0; p < rt->npages; p++) {
        uint32_t c = __atomic_load_n(&rt->pg[p].fault_count, __ATOMIC_RELAXED);
        if (!c || (filled == n && c <= counts[n - 1]))
            continue;
        unsigned i = filled < n ? filled++ : n - 1;
        while (i > 0 && counts[i - 1] < c) {
            pages[i] = pages[i - 1];
            counts[i] = counts[i - 1];
            i--;
        }
        pages[i] = p;
        counts[i] = c;
    }
    return filled;
}

int ivy_rt_access(const struct ivy_rt *rt, uint64_t page)
{
    return page < rt->npages ? ivy_engine_access(&rt->engine, page) : -1;
}
