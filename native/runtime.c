/*
 * runtime.c - one DSM node: a single event-loop thread drives the engine.
 *
 * The loop waits in epoll on: the userfaultfd of the guest view (local
 * faults), one TCP socket per peer (frames), an eventfd (stop) and a timerfd
 * (heartbeats and silence detection). Every event becomes engine input; every
 * engine action is performed here, in order (links live in link.c, the
 * userfaultfd operations in rt_uffd.c, start and stop in rt_lifecycle.c). There
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
            rt_grant(rt, a->page, false, false);
            PROF(rt, PROF_GRANTED);
            break;
        case IVY_ACT_MAP_RW:
            if (rt->pg[a->page].hint_off != NO_WATCH)
                pred_granted(rt, a->page, true); /* before the faulter is woken: the word as granted */
            watch_arm(rt, a->page);
            rt_grant(rt, a->page, true, false);
            PROF(rt, PROF_GRANTED);
            break;
        case IVY_ACT_ZAP: rt_zap(rt, a->page); PROF(rt, PROF_ZAPPED); break;
        case IVY_ACT_WRPROTECT: rt_wrprotect(rt, a->page); PROF(rt, PROF_WRPROTECTED); break;
        case IVY_ACT_WAKE: rt_wake_spurious(rt, a->page, minor); break;
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
    const uint16_t word_off = (uint16_t)(addr % IVY_PAGE_SIZE & ~7u); /* the faulting word */
    if (write && rt->pg[page].write_off == NO_WATCH)
        rt->pg[page].write_off = word_off;
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
        pred_read_fault(rt, page, pending_before, word_off);
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
void rt_release_faulters(struct ivy_rt *rt)
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

void *rt_event_loop(void *arg)
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
    rt_release_faulters(rt);
#ifdef IVY_PROFILE
    prof_dump(rt);
#endif
    return NULL;
}
