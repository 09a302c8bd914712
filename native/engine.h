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
 *  - A HOLD action (cfg.hold set) starts the page's hold window: the caller
 *    feeds IVY_EV_HOLD_EXPIRED once it has run out, or IVY_EV_STORE_SEEN once
 *    the woken writer's store is seen, whichever comes first, and only while
 *    the page is still IVY_HOLDING (ivy_engine_page). Either may come late:
 *    requests keep parking until it does.
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
    IVY_READ_STALE = 4, /* classic Ivy: invalidated while WANT_READ, so the coming
                           reply is already stale; the engine asks again */
    IVY_HOLDING = 5,    /* owner, just granted: requests wait until the hold
                           window is over, so the woken thread gets its access */
    IVY_PENDING_MAX = 5
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

/* What node 0's first read of a page it never touched is granted. */
enum ivy_first_touch {
    IVY_TOUCH_READ = 0, /* a readable copy; a later write faults again (default) */
    IVY_TOUCH_WRITE = 1 /* write access at once: a read-modify-write faults once, but the
                           version moves, so the page's bytes travel to the next reader */
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
#define IVY_REPLY_MIGRATORY 0x4u /* with OWNERSHIP on a READ's reply: the page is migratory, the
                                    requester is its sole holder (cfg.migratory only) */
#define IVY_REPLY_WRITABLE 0x8u  /* with OWNERSHIP on a hinted READ's reply: a write grant, no other copy
                                    is left (cfg.migratory only) */
/* Request flags. */
#define IVY_REQ_WRITE_SOON 0x10u /* on a READ: the requester predicts a write to the page soon, so an
                                    owner that is its only holder grants it writable (cfg.migratory) */

struct ivy_msg {
    uint8_t type;  /* enum ivy_msg_type */
    uint8_t flags; /* IVY_REPLY_* on replies, IVY_REQ_* on a READ */
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
    uint8_t migratory; /* bool, kept by the owner: read-then-write detected (cfg.migratory) */
    uint16_t probowner; /* at a manager (central/fixed): the recorded owner */
    uint8_t write_soon; /* bool: our outstanding READ carries IVY_REQ_WRITE_SOON */
    uint8_t reserved2;
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
    uint8_t hold;           /* bool: an owner's completed fault starts a hold window */
    uint8_t first_touch;    /* enum ivy_first_touch */
    uint8_t migratory;      /* bool: a page read then written by one node is granted whole on
                               its next read (GiantVM reads only; docs/protocol.md) */
    uint8_t prefetch;       /* bool: IVY_EV_PREFETCH asks for a read copy before any fault
                               (classic Ivy reads only, so a prefetch never moves ownership) */
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
    IVY_ACT_DONE = 9,      /* a local fault completed (latency/statistics hook) */
    IVY_ACT_HOLD = 10      /* start the page's hold window (see the contract above) */
};

struct ivy_action {
    uint8_t kind;
    uint16_t to;    /* IVY_ACT_SEND */
    uint64_t page;  /* every kind */
    struct ivy_msg msg; /* IVY_ACT_SEND and IVY_ACT_PARK */
};

struct ivy_actions {
    unsigned n;
    unsigned row; /* the transition-table row that handled the event */
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

/*
 * Events: what the transition table (engine.c, docs/protocol.md) dispatches
 * on. A message's event is its type; local events follow.
 */
enum ivy_event {
    IVY_EV_READ = IVY_MSG_READ,
    IVY_EV_WRITE = IVY_MSG_WRITE,
    IVY_EV_REPLY = IVY_MSG_REPLY,
    IVY_EV_INVALIDATE = IVY_MSG_INVALIDATE,
    IVY_EV_INV_ACK = IVY_MSG_INV_ACK,
    IVY_EV_READ_FAULT = 6,   /* a local read faulted */
    IVY_EV_WRITE_FAULT = 7,  /* a local write (or write-protect) faulted */
    IVY_EV_HOLD_EXPIRED = 8, /* the page's hold window ran out */
    IVY_EV_STORE_SEEN = 9,   /* the writer woken by the hold's grant has stored */
    IVY_EV_MAP_OWNED = 10,   /* node 0, before start: it maps an owned page writable up front */
    IVY_EV_PREFETCH = 11,    /* the runtime expects a read of the page soon (a sequential run) */
    IVY_EV_READ_FAULT_WRITE_SOON = 12, /* a local read faulted, and the runtime predicts a write */
    IVY_EV_MAX = 12
};

/* Row owner mask bits. */
#define IVY_ROW_NOT_OWNER 0x1u
#define IVY_ROW_OWNER 0x2u

struct ivy_engine;
typedef int (*ivy_row_when)(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m);
typedef const char *(*ivy_row_guard)(const struct ivy_engine *e, const struct ivy_page *p,
                                     const struct ivy_msg *m);
typedef void (*ivy_row_run)(struct ivy_engine *e, struct ivy_page *p, uint64_t page, const struct ivy_msg *m,
                            struct ivy_actions *out);

/*
 * One transition. The first row whose key (event, state, pending, owner: one
 * bit per value in each mask) matches and whose `when` holds handles the
 * event; if its guard refuses (a message that does not fit the page), the
 * message is refused with the guard's words. m is NULL for local events.
 */
struct ivy_row {
    const char *name;       /* the transition */
    const char *handler;    /* the function that performs it (rows may share one) */
    uint16_t events;        /* bit (1 << enum ivy_event) per event */
    uint8_t states;         /* bit per enum ivy_state */
    uint8_t pendings;       /* bit per enum ivy_pending */
    uint8_t owner;          /* IVY_ROW_OWNER | IVY_ROW_NOT_OWNER */
    ivy_row_when when;      /* NULL: always */
    const char *when_name;
    ivy_row_guard guard;    /* NULL: every matching event fits */
    const char *guard_name;
    const char *effect;     /* what it does, for docs/protocol.md */
    ivy_row_run run;
};

unsigned ivy_engine_nrows(void);
const struct ivy_row *ivy_engine_row(unsigned i);
const char *ivy_event_name(unsigned event);
/* Node 0, before any event (IVY_EV_MAP_OWNED): a page still INITIAL becomes
 * MODIFIED with its version moved on, because the caller maps it writable up
 * front (no fault will tell the engine about its writes); out->row names the
 * row, out->n is 0. False, and nothing changed, when no row takes the page. */
bool ivy_engine_map_owned(struct ivy_engine *e, uint64_t page, struct ivy_actions *out);

/* A local access faulted: `write` is true for a write (or write-protect) fault. */
void ivy_engine_fault(struct ivy_engine *e, uint64_t page, bool write,
                      struct ivy_actions *out);

/* A local read faulted and the runtime predicts a write to it soon
 * (IVY_EV_READ_FAULT_WRITE_SOON): as a read fault, but with cfg.migratory the
 * READ it sends carries IVY_REQ_WRITE_SOON. */
void ivy_engine_read_fault_write_soon(struct ivy_engine *e, uint64_t page, struct ivy_actions *out);

/* A hold window event for a page that is IVY_HOLDING: IVY_EV_HOLD_EXPIRED
 * or IVY_EV_STORE_SEEN. */
void ivy_engine_hold_event(struct ivy_engine *e, uint64_t page, unsigned event,
                           struct ivy_actions *out);

/* The runtime expects a read of the page soon (IVY_EV_PREFETCH): with the
 * prefetch option, an absent page is asked for as a read fault would ask,
 * so its copy is mapped before the vCPU touches it; otherwise nothing. */
void ivy_engine_prefetch(struct ivy_engine *e, uint64_t page, struct ivy_actions *out);

/* Which row takes message m now (m->page < npages, node ids < nnodes: the
 * wire layer's checks): row >= 0, or -1 with why it does not fit the page
 * (refused_by: the row whose guard refused, or -1 when no row matches). */
struct ivy_verdict {
    int row;
    int refused_by;
    const char *why;
};
struct ivy_verdict ivy_engine_check(const struct ivy_engine *e, const struct ivy_msg *m);

/* Run the row ivy_engine_check() just chose for m (nothing in between). */
void ivy_engine_apply(struct ivy_engine *e, const struct ivy_msg *m, unsigned row,
                      struct ivy_actions *out);

/* Check and apply: for messages already checked once (re-delivered ones);
 * one that no longer fits is an engine bug (asserted). */
void ivy_engine_message(struct ivy_engine *e, const struct ivy_msg *m,
                        struct ivy_actions *out);

/* Where a request for `page` goes first from this node. */
uint16_t ivy_engine_route(const struct ivy_engine *e, uint64_t page);

/* Access this node has right now: 0 none, 1 read, 2 read-write. */
int ivy_engine_access(const struct ivy_engine *e, uint64_t page);

const char *ivy_state_name(uint8_t state);
const char *ivy_msg_name(uint8_t type);
const char *ivy_pending_name(uint8_t pending);

#endif
