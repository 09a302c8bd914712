/*
 * engine.c - the Ivy coherence protocol (docs/dsm.md, PROTOCOL.md) as pure
 * state transitions: one small function per transition, named in its
 * comment as  FROM --event--> TO.  No I/O, no allocation, no locks: the
 * caller delivers one event at a time and performs the returned actions in
 * order.
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
    IVY_ASSERT(p->pending <= IVY_READ_STALE);
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
    /* INITIAL is never left and re-entered; only node 0 owns it. */
    IVY_ASSERT(p->state != IVY_INITIAL || !p->owner || e->cfg.self == 0);
}

/* --------------------------------------------------------- acquisitions */

/* OWNER (WAIT_ACKS or IDLE) --last copy gone--> OWNER|MODIFIED */
static void grant_write(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                        struct ivy_actions *out)
{
    IVY_ASSERT(p->owner && p->acks_missing == 0);
    const bool was_pending = p->pending != IVY_IDLE;
    p->version += 1;
    p->state = IVY_MODIFIED;
    p->copyset = NODE_BIT(e->cfg.self);
    p->probowner = e->cfg.self;
    p->pending = IVY_IDLE;
    emit(out, IVY_ACT_MAP_RW, page);
    emit(out, IVY_ACT_DONE, page);
    if (was_pending)
        emit(out, IVY_ACT_UNPARK, page);
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

/* ---------------------------------------------------------- local faults */

/* any --fault, access already suffices--> same (WAKE the faulter) */
static void fault_spurious(uint64_t page, struct ivy_actions *out)
{
    emit(out, IVY_ACT_WAKE, page);
}

/* pending --fault--> pending (the coming MAP wakes every faulter) */
static void fault_while_pending(void)
{
}

/* OWNER|INITIAL (node 0) --read fault--> OWNER|SHARED, no message */
static void fault_initial_read(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                               struct ivy_actions *out)
{
    IVY_ASSERT(p->state == IVY_INITIAL && e->cfg.self == 0);
    p->state = IVY_SHARED;
    emit(out, IVY_ACT_MAP_RO, page);
    emit(out, IVY_ACT_DONE, page);
}

/* OWNER|SHARED or OWNER|INITIAL --write fault--> OWNER|MODIFIED, or
 * WAIT_ACKS while other copies are invalidated */
static void fault_owner_write(struct ivy_engine *e, struct ivy_page *p, uint64_t page,
                              struct ivy_actions *out)
{
    const uint64_t others = p->copyset & ~NODE_BIT(e->cfg.self);
    if (others == 0) {
        grant_write(e, p, page, out);
        return;
    }
    p->txid = ((uint64_t)e->cfg.self << 48) | e->next_txid++;
    invalidate_copies(e, p, page, others, out);
}

/* INVALID|SHARED|INITIAL (not owner) --fault--> WANT_READ|WANT_WRITE */
static void fault_request(struct ivy_engine *e, struct ivy_page *p, uint64_t page, bool write,
                          struct ivy_actions *out)
{
    const uint8_t type = write ? IVY_MSG_WRITE : IVY_MSG_READ;
    const uint16_t to = ivy_engine_route(e, page);
    IVY_ASSERT(!p->owner && to != e->cfg.self);
    p->txid = ((uint64_t)e->cfg.self << 48) | e->next_txid++;
    p->pending = write ? IVY_WANT_WRITE : IVY_WANT_READ;
    /* A manager's own request is queued behind its record like any other. */
    if (is_manager(e, page) && moves_ownership(e, type))
        p->probowner = e->cfg.self;
    struct ivy_msg req = make_msg(e, type, page, e->cfg.self, p->version, 0, p->txid);
    emit_send(e, out, to, &req);
}

/* ------------------------------------------------------- requests served */

/* pending --READ/WRITE--> pending (PARK until the acquisition completes) */
static void request_park(uint64_t page, const struct ivy_msg *m, struct ivy_actions *out)
{
    struct ivy_action *a = emit(out, IVY_ACT_PARK, page);
    a->msg = *m;
}

/* not owner --READ/WRITE--> same, request forwarded to probowner (or the
 * manager's record); probowner := requester if ownership will move there */
static void request_forward(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                            struct ivy_actions *out)
{
    struct ivy_msg fwd = *m;
    fwd.hops = (uint16_t)(m->hops + 1);
    IVY_ASSERT(p->probowner != e->cfg.self && p->probowner != m->requester);
    emit_send(e, out, p->probowner, &fwd);
    if (moves_ownership(e, m->type))
        p->probowner = m->requester;
}

static uint8_t data_flag(const struct ivy_page *p, const struct ivy_msg *m)
{
    return m->version == p->version ? 0 : IVY_REPLY_DATA;
}

/* Only an idle owner serves: an acquiring node parks requests instead. */
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

/* OWNER --READ--> SHARED, ownership handed to the reader (GiantVM) */
static void serve_read_handover(struct ivy_engine *e, struct ivy_page *p,
                                const struct ivy_msg *m, struct ivy_actions *out)
{
    assert_can_serve(p);
    downgrade_to_shared(p, m->page, out);
    struct ivy_msg reply = make_msg(e, IVY_MSG_REPLY, m->page, m->requester, p->version,
                                    p->copyset, m->txid);
    reply.flags = (uint8_t)(IVY_REPLY_OWNERSHIP | data_flag(p, m));
    reply.hops = m->hops;
    p->owner = 0;
    p->copyset = 0;
    p->probowner = m->requester;
    emit_send(e, out, m->requester, &reply);
}

/* OWNER --READ--> OWNER|SHARED, reader added to the copyset (classic Ivy) */
static void serve_read_keep(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                            struct ivy_actions *out)
{
    assert_can_serve(p);
    downgrade_to_shared(p, m->page, out);
    p->copyset |= NODE_BIT(m->requester);
    struct ivy_msg reply = make_msg(e, IVY_MSG_REPLY, m->page, m->requester, p->version,
                                    p->copyset, m->txid);
    reply.flags = data_flag(p, m);
    reply.hops = m->hops;
    emit_send(e, out, m->requester, &reply);
}

/* OWNER --WRITE--> INVALID, page, copyset minus self and ownership to the writer */
static void serve_write(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                        struct ivy_actions *out)
{
    assert_can_serve(p);
    if (access_of(p) > 0)
        emit(out, IVY_ACT_ZAP, m->page);
    struct ivy_msg reply =
        make_msg(e, IVY_MSG_REPLY, m->page, m->requester, p->version,
                 p->copyset & ~NODE_BIT(e->cfg.self), m->txid);
    reply.flags = (uint8_t)(IVY_REPLY_OWNERSHIP | data_flag(p, m));
    reply.hops = m->hops;
    p->state = IVY_INVALID;
    p->owner = 0;
    p->copyset = 0;
    p->probowner = m->requester;
    emit_send(e, out, m->requester, &reply);
}

static void on_request(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                       struct ivy_actions *out)
{
    IVY_ASSERT(m->requester != e->cfg.self);
    if (p->pending != IVY_IDLE)
        request_park(m->page, m, out);
    else if (!p->owner)
        request_forward(e, p, m, out);
    else if (m->type == IVY_MSG_WRITE)
        serve_write(e, p, m, out);
    else if (e->cfg.read_ownership == IVY_READ_GIANTVM)
        serve_read_handover(e, p, m, out);
    else
        serve_read_keep(e, p, m, out);
}

/* ---------------------------------------------------------------- replies */

/* Bytes without DATA are the requester's own, so they must be current. */
static void take_reply_version(struct ivy_page *p, const struct ivy_msg *m)
{
    IVY_ASSERT((m->flags & IVY_REPLY_DATA) || p->version == m->version);
    /* A copy still readable here is current: it never needs new bytes. */
    IVY_ASSERT(!(m->flags & IVY_REPLY_DATA) || access_of(p) == 0);
    p->version = m->version;
}

/* WANT_READ --REPLY with ownership--> OWNER|SHARED (GiantVM) */
static void reply_read_owner(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                             struct ivy_actions *out)
{
    take_reply_version(p, m);
    p->state = IVY_SHARED;
    p->owner = 1;
    p->copyset = m->copyset | NODE_BIT(e->cfg.self);
    p->probowner = e->cfg.self;
    p->pending = IVY_IDLE;
    emit(out, IVY_ACT_MAP_RO, m->page);
    emit(out, IVY_ACT_DONE, m->page);
    emit(out, IVY_ACT_UNPARK, m->page);
}

/* WANT_READ --REPLY--> SHARED, probowner = the owner (classic Ivy) */
static void reply_read_copy(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                            struct ivy_actions *out)
{
    take_reply_version(p, m);
    p->state = IVY_SHARED;
    p->copyset = 0;
    hint_probowner(e, p, m->sender);
    p->pending = IVY_IDLE;
    emit(out, IVY_ACT_MAP_RO, m->page);
    emit(out, IVY_ACT_DONE, m->page);
    emit(out, IVY_ACT_UNPARK, m->page);
}

/* READ_STALE --REPLY--> WANT_READ: an invalidation overtook this reply, so
 * the copy it grants is already dead; keep the bytes (they match the
 * reply's version) and ask the new owner. */
static void reply_read_stale(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                             struct ivy_actions *out)
{
    IVY_ASSERT(!(m->flags & IVY_REPLY_OWNERSHIP));
    take_reply_version(p, m);
    p->pending = IVY_IDLE;
    fault_request(e, p, m->page, false, out);
}

/* WANT_WRITE --REPLY--> OWNER|MODIFIED, or WAIT_ACKS while the copyset is
 * invalidated */
static void reply_write(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                        struct ivy_actions *out)
{
    IVY_ASSERT(m->flags & IVY_REPLY_OWNERSHIP);
    take_reply_version(p, m);
    const uint64_t others = m->copyset & ~NODE_BIT(e->cfg.self);
    p->owner = 1;
    p->probowner = e->cfg.self;
    p->copyset = NODE_BIT(e->cfg.self);
    if (p->state == IVY_INITIAL)
        p->state = IVY_INVALID; /* touched now; still no access until granted */
    if (others == 0)
        grant_write(e, p, m->page, out);
    else
        invalidate_copies(e, p, m->page, others, out);
}

static void on_reply(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                     struct ivy_actions *out)
{
    IVY_ASSERT(m->txid == p->txid);
    switch (p->pending) {
    case IVY_WANT_WRITE:
        reply_write(e, p, m, out);
        break;
    case IVY_WANT_READ:
        if (m->flags & IVY_REPLY_OWNERSHIP)
            reply_read_owner(e, p, m, out);
        else
            reply_read_copy(e, p, m, out);
        break;
    case IVY_READ_STALE:
        reply_read_stale(e, p, m, out);
        break;
    default:
        IVY_ASSERT(!"reply without an outstanding request");
    }
}

/* ---------------------------------------------------------- invalidation */

/* any non-owner --INVALIDATE--> INVALID, INV_ACK sent (never parked: only
 * the owner sends it, and it may itself be waiting for this ack) */
static void on_invalidate(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                          struct ivy_actions *out)
{
    IVY_ASSERT(!p->owner);
    if (access_of(p) > 0)
        emit(out, IVY_ACT_ZAP, m->page);
    p->state = IVY_INVALID;
    p->copyset = 0;
    hint_probowner(e, p, m->sender);
    /* WANT_READ --INVALIDATE--> READ_STALE: the owner already answered and
     * then lost the page (classic Ivy only: a GiantVM read moves ownership). */
    if (p->pending == IVY_WANT_READ)
        p->pending = IVY_READ_STALE;
    struct ivy_msg ack = make_msg(e, IVY_MSG_INV_ACK, m->page, m->requester, p->version, 0,
                                  m->txid);
    emit_send(e, out, m->sender, &ack);
}

/* WAIT_ACKS --INV_ACK--> WAIT_ACKS, or OWNER|MODIFIED after the last one */
static void on_inv_ack(struct ivy_engine *e, struct ivy_page *p, const struct ivy_msg *m,
                       struct ivy_actions *out)
{
    const uint64_t bit = NODE_BIT(m->sender);
    IVY_ASSERT(p->pending == IVY_WAIT_ACKS && (p->acks_missing & bit) && m->txid == p->txid);
    p->acks_missing &= ~bit;
    p->copyset &= ~bit;
    if (p->acks_missing == 0)
        grant_write(e, p, m->page, out);
}

/* ------------------------------------------------------------------- API */

void ivy_engine_init(struct ivy_engine *e, const struct ivy_config *cfg, struct ivy_page *pages)
{
    IVY_ASSERT(cfg->nnodes >= 1 && cfg->nnodes <= IVY_MAX_NODES && cfg->self < cfg->nnodes);
    IVY_ASSERT(cfg->read_ownership <= IVY_READ_IVY && cfg->manager <= IVY_MGR_FIXED);
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

void ivy_engine_fault(struct ivy_engine *e, uint64_t page, bool write, struct ivy_actions *out)
{
    struct ivy_page *p = page_entry(e, page);
    out->n = 0;
    if (p->pending != IVY_IDLE)
        fault_while_pending();
    else if (access_of(p) >= (write ? 2 : 1))
        fault_spurious(page, out);
    else if (p->owner && write)
        fault_owner_write(e, p, page, out);
    else if (p->owner)
        fault_initial_read(e, p, page, out);
    else
        fault_request(e, p, page, write, out);
    check_page(e, p);
}

const char *ivy_engine_check_message(const struct ivy_engine *e, const struct ivy_msg *m)
{
    IVY_ASSERT(m->page < e->cfg.npages);
    const struct ivy_page *p = &e->pages[m->page];
    const uint16_t self = e->cfg.self;
    if (m->sender >= e->cfg.nnodes || m->requester >= e->cfg.nnodes)
        return "a node id beyond the cluster";
    switch (m->type) {
    case IVY_MSG_READ:
    case IVY_MSG_WRITE:
        if (m->requester == self)
            return "a request naming this node as requester";
        if (p->pending == IVY_IDLE && !p->owner && (p->probowner == self || p->probowner == m->requester))
            return "a request this node can neither serve nor forward";
        return NULL;
    case IVY_MSG_REPLY:
        if (m->requester != self)
            return "a reply for another node";
        if (p->pending != IVY_WANT_READ && p->pending != IVY_WANT_WRITE && p->pending != IVY_READ_STALE)
            return "a reply this node did not ask for";
        if (m->txid != p->txid)
            return "a reply with a stale transaction id";
        if (!(m->flags & IVY_REPLY_DATA) && m->version != p->version)
            return "a reply without data for a version this node does not have";
        if ((m->flags & IVY_REPLY_DATA) && access_of(p) != 0)
            return "page bytes for a page that is still readable here";
        if (p->pending == IVY_WANT_WRITE && !(m->flags & IVY_REPLY_OWNERSHIP))
            return "a write reply without ownership";
        if (p->pending == IVY_READ_STALE && (m->flags & IVY_REPLY_OWNERSHIP))
            return "ownership on a reply that an invalidation overtook";
        return NULL;
    case IVY_MSG_INVALIDATE:
        return p->owner ? "an invalidation sent to the owner" : NULL;
    case IVY_MSG_INV_ACK:
        if (p->pending != IVY_WAIT_ACKS || !(p->acks_missing & NODE_BIT(m->sender)) || m->txid != p->txid)
            return "an acknowledgement nobody waits for";
        return NULL;
    default:
        return "an unknown message type";
    }
}

void ivy_engine_message(struct ivy_engine *e, const struct ivy_msg *m, struct ivy_actions *out)
{
    struct ivy_page *p = page_entry(e, m->page);
    out->n = 0;
    /* Asserted after the transition, so a transition's own assert (which
     * names the broken precondition) fires first; this catches the rest. */
    const char *misfit = ivy_engine_check_message(e, m);
    switch (m->type) {
    case IVY_MSG_READ:
    case IVY_MSG_WRITE:
        on_request(e, p, m, out);
        break;
    case IVY_MSG_REPLY:
        on_reply(e, p, m, out);
        break;
    case IVY_MSG_INVALIDATE:
        on_invalidate(e, p, m, out);
        break;
    case IVY_MSG_INV_ACK:
        on_inv_ack(e, p, m, out);
        break;
    default:
        IVY_ASSERT(!"unknown message type");
    }
    IVY_ASSERT(misfit == NULL);
    check_page(e, p);
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

const char *ivy_state_name(uint8_t state)
{
    static const char *const names[] = {"INITIAL", "INVALID", "SHARED", "MODIFIED"};
    return state <= IVY_MODIFIED ? names[state] : "?";
}

const char *ivy_msg_name(uint8_t type)
{
    static const char *const names[] = {"?", "READ", "WRITE", "REPLY", "INVALIDATE", "INV_ACK"};
    return type <= IVY_MSG_TYPE_MAX ? names[type] : "?";
}
