/*
 * engine.c - the Ivy coherence protocol (docs/protocol.md) as pure state
 * transitions. Dispatch is one table (ROWS, at the end): each row names the
 * event and page state it takes, a guard that refuses messages that do not
 * fit, and the handler that runs. The same rows decide which transition runs
 * and whether a peer's message is acceptable, so no second checker restates
 * preconditions; tests/dsm/model.py mirrors the table row by row, and
 * docs/protocol.md's transition table is generated from it. No I/O, no
 * allocation, no locks: the caller delivers one event at a time and performs
 * the returned actions in order.
 *
 * Forwarding follows Li & Hudak: a non-owner passes a request on to its
 * probable owner and the true owner answers the requester directly, so a
 * reply never travels back along the chain.
 */
#include "engine.h"

#include <assert.h>
#include <stddef.h>

/* Tests redefine this to turn a broken invariant into an exception. With
 * NDEBUG the condition is still type-checked, so no variable goes unused. */
#ifndef IVY_ASSERT
#ifdef NDEBUG
#define IVY_ASSERT(cond) ((void)sizeof(!(cond)))
#else
#define IVY_ASSERT(cond) assert(cond)
#endif
#endif

#define NODE_BIT(n) (UINT64_C(1) << (n))

/* ---------------------------------------------------------------- helpers */

static struct ivy_page *page_entry(struct ivy_engine *e, uint64_t page)
{
    IVY_ASSERT(page < e->cfg.npages);
    return &e->pages[page];
}

static bool manager_mode(const struct ivy_engine *e)
{
    return e->cfg.manager != IVY_MGR_DYNAMIC;
}

static uint16_t manager_of(const struct ivy_engine *e, uint64_t page)
{
    if (e->cfg.manager == IVY_MGR_FIXED)
        return (uint16_t)(page % e->cfg.nnodes);
    return 0;
}

static bool is_manager(const struct ivy_engine *e, uint64_t page)
{
    return manager_mode(e) && manager_of(e, page) == e->cfg.self;
}

/* Does serving a request of this type move ownership to its requester? */
static bool moves_ownership(const struct ivy_engine *e, uint8_t type)
{
    return type == IVY_MSG_WRITE || e->cfg.read_ownership == IVY_READ_GIANTVM;
}

/*
 * A hint about the owner that does not come from an ownership move (an
 * invalidation's sender, a classic-Ivy read reply's sender). In the manager
 * schemes probowner is either the manager's record, which only ownership
 * moves may change, or unused for routing, so hints are dropped there.
 */
static void hint_probowner(const struct ivy_engine *e, struct ivy_page *p, uint16_t node)
{
    if (!manager_mode(e))
        p->probowner = node;
}

static int access_of(const struct ivy_page *p)
{
    switch (p->state) {
    case IVY_SHARED:
        return 1;
    case IVY_MODIFIED:
        return 2;
    default:
        return 0;
    }
}

static struct ivy_action *emit(struct ivy_actions *out, uint8_t kind, uint64_t page)
{
    IVY_ASSERT(out->n < IVY_MAX_ACTIONS);
    struct ivy_action *a = &out->a[out->n++];
    *a = (struct ivy_action){.kind = kind, .page = page};
    return a;
}

static void emit_send(const struct ivy_engine *e, struct ivy_actions *out, uint16_t to,
                      const struct ivy_msg *m)
{
    IVY_ASSERT(to != e->cfg.self && to < e->cfg.nnodes);
    struct ivy_action *a = emit(out, IVY_ACT_SEND, m->page);
    a->to = to;
    a->msg = *m;
    a->msg.sender = e->cfg.self;
}

static struct ivy_msg make_msg(const struct ivy_engine *e, uint8_t type, uint64_t page,
                               uint16_t requester, uint64_t version, uint64_t copyset,
                               uint64_t txid)
{
    return (struct ivy_msg){
        .type = type,
        .requester = requester,
        .sender = e->cfg.self,
        .page = page,
        .version = version,
        .copyset = copyset,
        .txid = txid,
    };
}

/* The invariants every page entry satisfies between events. */
static void check_page(const struct ivy_engine *e, const struct ivy_page *p)
{
    const uint64_t self = NODE_BIT(e->cfg.self);

    IVY_ASSERT(p->state <= IVY_MODIFIED);
    IVY_ASSERT(p->pending <= IVY_PENDING_MAX);
    /* Holding => a hold-enabled owner with access. */
    IVY_ASSERT(p->pending != IVY_HOLDING ||
               (e->cfg.hold && p->owner && (p->state == IVY_SHARED || p->state == IVY_MODIFIED)));
    /* Owner => its copyset holds itself (plus, while invalidating, the
     * nodes that have not acknowledged yet). */
    IVY_ASSERT(!p->owner || (p->copyset & self));
    /* MODIFIED => owner and sole holder. */
    IVY_ASSERT(p->state != IVY_MODIFIED || (p->owner && p->copyset == self));
    /* Waiting for acks => owner; acks awaited <=> WAIT_ACKS. */
    IVY_ASSERT((p->pending == IVY_WAIT_ACKS) == (p->acks_missing != 0));
    IVY_ASSERT(p->pending != IVY_WAIT_ACKS || p->owner);
    IVY_ASSERT(p->pending != IVY_WAIT_ACKS ||
               p->copyset == (self | p->acks_missing));
    /* An owner that is not acquiring holds a copy (node 0's INITIAL counts). */
    IVY_ASSERT(!p->owner || p->pending == IVY_WAIT_ACKS || p->state != IVY_INVALID);
    /* Asking for the page => not the owner. */
    IVY_ASSERT(!(p->owner && (p->pending == IVY_WANT_READ || p->pending == IVY_WANT_WRITE ||
                              p->pending == IVY_READ_STALE)));
    /* The migratory mark lives at the owner only, and only with the option. */
    IVY_ASSERT(!p->migratory || (p->owner && e->cfg.migratory));
    /* A write-soon hint rides on our outstanding READ only. */
    IVY_ASSERT(!p->write_soon || (p->pending == IVY_WANT_READ && e->cfg.migratory));
    /* INITIAL is never left and re-entered; only node 0 owns it. */
    IVY_ASSERT(p->state != IVY_INITIAL || !p->owner || e->cfg.self == 0);
}

/* --------------------------------------------------------- acquisitions */

/* A local fault completed (MAP_* and DONE emitted): an owner starts its hold
 * window, and the requests it parks wait for the window's end; otherwise the
 * parked requests go on now, if the page was pending. */
static void finish(struct ivy_engine *e, struct ivy_page *p, uint64_t page, bool unpark,
                   struct ivy_actions *out)
{
    if (e->cfg.hold && p->owner) {
        p->pending = IVY_HOLDING;
        emit(out, IVY_ACT_HOLD, page);
        return;
    }
    p->pending = IVY_IDLE;
    if (unpark)
        emit(out, IVY_ACT_UNPARK, page);
}

/* OWNER (WAIT_ACKS, IDLE or HOLDING) --last copy gone--> OWNER|MODIFIED */
static void grant_write(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                        struct ivy_actions *out)
{
    IVY_ASSERT(p->owner && p->acks_missing == 0);
    const bool unpark = p->pending != IVY_IDLE; /* requests parked only while busy */
    p->version += 1;
    p->state = IVY_MODIFIED;
    p->copyset = NODE_BIT(e->cfg.self);
    p->probowner = e->cfg.self;
    emit(out, IVY_ACT_MAP_RW, page);
    emit(out, IVY_ACT_DONE, page);
    finish(e, p, page, unpark, out);
}

/* OWNER --need write, copies elsewhere--> WAIT_ACKS (INVALIDATE each holder) */
static void invalidate_copies(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                              uint64_t others, struct ivy_actions *out)
{
    IVY_ASSERT(p->owner && others != 0 && !(others & NODE_BIT(e->cfg.self)));
    p->pending = IVY_WAIT_ACKS;
    p->acks_missing = others;
    p->copyset = NODE_BIT(e->cfg.self) | others;
    for (uint16_t n = 0; n < e->cfg.nnodes; n++) {
        if (others & NODE_BIT(n)) {
            struct ivy_msg inv = make_msg(e, IVY_MSG_INVALIDATE, page, e->cfg.self,
                                          p->version + 1, 0, p->txid);
            emit_send(e, out, n, &inv);
        }
    }
}

static uint64_t new_txid(struct ivy_engine *e)
{
    return ((uint64_t)e->cfg.self << 48) | e->next_txid++;
}

/* Send a request for the page towards its owner (fault_request, reply_read_stale). */
static void ask_hinted(struct ivy_engine *e, struct ivy_page *p, uint64_t page, bool write, uint8_t flags,
                       struct ivy_actions *out)
{
    const uint8_t type = write ? IVY_MSG_WRITE : IVY_MSG_READ;
    const uint16_t to = ivy_engine_route(e, page);
    IVY_ASSERT(!p->owner && to != e->cfg.self);
    p->txid = new_txid(e);
    p->pending = write ? IVY_WANT_WRITE : IVY_WANT_READ;
    /* A manager's own request is queued behind its record like any other. */
    if (is_manager(e, page) && moves_ownership(e, type))
        p->probowner = e->cfg.self;
    struct ivy_msg req = make_msg(e, type, page, e->cfg.self, p->version, 0, p->txid);
    req.flags = flags;
    p->write_soon = (flags & IVY_REQ_WRITE_SOON) != 0;
    emit_send(e, out, to, &req);
}

static void ask(struct ivy_engine *e, struct ivy_page *p, uint64_t page, bool write, struct ivy_actions *out)
{
    ask_hinted(e, p, page, write, 0, out);
}

/* Only an idle owner serves: an acquiring or holding node parks requests. */
static void assert_can_serve(const struct ivy_page *p)
{
    IVY_ASSERT(p->owner && p->pending == IVY_IDLE && p->acks_missing == 0);
    IVY_ASSERT(p->state != IVY_INVALID);
}

/* Give the owner's copy read access before it is shared (node 0's INITIAL
 * page becomes a readable copy; a MODIFIED one is frozen). */
static void downgrade_to_shared(struct ivy_page *p, uint64_t page, struct ivy_actions *out)
{
    if (p->state == IVY_MODIFIED)
        emit(out, IVY_ACT_WRPROTECT, page);
    else if (p->state == IVY_INITIAL)
        emit(out, IVY_ACT_MAP_RO, page);
    p->state = IVY_SHARED;
}

static uint8_t migratory_flag(const struct ivy_page *p)
{
    return p->migratory ? IVY_REPLY_MIGRATORY : 0;
}

static uint8_t data_flag(const struct ivy_page *p, const struct ivy_msg *m)
{
    return m->version == p->version ? 0 : IVY_REPLY_DATA;
}

/* Bytes without DATA are the requester's own, so they must be current. */
static void take_reply_version(struct ivy_page *p, const struct ivy_msg *m)
{
    IVY_ASSERT((m->flags & IVY_REPLY_DATA) || p->version == m->version);
    /* A copy still readable here is current: it never needs new bytes. */
    IVY_ASSERT(!(m->flags & IVY_REPLY_DATA) || access_of(p) == 0);
    p->version = m->version;
    p->write_soon = 0; /* answered */
}

/* ------------------------------------------------------------- handlers
 *
 * One per transition, named as its row. The row's key and guard hold when
 * it runs; IVY_ASSERTs below are invariants, not input checks.
 */

static void fault_while_pending(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)e, (void)p, (void)page, (void)m, (void)out; /* the coming MAP wakes every faulter */
}

static void fault_spurious(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                           const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)e, (void)p, (void)m;
    emit(out, IVY_ACT_WAKE, page);
}

static void fault_initial_read(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                               const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)m;
    IVY_ASSERT(p->state == IVY_INITIAL && e->cfg.self == 0);
    p->state = IVY_SHARED;
    emit(out, IVY_ACT_MAP_RO, page);
    emit(out, IVY_ACT_DONE, page);
    finish(e, p, page, false, out);
}

static void fault_initial_read_writable(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                        const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)m;
    IVY_ASSERT(p->state == IVY_INITIAL && p->copyset == NODE_BIT(e->cfg.self));
    grant_write(e, p, page, out);
}

static void fault_owner_write_alone(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                    const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)m;
    grant_write(e, p, page, out);
}

static void fault_owner_write_invalidates(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                          const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)m;
    p->txid = new_txid(e);
    invalidate_copies(e, p, page, p->copyset & ~NODE_BIT(e->cfg.self), out);
}

/* The reader that was just handed the page (GiantVM) writes it while only
 * the previous owner still holds a copy: read-then-write, so the page is
 * marked migratory and its next reader is granted it whole. */
static void fault_owner_write_migrates(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                       const struct ivy_msg *m, struct ivy_actions *out)
{
    p->migratory = 1;
    fault_owner_write_invalidates(e, p, page, m, out);
}

static void fault_request_read(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                               const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)m;
    ask(e, p, page, false, out);
}

/* The runtime predicts the read is followed by a write (read-modify-write). */
static void fault_request_read_write_soon(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                          const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)m;
    ask_hinted(e, p, page, false, IVY_REQ_WRITE_SOON, out);
}

static void fault_request_write(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)m;
    ask(e, p, page, true, out);
}

/* No faulter waits yet: the reply's MAP_RO installs the copy before the
 * vCPU's access, and its DONE completes no fault. Every later transition is
 * a read copy's: the prefetcher joins the copyset and is invalidated. */
static void prefetch_request(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                             const struct ivy_msg *m, struct ivy_actions *out)
{
    fault_request_read(e, p, page, m, out);
}

static void prefetch_needless(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                              const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)e, (void)p, (void)page, (void)m, (void)out; /* present, asked for, owned, or option off */
}

static void request_park(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                         const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)e, (void)p;
    emit(out, IVY_ACT_PARK, page)->msg = *m;
}

static void request_forward(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                            const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)page;
    struct ivy_msg fwd = *m;
    fwd.hops = (uint16_t)(m->hops + 1);
    emit_send(e, out, p->probowner, &fwd);
    if (moves_ownership(e, m->type))
        p->probowner = m->requester;
}

/* The owner's half of every grant that moves ownership: the reply, and the
 * owner forgetting the page is its own (the requester is now the probable owner). */
static void hand_over(struct ivy_engine *e, struct ivy_page *p, uint64_t page, const struct ivy_msg *m,
                      uint64_t copyset, uint8_t flags, struct ivy_actions *out)
{
    struct ivy_msg reply = make_msg(e, IVY_MSG_REPLY, page, m->requester, p->version, copyset, m->txid);
    reply.flags = (uint8_t)(IVY_REPLY_OWNERSHIP | flags);
    reply.hops = m->hops;
    p->owner = 0;
    p->copyset = 0;
    p->probowner = m->requester;
    p->migratory = 0;
    emit_send(e, out, m->requester, &reply);
}

/* The page goes whole: this copy dies, the requester is owner (flags: what else the reply says). */
static void serve_whole(struct ivy_engine *e, struct ivy_page *p, uint64_t page, const struct ivy_msg *m,
                        uint8_t flags, struct ivy_actions *out)
{
    assert_can_serve(p);
    if (access_of(p) > 0)
        emit(out, IVY_ACT_ZAP, page);
    p->state = IVY_INVALID;
    hand_over(e, p, page, m, p->copyset & ~NODE_BIT(e->cfg.self),
              (uint8_t)(data_flag(p, m) | migratory_flag(p) | flags), out);
}

static void serve_write(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                        const struct ivy_msg *m, struct ivy_actions *out)
{
    serve_whole(e, p, page, m, 0, out);
}

/* A hinted READ reaching the page's only holder costs nobody a copy: it is
 * served as a write, and the reply says the requester may write at once. */
static void serve_read_write_soon(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                  const struct ivy_msg *m, struct ivy_actions *out)
{
    IVY_ASSERT(p->copyset == NODE_BIT(e->cfg.self));
    serve_whole(e, p, page, m, IVY_REPLY_WRITABLE, out);
}

/* A migratory page's reader is served as a writer would be: it becomes the
 * sole holder, so its coming write faults locally with no message. */
static void serve_read_migratory(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                 const struct ivy_msg *m, struct ivy_actions *out)
{
    IVY_ASSERT(p->migratory && p->state == IVY_MODIFIED && p->copyset == NODE_BIT(e->cfg.self));
    serve_write(e, p, page, m, out);
}

static void serve_read_handover(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                const struct ivy_msg *m, struct ivy_actions *out)
{
    assert_can_serve(p);
    downgrade_to_shared(p, page, out);
    hand_over(e, p, page, m, p->copyset, data_flag(p, m), out);
}

/* The last migratory grantee read but never wrote before another reader
 * came: the page is read-shared after all, so it is served as any read. */
static void serve_read_migratory_unused(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                        const struct ivy_msg *m, struct ivy_actions *out)
{
    IVY_ASSERT(p->migratory && p->state == IVY_SHARED && p->copyset == NODE_BIT(e->cfg.self));
    p->migratory = 0;
    serve_read_handover(e, p, page, m, out);
}

static void serve_read_keep(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                            const struct ivy_msg *m, struct ivy_actions *out)
{
    assert_can_serve(p);
    downgrade_to_shared(p, page, out);
    p->copyset |= NODE_BIT(m->requester);
    struct ivy_msg reply = make_msg(e, IVY_MSG_REPLY, page, m->requester, p->version,
                                    p->copyset, m->txid);
    reply.flags = data_flag(p, m);
    reply.hops = m->hops;
    emit_send(e, out, m->requester, &reply);
}

/* The requester becomes owner of a page it cannot access yet. */
static void take_write_reply(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m)
{
    take_reply_version(p, m);
    p->owner = 1;
    p->probowner = e->cfg.self;
    p->copyset = NODE_BIT(e->cfg.self);
    p->migratory = (m->flags & IVY_REPLY_MIGRATORY) != 0;
    if (p->state == IVY_INITIAL)
        p->state = IVY_INVALID; /* touched now; still no access until granted */
}

static void reply_write_alone(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                              const struct ivy_msg *m, struct ivy_actions *out)
{
    take_write_reply(e, p, m);
    grant_write(e, p, page, out);
}

static void reply_write_invalidates(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                    const struct ivy_msg *m, struct ivy_actions *out)
{
    take_write_reply(e, p, m);
    invalidate_copies(e, p, page, m->copyset & ~NODE_BIT(e->cfg.self), out);
}

static void reply_read_owner(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                             const struct ivy_msg *m, struct ivy_actions *out)
{
    take_reply_version(p, m);
    p->state = IVY_SHARED;
    p->owner = 1;
    p->copyset = m->copyset | NODE_BIT(e->cfg.self);
    p->probowner = e->cfg.self;
    emit(out, IVY_ACT_MAP_RO, page);
    emit(out, IVY_ACT_DONE, page);
    finish(e, p, page, true, out);
}

/* A migratory grant: owner and sole holder, readable; the write that the
 * read-then-write pattern predicts then faults locally (fault_owner_write_alone),
 * which is also how the engine learns that the grantee wrote. */
static void reply_read_migratory(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                 const struct ivy_msg *m, struct ivy_actions *out)
{
    take_write_reply(e, p, m);
    IVY_ASSERT(p->migratory);
    p->state = IVY_SHARED;
    emit(out, IVY_ACT_MAP_RO, page);
    emit(out, IVY_ACT_DONE, page);
    finish(e, p, page, true, out);
}

static void reply_read_copy(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                            const struct ivy_msg *m, struct ivy_actions *out)
{
    take_reply_version(p, m);
    p->state = IVY_SHARED;
    p->copyset = 0;
    hint_probowner(e, p, m->sender);
    emit(out, IVY_ACT_MAP_RO, page);
    emit(out, IVY_ACT_DONE, page);
    finish(e, p, page, true, out);
}

/* The copy this reply grants is already dead: keep its bytes (they match
 * the reply's version) and ask the new owner. */
static void reply_read_stale(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                             const struct ivy_msg *m, struct ivy_actions *out)
{
    take_reply_version(p, m);
    ask(e, p, page, false, out);
}

/* Never parked: only the owner sends it, and it may itself wait for this ack. */
static void invalidate(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                       const struct ivy_msg *m, struct ivy_actions *out)
{
    IVY_ASSERT(!p->owner);
    if (access_of(p) > 0)
        emit(out, IVY_ACT_ZAP, page);
    p->state = IVY_INVALID;
    p->copyset = 0;
    hint_probowner(e, p, m->sender);
    struct ivy_msg ack = make_msg(e, IVY_MSG_INV_ACK, page, m->requester, p->version, 0,
                                  m->txid);
    emit_send(e, out, m->sender, &ack);
}

/* The owner already answered and then lost the page (classic Ivy only: a
 * GiantVM read moves ownership, so nobody else can invalidate the reader). */
static void invalidate_while_reading(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                     const struct ivy_msg *m, struct ivy_actions *out)
{
    invalidate(e, p, page, m, out);
    p->pending = IVY_READ_STALE;
}

static void take_ack(struct ivy_page *p, const struct ivy_msg *m)
{
    const uint64_t bit = NODE_BIT(m->sender);
    IVY_ASSERT(p->acks_missing & bit);
    p->acks_missing &= ~bit;
    p->copyset &= ~bit;
}

static void ack_counted(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                        const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)e, (void)page, (void)out;
    take_ack(p, m);
    IVY_ASSERT(p->acks_missing != 0);
}

static void ack_last(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                     const struct ivy_msg *m, struct ivy_actions *out)
{
    take_ack(p, m);
    grant_write(e, p, page, out);
}

/* The caller maps the page writable before any fault. Its guest may then
 * write it without the engine seeing a fault, so the version moves on now
 * and every copy served later carries the bytes (a requester's version 0
 * never matches). */
static void grant_owned_up_front(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                                 const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)page, (void)m, (void)out;
    IVY_ASSERT(e->cfg.self == 0 && p->copyset == NODE_BIT(e->cfg.self));
    p->state = IVY_MODIFIED;
    p->version += 1;
    p->probowner = e->cfg.self;
}

/* The woken thread had its window: serve what waited, in arrival order. */
static void hold_end(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                     const struct ivy_msg *m, struct ivy_actions *out)
{
    (void)e, (void)m;
    p->pending = IVY_IDLE;
    emit(out, IVY_ACT_UNPARK, page);
}

/* ------------------------------------------------------ selectors (`when`) */

static int giantvm_reads(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)p, (void)m;
    return e->cfg.read_ownership == IVY_READ_GIANTVM;
}

static int ivy_reads(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    return !giantvm_reads(e, p, m);
}

static int touch_writable(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)p, (void)m;
    return e->cfg.first_touch == IVY_TOUCH_WRITE;
}

static int migratory_on(const struct ivy_engine *e)
{
    return e->cfg.migratory && e->cfg.read_ownership == IVY_READ_GIANTVM;
}

/* A classic-Ivy read leaves ownership where it is: a prefetch only adds a copy. */
static int prefetch_on(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)p, (void)m;
    return e->cfg.prefetch && e->cfg.read_ownership == IVY_READ_IVY;
}

static int read_then_write(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)m;
    const uint64_t others = p->copyset & ~NODE_BIT(e->cfg.self);
    return migratory_on(e) && p->state == IVY_SHARED && others != 0 && (others & (others - 1)) == 0;
}

/* A hinted READ, and the owner is the page's only holder. */
static int hinted_sole_holder(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    return migratory_on(e) && (m->flags & IVY_REQ_WRITE_SOON) && p->copyset == NODE_BIT(e->cfg.self);
}

static int write_soon_on(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)p, (void)m;
    return migratory_on(e);
}

static int reply_grants_writable(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)e, (void)p;
    return (m->flags & IVY_REPLY_WRITABLE) != 0;
}

static int page_migratory(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)m;
    return migratory_on(e) && p->migratory;
}

static int reply_grants_migratory(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)e, (void)p;
    return (m->flags & IVY_REPLY_MIGRATORY) != 0;
}

static int copies_elsewhere(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)m;
    return (p->copyset & ~NODE_BIT(e->cfg.self)) != 0;
}

static int no_copies_elsewhere(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    return !copies_elsewhere(e, p, m);
}

static int reply_lists_copies(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)p;
    return (m->copyset & ~NODE_BIT(e->cfg.self)) != 0;
}

static int reply_lists_none(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    return !reply_lists_copies(e, p, m);
}

static int reply_grants_ownership(const struct ivy_engine *e, const struct ivy_page *p,
                                  const struct ivy_msg *m)
{
    (void)e, (void)p;
    return (m->flags & IVY_REPLY_OWNERSHIP) != 0;
}

static int reply_grants_a_copy(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    return !reply_grants_ownership(e, p, m);
}

static int last_ack(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)e;
    return (p->acks_missing & ~NODE_BIT(m->sender)) == 0;
}

static int acks_left(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    return !last_ack(e, p, m);
}

/* ------------------------------------------------- guards: does m fit? */

static const char *request_from_elsewhere(const struct ivy_engine *e, const struct ivy_page *p,
                                          const struct ivy_msg *m)
{
    (void)p;
    if (m->requester == e->cfg.self)
        return "a request naming this node as requester";
    if (m->flags & ~(m->type == IVY_MSG_READ && migratory_on(e) ? IVY_REQ_WRITE_SOON : 0u))
        return "request flags this cluster does not use";
    return NULL;
}

static const char *forward_has_a_target(const struct ivy_engine *e, const struct ivy_page *p,
                                        const struct ivy_msg *m)
{
    const char *why = request_from_elsewhere(e, p, m);
    if (why)
        return why;
    if (p->probowner == e->cfg.self || p->probowner == m->requester)
        return "a request this node can neither serve nor forward";
    return NULL;
}

static const char *reply_fits(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    if (m->requester != e->cfg.self)
        return "a reply for another node";
    if (m->txid != p->txid)
        return "a reply with a stale transaction id";
    if (!(m->flags & IVY_REPLY_DATA) && m->version != p->version)
        return "a reply without data for a version this node does not have";
    if ((m->flags & IVY_REPLY_DATA) && access_of(p) != 0)
        return "page bytes for a page that is still readable here";
    if ((m->flags & IVY_REPLY_MIGRATORY) && !migratory_on(e))
        return "a migratory grant in a cluster without migratory pages";
    if ((m->flags & IVY_REPLY_MIGRATORY) && !(m->flags & IVY_REPLY_OWNERSHIP))
        return "a migratory grant without ownership";
    if ((m->flags & IVY_REPLY_WRITABLE) && !(m->flags & IVY_REPLY_OWNERSHIP && p->write_soon))
        return "a writable grant for a read that gave no write-soon hint";
    return NULL;
}

/* A grant that makes the requester the page's sole holder fits only with no other copy listed. */
static const char *sole_holder_grant_fits(const struct ivy_engine *e, const struct ivy_page *p,
                                          const struct ivy_msg *m, const char *lists_copies)
{
    const char *why = reply_fits(e, p, m);
    return !why && (m->copyset & ~NODE_BIT(e->cfg.self)) != 0 ? lists_copies : why;
}

static const char *migratory_grant_fits(const struct ivy_engine *e, const struct ivy_page *p,
                                        const struct ivy_msg *m)
{
    return sole_holder_grant_fits(e, p, m, "a migratory grant that lists other copies");
}

static const char *writable_grant_fits(const struct ivy_engine *e, const struct ivy_page *p,
                                       const struct ivy_msg *m)
{
    return sole_holder_grant_fits(e, p, m, "a writable grant that lists other copies");
}

static const char *reply_with_ownership(const struct ivy_engine *e, const struct ivy_page *p,
                                        const struct ivy_msg *m)
{
    const char *why = reply_fits(e, p, m);
    if (!why && !(m->flags & IVY_REPLY_OWNERSHIP))
        why = "a write reply without ownership";
    return why;
}

static const char *reply_without_ownership(const struct ivy_engine *e, const struct ivy_page *p,
                                           const struct ivy_msg *m)
{
    const char *why = reply_fits(e, p, m);
    if (!why && (m->flags & IVY_REPLY_OWNERSHIP))
        why = "ownership on a reply that an invalidation overtook";
    return why;
}

static const char *ack_awaited(const struct ivy_engine *e, const struct ivy_page *p, const struct ivy_msg *m)
{
    (void)e;
    if (!(p->acks_missing & NODE_BIT(m->sender)) || m->txid != p->txid)
        return "an acknowledgement nobody waits for";
    return NULL;
}

/* ------------------------------------------------------------ the table */

#define EV(x) (1u << IVY_EV_##x)
#define READ_FAULTS (EV(READ_FAULT) | EV(READ_FAULT_WRITE_SOON))
#define FAULTS (READ_FAULTS | EV(WRITE_FAULT))
#define REQUESTS (EV(READ) | EV(WRITE))
#define ST(x) (1u << IVY_##x)
#define ANY_STATE (ST(INITIAL) | ST(INVALID) | ST(SHARED) | ST(MODIFIED))
#define PD(x) (1u << IVY_##x)
#define ACQUIRING (PD(WANT_READ) | PD(WANT_WRITE) | PD(WAIT_ACKS) | PD(READ_STALE))
#define ANY_PENDING (PD(IDLE) | ACQUIRING | PD(HOLDING))
#define OWNER IVY_ROW_OWNER
#define NOT_OWNER IVY_ROW_NOT_OWNER
#define EITHER (IVY_ROW_OWNER | IVY_ROW_NOT_OWNER)
#define WHEN(f) f, #f
#define ALWAYS NULL, NULL
#define GUARD(f) f, #f
#define NO_GUARD NULL, NULL
#define ROW(name, h, events, states, pendings, owner, when, guard, effect) \
    {#name, #h, events, states, pendings, owner, when, guard, effect, h}

/* Order matters only where keys overlap: the first matching row wins. */
static const struct ivy_row ROWS[] = {
    /* local faults */
    ROW(fault_while_pending, fault_while_pending, FAULTS, ANY_STATE, ACQUIRING, EITHER, ALWAYS, NO_GUARD,
        "nothing: the acquisition's MAP wakes every faulter"),
    ROW(read_fault_spurious, fault_spurious, READ_FAULTS, ST(SHARED) | ST(MODIFIED), PD(IDLE) | PD(HOLDING), EITHER,
        ALWAYS, NO_GUARD, "WAKE: access already suffices"),
    ROW(write_fault_spurious, fault_spurious, EV(WRITE_FAULT), ST(MODIFIED), PD(IDLE) | PD(HOLDING), EITHER, ALWAYS,
        NO_GUARD, "WAKE: access already suffices"),
    ROW(fault_initial_read_writable, fault_initial_read_writable, READ_FAULTS, ST(INITIAL), PD(IDLE), OWNER,
        WHEN(touch_writable), NO_GUARD, "as a write fault: MODIFIED, version + 1, MAP_RW DONE"),
    ROW(fault_initial_read, fault_initial_read, READ_FAULTS, ST(INITIAL), PD(IDLE), OWNER, ALWAYS, NO_GUARD,
        "SHARED, MAP_RO DONE, no message"),
    ROW(fault_owner_write_alone, fault_owner_write_alone, EV(WRITE_FAULT), ST(INITIAL) | ST(SHARED), PD(IDLE) | PD(HOLDING),
        OWNER, WHEN(no_copies_elsewhere), NO_GUARD, "grant_write: MODIFIED, version + 1, MAP_RW DONE"),
    ROW(fault_owner_write_migrates, fault_owner_write_migrates, EV(WRITE_FAULT), ST(SHARED), PD(IDLE) | PD(HOLDING),
        OWNER, WHEN(read_then_write), NO_GUARD, "migratory := 1, then as fault_owner_write_invalidates"),
    ROW(fault_owner_write_invalidates, fault_owner_write_invalidates, EV(WRITE_FAULT), ST(INITIAL) | ST(SHARED),
        PD(IDLE) | PD(HOLDING), OWNER, WHEN(copies_elsewhere), NO_GUARD,
        "WAIT_ACKS, INVALIDATE every other copy holder"),
    ROW(read_fault_request_write_soon, fault_request_read_write_soon, EV(READ_FAULT_WRITE_SOON),
        ST(INITIAL) | ST(INVALID), PD(IDLE), NOT_OWNER, WHEN(write_soon_on), NO_GUARD,
        "as read_fault_request, the READ flagged WRITE_SOON"),
    ROW(read_fault_request, fault_request_read, READ_FAULTS, ST(INITIAL) | ST(INVALID), PD(IDLE), NOT_OWNER, ALWAYS,
        NO_GUARD, "WANT_READ, READ to ivy_engine_route()"),
    ROW(write_fault_request, fault_request_write, EV(WRITE_FAULT), ST(INITIAL) | ST(INVALID) | ST(SHARED), PD(IDLE), NOT_OWNER,
        ALWAYS, NO_GUARD, "WANT_WRITE, WRITE to ivy_engine_route()"),
    /* prefetch */
    ROW(prefetch_request, prefetch_request, EV(PREFETCH), ST(INITIAL) | ST(INVALID), PD(IDLE), NOT_OWNER,
        WHEN(prefetch_on), NO_GUARD, "as read_fault_request: WANT_READ, READ; the reply maps it before any fault"),
    ROW(prefetch_needless, prefetch_needless, EV(PREFETCH), ANY_STATE, ANY_PENDING, EITHER, ALWAYS, NO_GUARD,
        "nothing: the page is readable, asked for or owned here, or the option is off"),
    /* requests */
    ROW(request_park, request_park, REQUESTS, ANY_STATE, ACQUIRING, EITHER, ALWAYS, GUARD(request_from_elsewhere),
        "PARK until the acquisition completes"),
    ROW(request_hold, request_park, REQUESTS, ST(SHARED) | ST(MODIFIED), PD(HOLDING), OWNER, ALWAYS,
        GUARD(request_from_elsewhere), "PARK until the hold window ends"),
    ROW(request_forward, request_forward, REQUESTS, ANY_STATE, PD(IDLE), NOT_OWNER, ALWAYS, GUARD(forward_has_a_target),
        "to probowner, hops + 1; probowner := requester if ownership moves"),
    ROW(serve_write, serve_write, EV(WRITE), ST(INITIAL) | ST(SHARED) | ST(MODIFIED), PD(IDLE), OWNER, ALWAYS,
        GUARD(request_from_elsewhere),
        "INVALID non-owner, ZAP, REPLY+OWNERSHIP with the copyset minus self"),
    ROW(serve_read_write_soon, serve_read_write_soon, EV(READ), ST(INITIAL) | ST(SHARED) | ST(MODIFIED), PD(IDLE),
        OWNER, WHEN(hinted_sole_holder), GUARD(request_from_elsewhere),
        "as serve_write: REPLY+OWNERSHIP+WRITABLE, no copy stays (nobody else held one)"),
    ROW(serve_read_migratory, serve_read_migratory, EV(READ), ST(MODIFIED), PD(IDLE), OWNER, WHEN(page_migratory),
        GUARD(request_from_elsewhere), "as serve_write: the reader gets REPLY+OWNERSHIP+MIGRATORY, no copy stays"),
    ROW(serve_read_migratory_unused, serve_read_migratory_unused, EV(READ), ST(SHARED), PD(IDLE), OWNER,
        WHEN(page_migratory), GUARD(request_from_elsewhere),
        "the grantee never wrote: migratory := 0, then as serve_read_handover"),
    ROW(serve_read_handover, serve_read_handover, EV(READ), ST(INITIAL) | ST(SHARED) | ST(MODIFIED), PD(IDLE), OWNER,
        WHEN(giantvm_reads), GUARD(request_from_elsewhere),
        "SHARED non-owner (WRPROTECT or MAP_RO first), REPLY+OWNERSHIP with the copyset"),
    ROW(serve_read_keep, serve_read_keep, EV(READ), ST(INITIAL) | ST(SHARED) | ST(MODIFIED), PD(IDLE), OWNER,
        WHEN(ivy_reads), GUARD(request_from_elsewhere),
        "OWNER|SHARED, copyset += requester, REPLY with the copyset"),
    /* replies */
    ROW(reply_write_alone, reply_write_alone, EV(REPLY), ANY_STATE, PD(WANT_WRITE), NOT_OWNER, WHEN(reply_lists_none),
        GUARD(reply_with_ownership), "owner, grant_write"),
    ROW(reply_write_invalidates, reply_write_invalidates, EV(REPLY), ANY_STATE, PD(WANT_WRITE), NOT_OWNER,
        WHEN(reply_lists_copies), GUARD(reply_with_ownership),
        "owner, WAIT_ACKS, INVALIDATE the reply's copyset but self"),
    ROW(reply_read_writable, reply_write_alone, EV(REPLY), ST(INITIAL) | ST(INVALID), PD(WANT_READ), NOT_OWNER,
        WHEN(reply_grants_writable), GUARD(writable_grant_fits), "as reply_write_alone: owner, grant_write"),
    ROW(reply_read_migratory, reply_read_migratory, EV(REPLY), ST(INITIAL) | ST(INVALID), PD(WANT_READ), NOT_OWNER,
        WHEN(reply_grants_migratory), GUARD(migratory_grant_fits),
        "OWNER|SHARED, sole holder, migratory := 1, MAP_RO DONE (the write then faults locally)"),
    ROW(reply_read_owner, reply_read_owner, EV(REPLY), ST(INITIAL) | ST(INVALID), PD(WANT_READ), NOT_OWNER,
        WHEN(reply_grants_ownership), GUARD(reply_fits),
        "OWNER|SHARED, copyset = reply's + self, MAP_RO DONE (GiantVM)"),
    ROW(reply_read_copy, reply_read_copy, EV(REPLY), ST(INITIAL) | ST(INVALID), PD(WANT_READ), NOT_OWNER,
        WHEN(reply_grants_a_copy), GUARD(reply_fits),
        "SHARED, probowner := sender, MAP_RO DONE (classic Ivy)"),
    ROW(reply_read_stale, reply_read_stale, EV(REPLY), ST(INVALID), PD(READ_STALE), NOT_OWNER, ALWAYS,
        GUARD(reply_without_ownership), "WANT_READ again: READ to the new owner, nothing mapped"),
    /* invalidations and acks */
    ROW(invalidate_while_reading, invalidate_while_reading, EV(INVALIDATE), ANY_STATE, PD(WANT_READ), NOT_OWNER, ALWAYS,
        NO_GUARD, "READ_STALE, INVALID, INV_ACK"),
    ROW(invalidate, invalidate, EV(INVALIDATE), ANY_STATE, PD(IDLE) | PD(WANT_WRITE) | PD(READ_STALE), NOT_OWNER,
        ALWAYS, NO_GUARD, "INVALID, ZAP if mapped, probowner := sender, INV_ACK"),
    ROW(ack_counted, ack_counted, EV(INV_ACK), ANY_STATE, PD(WAIT_ACKS), OWNER, WHEN(acks_left), GUARD(ack_awaited),
        "WAIT_ACKS for the rest"),
    ROW(ack_last, ack_last, EV(INV_ACK), ANY_STATE, PD(WAIT_ACKS), OWNER, WHEN(last_ack), GUARD(ack_awaited),
        "grant_write"),
    /* the hold window */
    ROW(hold_expired, hold_end, EV(HOLD_EXPIRED), ANY_STATE, PD(HOLDING), OWNER, ALWAYS, NO_GUARD,
        "IDLE, UNPARK what waited"),
    ROW(hold_cut_by_store, hold_end, EV(STORE_SEEN), ANY_STATE, PD(HOLDING), OWNER, ALWAYS, NO_GUARD,
        "IDLE, UNPARK what waited (the window is cut short)"),
    /* node 0 at start */
    ROW(map_owned, grant_owned_up_front, EV(MAP_OWNED), ST(INITIAL), PD(IDLE), OWNER, ALWAYS, NO_GUARD,
        "MODIFIED, version + 1, no action: the runtime maps it writable up front"),
};
#define NROWS (sizeof ROWS / sizeof ROWS[0])

static const struct {
    const char *name;
    const char *unmatched; /* a message of this type no row takes */
} EVENTS[IVY_EV_MAX + 1] = {
    [IVY_EV_READ] = {"READ", "a request this node can neither serve nor forward"},
    [IVY_EV_WRITE] = {"WRITE", "a request this node can neither serve nor forward"},
    [IVY_EV_REPLY] = {"REPLY", "a reply this node did not ask for"},
    [IVY_EV_INVALIDATE] = {"INVALIDATE", "an invalidation sent to the owner"},
    [IVY_EV_INV_ACK] = {"INV_ACK", "an acknowledgement nobody waits for"},
    [IVY_EV_READ_FAULT] = {"read fault", NULL},
    [IVY_EV_WRITE_FAULT] = {"write fault", NULL},
    [IVY_EV_HOLD_EXPIRED] = {"hold expired", NULL},
    [IVY_EV_STORE_SEEN] = {"store seen", NULL},
    [IVY_EV_MAP_OWNED] = {"map owned", NULL},
    [IVY_EV_PREFETCH] = {"prefetch", NULL},
    [IVY_EV_READ_FAULT_WRITE_SOON] = {"write-soon read fault", NULL},
};

/* ------------------------------------------------------------- dispatch */

static bool key_matches(const struct ivy_row *r, const struct ivy_page *p, unsigned event)
{
    return (r->events >> event & 1u) && (r->states >> p->state & 1u) && (r->pendings >> p->pending & 1u) &&
           (r->owner & (p->owner ? IVY_ROW_OWNER : IVY_ROW_NOT_OWNER));
}

/* The first row taking `event` now, or -1. */
static int select_row(const struct ivy_engine *e, const struct ivy_page *p, unsigned event,
                      const struct ivy_msg *m)
{
    for (unsigned i = 0; i < NROWS; i++) {
        const struct ivy_row *r = &ROWS[i];
        if (key_matches(r, p, event) && (!r->when || r->when(e, p, m)))
            return (int)i;
    }
    return -1;
}

static void run_row(struct ivy_engine *e, struct ivy_page *p, uint64_t page, unsigned row,
                    const struct ivy_msg *m, struct ivy_actions *out)
{
    out->n = 0;
    out->row = row;
    ROWS[row].run(e, p, page, m, out);
    check_page(e, p);
}

/* A local event always has a row: the table covers every state it can meet. */
static void local_event(struct ivy_engine *e, uint64_t page, unsigned event, struct ivy_actions *out)
{
    struct ivy_page *p = page_entry(e, page);
    const int row = select_row(e, p, event, NULL);
    IVY_ASSERT(row >= 0);
    out->n = 0;
    if (row >= 0)
        run_row(e, p, page, (unsigned)row, NULL, out);
}

/* ------------------------------------------------------------------- API */

void ivy_engine_init(struct ivy_engine *e, const struct ivy_config *cfg, struct ivy_page *pages)
{
    IVY_ASSERT(cfg->nnodes >= 1 && cfg->nnodes <= IVY_MAX_NODES && cfg->self < cfg->nnodes);
    IVY_ASSERT(cfg->read_ownership <= IVY_READ_IVY && cfg->manager <= IVY_MGR_FIXED);
    IVY_ASSERT(cfg->hold <= 1 && cfg->first_touch <= IVY_TOUCH_WRITE && cfg->migratory <= 1 && cfg->prefetch <= 1);
    e->cfg = *cfg;
    e->pages = pages;
    e->next_txid = 1;
    for (uint64_t i = 0; i < cfg->npages; i++) {
        const bool own = cfg->self == 0;
        uint16_t probowner = 0;
        if (manager_mode(e) && !is_manager(e, i))
            probowner = manager_of(e, i);
        pages[i] = (struct ivy_page){
            .state = IVY_INITIAL,
            .owner = own,
            .pending = IVY_IDLE,
            .probowner = probowner,
            .copyset = own ? NODE_BIT(0) : 0,
        };
    }
}

void ivy_engine_set_version(struct ivy_engine *e, uint64_t page, uint64_t version)
{
    struct ivy_page *p = page_entry(e, page);
    IVY_ASSERT(p->state == IVY_INITIAL && p->owner);
    p->version = version;
}

bool ivy_engine_map_owned(struct ivy_engine *e, uint64_t page, struct ivy_actions *out)
{
    struct ivy_page *p = page_entry(e, page);
    const int row = select_row(e, p, IVY_EV_MAP_OWNED, NULL);
    out->n = 0;
    if (row < 0)
        return false;
    run_row(e, p, page, (unsigned)row, NULL, out);
    return true;
}

void ivy_engine_fault(struct ivy_engine *e, uint64_t page, bool write, struct ivy_actions *out)
{
    local_event(e, page, write ? IVY_EV_WRITE_FAULT : IVY_EV_READ_FAULT, out);
}

void ivy_engine_read_fault_write_soon(struct ivy_engine *e, uint64_t page, struct ivy_actions *out)
{
    local_event(e, page, IVY_EV_READ_FAULT_WRITE_SOON, out);
}

void ivy_engine_hold_event(struct ivy_engine *e, uint64_t page, unsigned event, struct ivy_actions *out)
{
    IVY_ASSERT(event == IVY_EV_HOLD_EXPIRED || event == IVY_EV_STORE_SEEN);
    local_event(e, page, event, out);
}

void ivy_engine_prefetch(struct ivy_engine *e, uint64_t page, struct ivy_actions *out)
{
    local_event(e, page, IVY_EV_PREFETCH, out);
}

struct ivy_verdict ivy_engine_check(const struct ivy_engine *e, const struct ivy_msg *m)
{
    IVY_ASSERT(m->page < e->cfg.npages);
    struct ivy_verdict v = {.row = -1, .refused_by = -1, .why = NULL};
    if (m->type < IVY_MSG_READ || m->type > IVY_MSG_TYPE_MAX) {
        v.why = "an unknown message type";
        return v;
    }
    if (m->sender >= e->cfg.nnodes || m->requester >= e->cfg.nnodes) {
        v.why = "a node id beyond the cluster";
        return v;
    }
    const struct ivy_page *p = &e->pages[m->page];
    const int row = select_row(e, p, m->type, m);
    if (row < 0) {
        v.why = EVENTS[m->type].unmatched;
        return v;
    }
    const char *why = ROWS[row].guard ? ROWS[row].guard(e, p, m) : NULL;
    if (why) {
        v.refused_by = row;
        v.why = why;
        return v;
    }
    v.row = row;
    return v;
}

void ivy_engine_apply(struct ivy_engine *e, const struct ivy_msg *m, unsigned row, struct ivy_actions *out)
{
    struct ivy_page *p = page_entry(e, m->page);
    IVY_ASSERT(row < NROWS && key_matches(&ROWS[row], p, m->type));
    out->n = 0;
    if (row < NROWS)
        run_row(e, p, m->page, row, m, out);
}

void ivy_engine_message(struct ivy_engine *e, const struct ivy_msg *m, struct ivy_actions *out)
{
    const struct ivy_verdict v = ivy_engine_check(e, m);
    IVY_ASSERT(v.row >= 0);
    out->n = 0;
    if (v.row >= 0) /* with NDEBUG: dropped rather than run through no row */
        ivy_engine_apply(e, m, (unsigned)v.row, out);
}

uint16_t ivy_engine_route(const struct ivy_engine *e, uint64_t page)
{
    IVY_ASSERT(page < e->cfg.npages);
    if (manager_mode(e) && !is_manager(e, page))
        return manager_of(e, page);
    return e->pages[page].probowner;
}

int ivy_engine_access(const struct ivy_engine *e, uint64_t page)
{
    IVY_ASSERT(page < e->cfg.npages);
    return access_of(&e->pages[page]);
}

unsigned ivy_engine_nrows(void)
{
    return NROWS;
}

const struct ivy_row *ivy_engine_row(unsigned i)
{
    return i < NROWS ? &ROWS[i] : NULL;
}

const char *ivy_event_name(unsigned event)
{
    return event <= IVY_EV_MAX && EVENTS[event].name ? EVENTS[event].name : "?";
}

const char *ivy_state_name(uint8_t state)
{
    static const char *const names[] = {"INITIAL", "INVALID", "SHARED", "MODIFIED"};
    return state <= IVY_MODIFIED ? names[state] : "?";
}

const char *ivy_pending_name(uint8_t pending)
{
    static const char *const names[] = {"IDLE", "WANT_READ", "WANT_WRITE", "WAIT_ACKS", "READ_STALE", "HOLDING"};
    return pending <= IVY_PENDING_MAX ? names[pending] : "?";
}

const char *ivy_msg_name(uint8_t type)
{
    return type >= IVY_MSG_READ && type <= IVY_MSG_TYPE_MAX ? EVENTS[type].name : "?";
}
