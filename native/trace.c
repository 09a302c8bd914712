/*
 * trace.c - the runtime trace ring (trace.h) and the hooks that fill it.
 *
 * One writer (the node's event-loop thread) and one reader at a time (the
 * drainer, serialised by a mutex): head and tail are free-running counters,
 * published with release stores, so neither side ever blocks the other and
 * the writer's cost is a clock read and a 64-byte store.
 */
#define _GNU_SOURCE
#include "rt_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ivy_trace {
    struct ivy_trace_record *ring;
    uint64_t cap;
    uint64_t head;    /* records ever written; only the writer stores it */
    uint64_t tail;    /* records ever drained; only the drainer stores it */
    uint64_t dropped; /* written by the writer only */
    uint64_t sent[IVY_MAX_NODES]; /* frames sent on each link so far */
    uint64_t recv[IVY_MAX_NODES]; /* frames received on each link so far */
    pthread_mutex_t drain_lock;
};

int trace_create(struct ivy_rt *rt, char *err, size_t errlen)
{
    uint32_t n = rt->cfg.trace_records;
    if (!n)
        return 0;
    if (n > IVY_TRACE_MAX_RECORDS) {
        snprintf(err, errlen, "trace_records %u: at most %u records per node", n, IVY_TRACE_MAX_RECORDS);
        return -1;
    }
    struct ivy_trace *t = calloc(1, sizeof *t);
    /* calloc of a large ring is fresh zero pages: memory is spent only as records are written. */
    if (t)
        t->ring = calloc(n, sizeof *t->ring);
    if (!t || !t->ring) {
        free(t);
        snprintf(err, errlen, "out of memory for a trace ring of %u records", n);
        return -1;
    }
    t->cap = n;
    pthread_mutex_init(&t->drain_lock, NULL);
    rt->trace = t;
    return 0;
}

void trace_destroy(struct ivy_rt *rt)
{
    struct ivy_trace *t = rt->trace;
    if (!t)
        return;
    rt->trace = NULL;
    pthread_mutex_destroy(&t->drain_lock);
    free(t->ring);
    free(t);
}

/* A zeroed record of `kind` at `page`, stamped now, or NULL when the ring is full. */
static struct ivy_trace_record *trace_slot(struct ivy_trace *t, uint8_t kind, uint64_t page)
{
    uint64_t tail = __atomic_load_n(&t->tail, __ATOMIC_ACQUIRE);
    if (t->head - tail >= t->cap) {
        t->dropped++;
        return NULL;
    }
    struct ivy_trace_record *r = &t->ring[t->head % t->cap];
    memset(r, 0, sizeof *r);
    r->ns = now_ns();
    r->kind = kind;
    r->page = page;
    return r;
}

static void trace_commit(struct ivy_trace *t)
{
    __atomic_store_n(&t->head, t->head + 1, __ATOMIC_RELEASE);
}

static void fill_msg(struct ivy_trace_record *r, uint8_t type, const struct ivy_msg *m)
{
    r->type = type;
    r->txid = m->txid;
    r->version = m->version;
    r->requester = m->requester;
    r->hops = m->hops;
    r->flags = m->flags;
}

void trace_fault(struct ivy_rt *rt, uint64_t page, unsigned access, uint32_t tid)
{
    struct ivy_trace_record *r = trace_slot(rt->trace, IVY_TR_FAULT, page);
    if (!r)
        return;
    r->type = (uint8_t)access;
    r->tid = tid;
    trace_commit(rt->trace);
}

void trace_send(struct ivy_rt *rt, const struct conn *c, uint8_t type, const struct ivy_msg *m, size_t bytes)
{
    struct ivy_trace *t = rt->trace;
    uint64_t seq = t->sent[c->peer]++; /* counted even if dropped: the pairing stays aligned */
    struct ivy_trace_record *r = trace_slot(t, IVY_TR_SEND, m->page);
    if (!r)
        return;
    fill_msg(r, type, m);
    r->peer = c->peer;
    r->seq = seq;
    r->bytes = (uint32_t)bytes;
    trace_commit(t);
}

void trace_recv(struct ivy_rt *rt, const struct conn *c, const struct ivy_wire_frame *f)
{
    struct ivy_trace *t = rt->trace;
    uint64_t seq = t->recv[c->peer]++;
    struct ivy_trace_record *r = trace_slot(t, IVY_TR_RECV, f->msg.page);
    if (!r)
        return;
    fill_msg(r, f->msg.type, &f->msg);
    r->peer = c->peer;
    r->seq = seq;
    r->bytes = f->frame_len;
    trace_commit(t);
}

void trace_action(struct ivy_rt *rt, const struct ivy_action *a)
{
    static const uint8_t kinds[] = {
        [IVY_ACT_MAP_RO] = IVY_TR_GRANT, [IVY_ACT_MAP_RW] = IVY_TR_GRANT, [IVY_ACT_ZAP] = IVY_TR_ZAP,
        [IVY_ACT_WRPROTECT] = IVY_TR_WRPROTECT, [IVY_ACT_WAKE] = IVY_TR_WAKE, [IVY_ACT_PARK] = IVY_TR_PARK,
        [IVY_ACT_UNPARK] = IVY_TR_UNPARK, [IVY_ACT_DONE] = IVY_TR_DONE,
    };
    uint8_t kind = a->kind < sizeof kinds ? kinds[a->kind] : 0;
    if (!kind || (a->kind == IVY_ACT_UNPARK && !rt->pg[a->page].parked))
        return; /* SEND: link_send records the frame (or it went to this node's own queue);
                   the engine unparks after every grant, usually with nothing parked */
    struct ivy_trace_record *r = trace_slot(rt->trace, kind, a->page);
    if (!r)
        return;
    if (a->kind == IVY_ACT_MAP_RO || a->kind == IVY_ACT_MAP_RW) {
        r->type = a->kind == IVY_ACT_MAP_RW ? IVY_TR_ACCESS_WRITE : IVY_TR_ACCESS_READ;
    } else if (a->kind == IVY_ACT_PARK) {
        fill_msg(r, a->msg.type, &a->msg);
        r->peer = a->msg.requester;
    } else if (a->kind == IVY_ACT_DONE) {
        /* Before fault_done() clears them: was a request sent, and since when did we wait. */
        bool remote = rt->pg[a->page].remote;
        r->type = remote;
        r->txid = remote ? rt->pages[a->page].txid : 0;
        r->version = rt->pg[a->page].fault_t0 ? r->ns - rt->pg[a->page].fault_t0 : 0;
    }
    trace_commit(rt->trace);
}

void trace_hold(struct ivy_rt *rt, uint8_t kind, uint64_t page, const struct ivy_msg *m)
{
    struct ivy_trace_record *r = trace_slot(rt->trace, kind, page);
    if (!r)
        return;
    if (m) {
        fill_msg(r, m->type, m);
        r->peer = m->requester;
    }
    trace_commit(rt->trace);
}

unsigned ivy_rt_trace_drain(struct ivy_rt *rt, struct ivy_trace_record *out, unsigned n)
{
    struct ivy_trace *t = rt->trace;
    if (!t)
        return 0;
    pthread_mutex_lock(&t->drain_lock);
    uint64_t tail = t->tail, head = __atomic_load_n(&t->head, __ATOMIC_ACQUIRE);
    unsigned k = head - tail < n ? (unsigned)(head - tail) : n;
    for (unsigned i = 0; i < k; i++)
        out[i] = t->ring[(tail + i) % t->cap];
    __atomic_store_n(&t->tail, tail + k, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&t->drain_lock);
    return k;
}

uint64_t ivy_rt_trace_dropped(const struct ivy_rt *rt)
{
    return rt->trace ? __atomic_load_n(&rt->trace->dropped, __ATOMIC_RELAXED) : 0;
}

int ivy_rt_trace_enabled(const struct ivy_rt *rt) { return rt->trace != NULL; }

uint64_t ivy_trace_now_ns(void) { return now_ns(); }
