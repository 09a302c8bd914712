/*
 * trace.h - the DSM node's runtime trace: fixed-size binary records in a ring.
 *
 * With struct ivy_rt_config.trace_records > 0 a node keeps a ring of that many
 * records, written only by its event-loop thread, each stamped with
 * CLOCK_MONOTONIC in ns. Python drains it (ivy_rt_trace_drain) at the end of
 * a run or from a control thread while it runs; hypervisor/trace.py turns the
 * records of every node into one Chrome JSON trace. docs/trace.md describes
 * what each kind means.
 *
 * A full ring keeps the oldest records and counts each one it could not
 * take (ivy_rt_trace_dropped): the writer never waits for the reader and
 * never overwrites what the reader may be copying. Messages carry a per-link
 * sequence number, so a dropped record loses only itself: every other send
 * still pairs with its receive.
 */
#ifndef IVY_TRACE_H
#define IVY_TRACE_H

#include <stdint.h>

#define IVY_TRACE_RECORD_SIZE 64
#define IVY_TRACE_MAX_RECORDS (1u << 24) /* 1 GiB of ring: a bound on a typo, not a tuning */

enum ivy_trace_kind {
    IVY_TR_FAULT = 1,      /* userfaultfd fault read: page, access (IVY_TR_ACCESS_*), tid */
    IVY_TR_SEND = 2,       /* frame sent: type, page, peer (to), txid, version, bytes, seq */
    IVY_TR_RECV = 3,       /* frame received: the same, peer is the sender */
    IVY_TR_GRANT = 4,      /* guest view made readable (access READ) or writable (access WRITE) */
    IVY_TR_ZAP = 5,        /* guest view of page unmapped */
    IVY_TR_WRPROTECT = 6,  /* guest view of page write-protected */
    IVY_TR_WAKE = 7,       /* faulters woken: the access already sufficed (spurious fault) */
    IVY_TR_PARK = 8,       /* request held by the engine while page is acquired: type, peer, txid */
    IVY_TR_UNPARK = 9,     /* requests held for page re-delivered */
    IVY_TR_HOLD_BEGIN = 10, /* request deferred by the hold window: type, peer (requester), txid */
    IVY_TR_HOLD_END = 11,  /* the hold window of page ended: its deferred requests are served */
    IVY_TR_DONE = 12,      /* local fault on page completed: txid of its request, remote 0/1, ns */
    IVY_TR_KIND_MAX = 12
};

enum ivy_trace_access { IVY_TR_ACCESS_READ = 0, IVY_TR_ACCESS_WRITE = 1, IVY_TR_ACCESS_WP = 2 };

struct ivy_trace_record {
    uint64_t ns;        /* CLOCK_MONOTONIC when the event loop saw or did it */
    uint64_t page;
    uint64_t txid;      /* messages, PARK, HOLD_BEGIN, DONE (0: no request was sent) */
    uint64_t version;   /* messages; DONE: fault latency in ns */
    uint64_t seq;       /* SEND/RECV: frames on this link before this one, in that direction */
    uint32_t tid;       /* FAULT: faulting thread (kernel tid, UFFD_FEATURE_THREAD_ID) */
    uint32_t bytes;     /* SEND/RECV: frame bytes, header included */
    uint16_t peer;      /* SEND: destination; RECV: sender; PARK/HOLD_BEGIN: requester */
    uint16_t requester; /* messages */
    uint16_t hops;      /* messages */
    uint8_t kind;       /* enum ivy_trace_kind */
    uint8_t type;       /* messages, PARK, HOLD_BEGIN: wire type; FAULT, GRANT: IVY_TR_ACCESS_*; DONE: remote 1, local 0 */
    uint8_t flags;      /* messages: IVY_REPLY_* */
    uint8_t reserved[7];
};

_Static_assert(sizeof(struct ivy_trace_record) == IVY_TRACE_RECORD_SIZE, "trace record is 64 bytes");
_Static_assert(__builtin_offsetof(struct ivy_trace_record, seq) == 32, "trace record layout");
_Static_assert(__builtin_offsetof(struct ivy_trace_record, tid) == 40, "trace record layout");
_Static_assert(__builtin_offsetof(struct ivy_trace_record, peer) == 48, "trace record layout");
_Static_assert(__builtin_offsetof(struct ivy_trace_record, kind) == 54, "trace record layout");
_Static_assert(__builtin_offsetof(struct ivy_trace_record, flags) == 56, "trace record layout");

struct ivy_rt;

/* Move up to n of the oldest records into out; returns how many. Safe from
 * any one thread at a time while the node runs, and after it stopped. */
unsigned ivy_rt_trace_drain(struct ivy_rt *rt, struct ivy_trace_record *out, unsigned n);
/* Records the full ring could not take so far. */
uint64_t ivy_rt_trace_dropped(const struct ivy_rt *rt);
/* 1 if the node was created with tracing on. */
int ivy_rt_trace_enabled(const struct ivy_rt *rt);
/* CLOCK_MONOTONIC in ns, the records' clock, for callers that time against them. */
uint64_t ivy_trace_now_ns(void);

#endif
