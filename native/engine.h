/*
 * engine.h - the Ivy coherence protocol as pure state transitions.
 *
 * The engine owns no memory, sockets, threads or file descriptors. It is fed
 * one event at a time (a local fault, or a message from a peer) for one page,
 * updates that page's entry and returns the actions the caller must perform,
 * in order. The runtime (runtime.c) performs them against userfaultfd and TCP;
 * the simulator (tests/dsm) performs them against in-memory queues. Both must
 * execute actions strictly in the order given: e.g. WRPROTECT before the SEND
 * that carries the page bytes, so the bytes sent are the bytes frozen.
 *
 * Caller's contract:
 *  - Events for one engine are delivered one at a time (the engine is not
 *    thread safe; the runtime drives it from a single event-loop thread).
 *  - Before feeding a REPLY that carries page data, the caller has already
 *    copied the bytes into its RAM view of the page.
 *  - A PARK action asks the caller to hold a message; UNPARK asks it to
 *    re-deliver, in arrival order, every message held for that page. A
 *    re-delivered message may be parked again.
 *  - Versions: equal versions mean equal bytes. Pages whose bytes were written
 *    outside the protocol before start (the image loader on node 0) must be
 *    given version >= 1 with ivy_engine_set_version() before any event.
 */
#ifndef IVY_ENGINE_H
#define IVY_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#define IVY_MAX_NODES 64
#define IVY_PAGE_SIZE 4096u
/* Worst case of one event: an invalidation to every other node plus a few. */
#define IVY_MAX_ACTIONS (IVY_MAX_NODES + 8)

enum ivy_state {
    IVY_INITIAL = 0, /* never touched since boot (node 0 owns it) */
    IVY_INVALID = 1, /* no access */
    IVY_SHARED = 2,  /* read-only */
    IVY_MODIFIED = 3 /* read-write */
};

/* What the page entry is waiting for, if anything. */
enum ivy_pending {
    IVY_IDLE = 0,
    IVY_WANT_READ = 1,  /* request sent, waiting for the owner's reply */
    IVY_WANT_WRITE = 2, /* request sent, waiting for the owner's reply */
    IVY_WAIT_ACKS = 3,  /* have the page, waiting for invalidation acks */
    IVY_READ_STALE = 4  /* classic Ivy: invalidated while WANT_READ, so the coming
                           reply is already stale; the engine asks again */
};

enum ivy_read_ownership {
    IVY_READ_GIANTVM = 0, /* a read moves ownership to the reader (default) */
    IVY_READ_IVY = 1      /* classic Ivy: owner keeps it, adds the reader */
};

enum ivy_manager {
    IVY_MGR_DYNAMIC = 0, /* probowner forwarding with path compression */
    IVY_MGR_CENTRAL = 1, /* node 0 records every owner */
    IVY_MGR_FIXED = 2    /* node p % nnodes records the owner of p */
};

enum ivy_msg_type {
    IVY_MSG_READ = 1,       /* requester wants a readable copy */
    IVY_MSG_WRITE = 2,      /* requester wants ownership and write access */
    IVY_MSG_REPLY = 3,      /* owner -> requester: page (maybe), copyset, version */
    IVY_MSG_INVALIDATE = 4, /* new owner -> copy holder: drop your copy */
    IVY_MSG_INV_ACK = 5,    /* copy holder -> new owner: dropped */
    IVY_MSG_TYPE_MAX = 5
};

/* Reply flags. */
#define IVY_REPLY_DATA 0x1u      /* page bytes follow (else: version matched) */
#define IVY_REPLY_OWNERSHIP 0x2u /* the requester becomes the owner */

struct ivy_msg {
    uint8_t type;  /* enum ivy_msg_type */
    uint8_t flags; /* IVY_REPLY_* on replies */
    uint16_t requester;
    uint16_t sender;
    uint16_t hops; /* forwards so far (statistics) */
    uint64_t page;
    uint64_t version;
    uint64_t copyset;
    uint64_t txid;
};

struct ivy_page {
    uint8_t state;   /* enum ivy_state */
    uint8_t owner;   /* bool: this node owns the page */
    uint8_t pending; /* enum ivy_pending */
    uint8_t reserved;
    uint16_t probowner; /* at a manager (central/fixed): the recorded owner */
    uint16_t reserved2;
    uint64_t copyset;   /* authoritative only at the owner */
    uint64_t version;
    uint64_t acks_missing; /* nodes whose INV_ACK we still wait for */
    uint64_t txid;         /* of our outstanding request */
};

struct ivy_config {
    uint16_t self;
    uint16_t nnodes;
    uint8_t read_ownership; /* enum ivy_read_ownership */
    uint8_t manager;        /* enum ivy_manager */
    uint64_t npages;
};

enum ivy_action_kind {
    IVY_ACT_SEND = 1,      /* send msg to node `to`; IVY_REPLY_DATA: attach the page bytes */
    IVY_ACT_MAP_RO = 2,    /* guest view: readable, not writable; wakes faulters */
    IVY_ACT_MAP_RW = 3,    /* guest view: readable and writable; wakes faulters */
    IVY_ACT_ZAP = 4,       /* guest view: no access (bytes kept in RAM) */
    IVY_ACT_WRPROTECT = 5, /* guest view: write-protect a mapped page */
    IVY_ACT_WAKE = 6,      /* wake faulters: access already suffices (spurious fault) */
    IVY_ACT_PARK = 7,      /* hold msg until UNPARK for msg.page */
    IVY_ACT_UNPARK = 8,    /* re-deliver held messages for page, in order */
    IVY_ACT_DONE = 9       /* a local fault completed (latency/statistics hook) */
};

struct ivy_action {
    uint8_t kind;
    uint16_t to;    /* IVY_ACT_SEND */
    uint64_t page;  /* every kind */
    struct ivy_msg msg; /* IVY_ACT_SEND and IVY_ACT_PARK */
};

struct ivy_actions {
    unsigned n;
    struct ivy_action a[IVY_MAX_ACTIONS];
};

struct ivy_engine {
    struct ivy_config cfg;
    struct ivy_page *pages; /* cfg.npages entries, owned by the caller */
    uint64_t next_txid;
};

/* Every page INITIAL; probowner 0 (or the manager); node 0 owns all. */
void ivy_engine_init(struct ivy_engine *e, const struct ivy_config *cfg,
                     struct ivy_page *pages);

/* Declare bytes written outside the protocol (node 0's image). */
void ivy_engine_set_version(struct ivy_engine *e, uint64_t page, uint64_t version);

/* A local access faulted: `write` is true for a write (or write-protect) fault. */
void ivy_engine_fault(struct ivy_engine *e, uint64_t page, bool write,
                      struct ivy_actions *out);

/* A message arrived from a peer (already validated by the wire layer, and
 * accepted by ivy_engine_check_message: the engine asserts it is). */
void ivy_engine_message(struct ivy_engine *e, const struct ivy_msg *m,
                        struct ivy_actions *out);

/* The engine's preconditions on a message, given the page's state: NULL if
 * ivy_engine_message may be fed it, else why not (a reply nobody asked for,
 * an ack nobody waits for, ...). The runtime refuses such frames from a peer
 * with this reason; the engine asserts it. m->page must be < npages. */
const char *ivy_engine_check_message(const struct ivy_engine *e, const struct ivy_msg *m);

/* Where a request for `page` goes first from this node. */
uint16_t ivy_engine_route(const struct ivy_engine *e, uint64_t page);

/* Access this node has right now: 0 none, 1 read, 2 read-write. */
int ivy_engine_access(const struct ivy_engine *e, uint64_t page);

const char *ivy_state_name(uint8_t state);
const char *ivy_msg_name(uint8_t type);

#endif
