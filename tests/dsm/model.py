"""Executable reference model of the Ivy protocol (docs/protocol.md).

Written from the protocol text, not from engine.c, but laid out as the same
transition table: ROWS below has engine.c's rows, by name and in order, each
with the key it matches (event, state, pending, owner), its selector, its
guard and its handler; test_engine_table checks the two tables are equal.
Copysets are Python sets. It has the engine's interface (fault, message,
hold_event, route, access, page, row) and returns the same actions, so the
simulator feeds both the same event and demands the same row, the same
actions and the same resulting state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from tests.dsm.engine_ffi import (
    ACT_DONE, ACT_HOLD, ACT_MAP_RO, ACT_MAP_RW, ACT_PARK, ACT_SEND, ACT_UNPARK, ACT_WAKE,
    ACT_WRPROTECT, ACT_ZAP, EV_HOLD_EXPIRED, EV_MAP_OWNED, EV_PREFETCH, EV_READ_FAULT, EV_READ_FAULT_WRITE_SOON,
    EV_STORE_SEEN, EV_WRITE_FAULT,
    EVENT_NAMES, HOLDING, IDLE, INITIAL, INVALID, MGR_DYNAMIC, MGR_FIXED, MODIFIED,
    MSG_INV_ACK, MSG_INVALIDATE, MSG_READ, MSG_REPLY, MSG_WRITE, PENDING_NAMES, READ_GIANTVM,
    READ_STALE, REPLY_DATA, REPLY_MIGRATORY, REPLY_OWNERSHIP, REPLY_WRITABLE, REQ_WRITE_SOON, SHARED, STATE_NAMES, TOUCH_READ, TOUCH_WRITE,
    WAIT_ACKS, WANT_READ, WANT_WRITE, Action, Msg, PageState, Row,
)


class ModelError(AssertionError):
    """The model met an event the protocol says cannot happen."""


def mask(nodes: set[int]) -> int:
    return sum(1 << n for n in nodes)


def nodes_of(bits: int) -> set[int]:
    return {n for n in range(64) if bits >> n & 1}


@dataclass
class Entry:
    state: int = INITIAL
    owner: bool = False
    pending: int = IDLE
    probowner: int = 0
    copyset: set[int] = field(default_factory=set)
    version: int = 0
    unacked: set[int] = field(default_factory=set)
    txid: int = 0
    migratory: bool = False
    write_soon: bool = False  # our outstanding READ carries the write-soon hint


# -- the table's vocabulary ----------------------------------------------------
READ_FAULTS = {EV_READ_FAULT, EV_READ_FAULT_WRITE_SOON}
FAULTS = READ_FAULTS | {EV_WRITE_FAULT}
REQUESTS = {MSG_READ, MSG_WRITE}
ANY_STATE = {INITIAL, INVALID, SHARED, MODIFIED}
ACQUIRING = {WANT_READ, WANT_WRITE, WAIT_ACKS, READ_STALE}
ANY_PENDING = {IDLE, HOLDING} | ACQUIRING
OWNER, NOT_OWNER, EITHER = {True}, {False}, {True, False}


@dataclass(frozen=True)
class ModelRow:
    name: str
    handler: str  # a ModelNode method, named as engine.c's handler
    events: frozenset[int]
    states: frozenset[int]
    pendings: frozenset[int]
    owner: frozenset[bool]
    when: str | None = None   # a ModelNode predicate
    guard: str | None = None  # a ModelNode check: None if m fits, else why not

    def matches(self, event: int, e: Entry) -> bool:
        return (event in self.events and e.state in self.states and e.pending in self.pendings
                and e.owner in self.owner)

    def as_row(self) -> Row:
        def names(values: frozenset[int], table: dict[int, str]) -> tuple[str, ...]:
            return tuple(table[v] for v in sorted(values))
        owner = tuple(n for flag, n in ((True, "owner"), (False, "not owner")) if flag in self.owner)
        return Row(self.name, self.handler, names(self.events, EVENT_NAMES),
                   names(self.states, STATE_NAMES), names(self.pendings, PENDING_NAMES), owner,
                   self.when, self.guard)


def row(name: str, handler: str, events: set[int], states: set[int], pendings: set[int],
        owner: set[bool], when: str | None = None, guard: str | None = None) -> ModelRow:
    return ModelRow(name, handler, frozenset(events), frozenset(states), frozenset(pendings),
                    frozenset(owner), when, guard)


ROWS: list[ModelRow] = [
    # local faults
    row("fault_while_pending", "fault_while_pending", FAULTS, ANY_STATE, ACQUIRING, EITHER),
    row("read_fault_spurious", "fault_spurious", READ_FAULTS, {SHARED, MODIFIED},
        {IDLE, HOLDING}, EITHER),
    row("write_fault_spurious", "fault_spurious", {EV_WRITE_FAULT}, {MODIFIED}, {IDLE, HOLDING},
        EITHER),
    row("fault_initial_read_writable", "fault_initial_read_writable", READ_FAULTS, {INITIAL},
        {IDLE}, OWNER, when="touch_writable"),
    row("fault_initial_read", "fault_initial_read", READ_FAULTS, {INITIAL}, {IDLE}, OWNER),
    row("fault_owner_write_alone", "fault_owner_write_alone", {EV_WRITE_FAULT}, {INITIAL, SHARED},
        {IDLE, HOLDING}, OWNER, when="no_copies_elsewhere"),
    row("fault_owner_write_migrates", "fault_owner_write_migrates", {EV_WRITE_FAULT}, {SHARED},
        {IDLE, HOLDING}, OWNER, when="read_then_write"),
    row("fault_owner_write_invalidates", "fault_owner_write_invalidates", {EV_WRITE_FAULT},
        {INITIAL, SHARED}, {IDLE, HOLDING}, OWNER, when="copies_elsewhere"),
    row("read_fault_request_write_soon", "fault_request_read_write_soon", {EV_READ_FAULT_WRITE_SOON},
        {INITIAL, INVALID}, {IDLE}, NOT_OWNER, when="write_soon_on"),
    row("read_fault_request", "fault_request_read", READ_FAULTS, {INITIAL, INVALID}, {IDLE},
        NOT_OWNER),
    row("write_fault_request", "fault_request_write", {EV_WRITE_FAULT}, {INITIAL, INVALID, SHARED},
        {IDLE}, NOT_OWNER),
    # prefetch
    row("prefetch_request", "prefetch_request", {EV_PREFETCH}, {INITIAL, INVALID}, {IDLE}, NOT_OWNER,
        when="prefetch_on"),
    row("prefetch_needless", "prefetch_needless", {EV_PREFETCH}, ANY_STATE, ANY_PENDING, EITHER),
    # requests
    row("request_park", "request_park", REQUESTS, ANY_STATE, ACQUIRING, EITHER,
        guard="request_from_elsewhere"),
    row("request_hold", "request_park", REQUESTS, {SHARED, MODIFIED}, {HOLDING}, OWNER,
        guard="request_from_elsewhere"),
    row("request_forward", "request_forward", REQUESTS, ANY_STATE, {IDLE}, NOT_OWNER,
        guard="forward_has_a_target"),
    row("serve_write", "serve_write", {MSG_WRITE}, {INITIAL, SHARED, MODIFIED}, {IDLE}, OWNER,
        guard="request_from_elsewhere"),
    row("serve_read_write_soon", "serve_read_write_soon", {MSG_READ}, {INITIAL, SHARED, MODIFIED}, {IDLE},
        OWNER, when="hinted_sole_holder", guard="request_from_elsewhere"),
    row("serve_read_migratory", "serve_read_migratory", {MSG_READ}, {MODIFIED}, {IDLE}, OWNER,
        when="page_migratory", guard="request_from_elsewhere"),
    row("serve_read_migratory_unused", "serve_read_migratory_unused", {MSG_READ}, {SHARED}, {IDLE},
        OWNER, when="page_migratory", guard="request_from_elsewhere"),
    row("serve_read_handover", "serve_read_handover", {MSG_READ}, {INITIAL, SHARED, MODIFIED},
        {IDLE}, OWNER, when="giantvm_reads", guard="request_from_elsewhere"),
    row("serve_read_keep", "serve_read_keep", {MSG_READ}, {INITIAL, SHARED, MODIFIED}, {IDLE},
        OWNER, when="ivy_reads", guard="request_from_elsewhere"),
    # replies
    row("reply_write_alone", "reply_write_alone", {MSG_REPLY}, ANY_STATE, {WANT_WRITE}, NOT_OWNER,
        when="reply_lists_none", guard="reply_with_ownership"),
    row("reply_write_invalidates", "reply_write_invalidates", {MSG_REPLY}, ANY_STATE,
        {WANT_WRITE}, NOT_OWNER, when="reply_lists_copies", guard="reply_with_ownership"),
    row("reply_read_writable", "reply_write_alone", {MSG_REPLY}, {INITIAL, INVALID}, {WANT_READ},
        NOT_OWNER, when="reply_grants_writable", guard="writable_grant_fits"),
    row("reply_read_migratory", "reply_read_migratory", {MSG_REPLY}, {INITIAL, INVALID},
        {WANT_READ}, NOT_OWNER, when="reply_grants_migratory", guard="migratory_grant_fits"),
    row("reply_read_owner", "reply_read_owner", {MSG_REPLY}, {INITIAL, INVALID}, {WANT_READ},
        NOT_OWNER, when="reply_grants_ownership", guard="reply_fits"),
    row("reply_read_copy", "reply_read_copy", {MSG_REPLY}, {INITIAL, INVALID}, {WANT_READ},
        NOT_OWNER, when="reply_grants_a_copy", guard="reply_fits"),
    row("reply_read_stale", "reply_read_stale", {MSG_REPLY}, {INVALID}, {READ_STALE}, NOT_OWNER,
        guard="reply_without_ownership"),
    # invalidations and acks
    row("invalidate_while_reading", "invalidate_while_reading", {MSG_INVALIDATE}, ANY_STATE,
        {WANT_READ}, NOT_OWNER),
    row("invalidate", "invalidate", {MSG_INVALIDATE}, ANY_STATE, {IDLE, WANT_WRITE, READ_STALE},
        NOT_OWNER),
    row("ack_counted", "ack_counted", {MSG_INV_ACK}, ANY_STATE, {WAIT_ACKS}, OWNER,
        when="acks_left", guard="ack_awaited"),
    row("ack_last", "ack_last", {MSG_INV_ACK}, ANY_STATE, {WAIT_ACKS}, OWNER, when="last_ack",
        guard="ack_awaited"),
    # the hold window
    row("hold_expired", "hold_end", {EV_HOLD_EXPIRED}, ANY_STATE, {HOLDING}, OWNER),
    row("hold_cut_by_store", "hold_end", {EV_STORE_SEEN}, ANY_STATE, {HOLDING}, OWNER),
    # node 0 at start
    row("map_owned", "grant_owned_up_front", {EV_MAP_OWNED}, {INITIAL}, {IDLE}, OWNER),
]


class ModelNode:
    def __init__(self, self_id: int, nnodes: int, npages: int,
                 read_ownership: int = READ_GIANTVM, manager: int = MGR_DYNAMIC,
                 hold: bool = False, first_touch: int = TOUCH_READ,
                 migratory: bool = False, prefetch: bool = False) -> None:
        self.me = self_id
        self.nnodes = nnodes
        self.giantvm_reads_mode = read_ownership == READ_GIANTVM
        self.manager_scheme = manager
        self.hold = hold
        self.first_touch = first_touch
        self.migratory = migratory
        self.prefetching = prefetch
        self.counter = 1
        self.row = -1  # index in ROWS of the row that handled the last event
        self.pages: list[Entry] = []
        for p in range(npages):
            e = Entry()
            if self_id == 0:
                e.owner, e.copyset = True, {0}
            if manager != MGR_DYNAMIC and self.manager(p) != self_id:
                e.probowner = self.manager(p)
            self.pages.append(e)

    # -- configuration ----------------------------------------------------
    def manager(self, page: int) -> int:
        return page % self.nnodes if self.manager_scheme == MGR_FIXED else 0

    def uses_manager(self) -> bool:
        return self.manager_scheme != MGR_DYNAMIC

    def i_manage(self, page: int) -> bool:
        return self.uses_manager() and self.manager(page) == self.me

    def transfers_ownership(self, kind: int) -> bool:
        return kind == MSG_WRITE or self.giantvm_reads_mode

    # -- queries ----------------------------------------------------------
    def route(self, page: int) -> int:
        if self.uses_manager() and not self.i_manage(page):
            return self.manager(page)
        return self.pages[page].probowner

    def access(self, page: int) -> int:
        return {SHARED: 1, MODIFIED: 2}.get(self.pages[page].state, 0)

    def page(self, page: int) -> PageState:
        e = self.pages[page]
        return PageState(e.state, e.owner, e.pending, e.probowner, mask(e.copyset), e.version,
                         mask(e.unacked), e.txid, e.migratory, e.write_soon)

    def set_version(self, page: int, version: int) -> None:
        self.pages[page].version = version

    # -- dispatch: the first matching row whose selector holds -------------
    def _select(self, event: int, page: int, m: Msg | None) -> int | None:
        e = self.pages[page]
        for i, r in enumerate(ROWS):
            if r.matches(event, e) and (r.when is None or getattr(self, r.when)(e, m)):
                return i
        return None

    def _run(self, event: int, page: int, m: Msg | None) -> list[Action]:
        i = self._select(event, page, m)
        if i is None:
            raise ModelError(f"node {self.me}: no row takes {EVENT_NAMES[event]} on page {page} "
                             f"in {self.page(page)}")
        r = ROWS[i]
        if r.guard is not None:
            why = getattr(self, r.guard)(self.pages[page], m)
            if why is not None:
                raise ModelError(f"node {self.me}: row {r.name} refuses {m}: {why}")
        self.row = i
        out: list[Action] = []
        getattr(self, r.handler)(page, self.pages[page], m, out)
        return out

    def fault(self, page: int, write: bool, write_soon: bool = False) -> list[Action]:
        event = EV_WRITE_FAULT if write else EV_READ_FAULT_WRITE_SOON if write_soon else EV_READ_FAULT
        return self._run(event, page, None)

    def message(self, m: Msg) -> list[Action]:
        return self._run(m.type, m.page, m)

    def map_owned(self, page: int) -> bool:
        if self._select(EV_MAP_OWNED, page, None) is None:
            return False
        assert self._run(EV_MAP_OWNED, page, None) == []
        return True

    def prefetch(self, page: int) -> list[Action]:
        return self._run(EV_PREFETCH, page, None)

    def hold_event(self, page: int, event: int) -> list[Action]:
        assert event in (EV_HOLD_EXPIRED, EV_STORE_SEEN)
        return self._run(event, page, None)

    # -- selectors ----------------------------------------------------------
    def giantvm_reads(self, e: Entry, m: Msg | None) -> bool:
        return self.giantvm_reads_mode

    def ivy_reads(self, e: Entry, m: Msg | None) -> bool:
        return not self.giantvm_reads_mode

    def touch_writable(self, e: Entry, m: Msg | None) -> bool:
        return self.first_touch == TOUCH_WRITE

    def prefetch_on(self, e: Entry, m: Msg | None) -> bool:
        return self.prefetching and not self.giantvm_reads_mode  # a read copy, never ownership

    def _migratory_pages(self) -> bool:
        return self.migratory and self.giantvm_reads_mode

    def read_then_write(self, e: Entry, m: Msg | None) -> bool:
        return self._migratory_pages() and e.state == SHARED and len(e.copyset - {self.me}) == 1

    def write_soon_on(self, e: Entry, m: Msg | None) -> bool:
        return self._migratory_pages()

    def hinted_sole_holder(self, e: Entry, m: Msg | None) -> bool:
        assert m is not None
        return self._migratory_pages() and bool(m.flags & REQ_WRITE_SOON) and e.copyset == {self.me}

    def reply_grants_writable(self, e: Entry, m: Msg | None) -> bool:
        assert m is not None
        return bool(m.flags & REPLY_WRITABLE)

    def page_migratory(self, e: Entry, m: Msg | None) -> bool:
        return self._migratory_pages() and e.migratory

    def reply_grants_migratory(self, e: Entry, m: Msg | None) -> bool:
        assert m is not None
        return bool(m.flags & REPLY_MIGRATORY)

    def copies_elsewhere(self, e: Entry, m: Msg | None) -> bool:
        return bool(e.copyset - {self.me})

    def no_copies_elsewhere(self, e: Entry, m: Msg | None) -> bool:
        return not self.copies_elsewhere(e, m)

    def reply_lists_copies(self, e: Entry, m: Msg | None) -> bool:
        assert m is not None
        return bool(nodes_of(m.copyset) - {self.me})

    def reply_lists_none(self, e: Entry, m: Msg | None) -> bool:
        return not self.reply_lists_copies(e, m)

    def reply_grants_ownership(self, e: Entry, m: Msg | None) -> bool:
        assert m is not None
        return bool(m.flags & REPLY_OWNERSHIP)

    def reply_grants_a_copy(self, e: Entry, m: Msg | None) -> bool:
        return not self.reply_grants_ownership(e, m)

    def last_ack(self, e: Entry, m: Msg | None) -> bool:
        assert m is not None
        return not e.unacked - {m.sender}

    def acks_left(self, e: Entry, m: Msg | None) -> bool:
        return not self.last_ack(e, m)

    # -- guards ---------------------------------------------------------------
    def request_from_elsewhere(self, e: Entry, m: Msg | None) -> str | None:
        assert m is not None
        if m.requester == self.me:
            return "a request naming this node as requester"
        allowed = REQ_WRITE_SOON if m.type == MSG_READ and self._migratory_pages() else 0
        if m.flags & ~allowed:
            return "request flags this cluster does not use"
        return None

    def forward_has_a_target(self, e: Entry, m: Msg | None) -> str | None:
        assert m is not None
        why = self.request_from_elsewhere(e, m)
        if why is not None:
            return why
        if e.probowner in (self.me, m.requester):
            return "a request this node can neither serve nor forward"
        return None

    def reply_fits(self, e: Entry, m: Msg | None) -> str | None:
        assert m is not None
        return self._reply_fits(e, m)

    def _reply_fits(self, e: Entry, m: Msg) -> str | None:
        if m.requester != self.me:
            return "a reply for another node"
        if m.txid != e.txid:
            return "a reply with a stale transaction id"
        if not m.flags & REPLY_DATA and m.version != e.version:
            return "a reply without data for a version this node does not have"
        if m.flags & REPLY_DATA and self.access(m.page):
            return "page bytes for a page that is still readable here"
        if m.flags & REPLY_MIGRATORY and not self._migratory_pages():
            return "a migratory grant in a cluster without migratory pages"
        if m.flags & REPLY_MIGRATORY and not m.flags & REPLY_OWNERSHIP:
            return "a migratory grant without ownership"
        if m.flags & REPLY_WRITABLE and not (m.flags & REPLY_OWNERSHIP and e.write_soon):
            return "a writable grant for a read that gave no write-soon hint"
        return None

    def _sole_holder_grant_fits(self, e: Entry, m: Msg | None, lists_copies: str) -> str | None:
        assert m is not None
        why = self._reply_fits(e, m)
        if why is None and nodes_of(m.copyset) - {self.me}:
            return lists_copies
        return why

    def writable_grant_fits(self, e: Entry, m: Msg | None) -> str | None:
        return self._sole_holder_grant_fits(e, m, "a writable grant that lists other copies")

    def migratory_grant_fits(self, e: Entry, m: Msg | None) -> str | None:
        return self._sole_holder_grant_fits(e, m, "a migratory grant that lists other copies")

    def reply_with_ownership(self, e: Entry, m: Msg | None) -> str | None:
        assert m is not None
        why = self._reply_fits(e, m)
        if why is None and not m.flags & REPLY_OWNERSHIP:
            return "a reply without ownership"
        return why

    def reply_without_ownership(self, e: Entry, m: Msg | None) -> str | None:
        assert m is not None
        why = self._reply_fits(e, m)
        if why is None and m.flags & REPLY_OWNERSHIP:
            return "ownership on a reply that grants a copy"
        return why

    def ack_awaited(self, e: Entry, m: Msg | None) -> str | None:
        assert m is not None
        if m.sender not in e.unacked or m.txid != e.txid:
            return "an acknowledgement nobody waits for"
        return None

    # -- helpers ----------------------------------------------------------
    def _new_txid(self) -> int:
        txid = (self.me << 48) | self.counter
        self.counter += 1
        return txid

    def _send(self, out: list[Action], to: int, kind: int, page: int, requester: int,
              version: int, copyset: int = 0, txid: int = 0, flags: int = 0,
              hops: int = 0) -> None:
        if to == self.me:
            raise ModelError(f"node {self.me} would send {kind} for page {page} to itself")
        out.append(Action(ACT_SEND, page, to,
                          Msg(kind, flags, requester, self.me, hops, page, version, copyset, txid)))

    def _hint(self, e: Entry, node: int) -> None:
        if not self.uses_manager():
            e.probowner = node

    def _completed(self, page: int, e: Entry, out: list[Action], woke_parked: bool) -> None:
        """A local access is granted: an owner holds the page for its woken thread;
        otherwise what was parked goes on at once."""
        if self.hold and e.owner:
            e.pending = HOLDING
            out.append(Action(ACT_HOLD, page))
            return
        e.pending = IDLE
        if woke_parked:
            out.append(Action(ACT_UNPARK, page))

    def _become_writer(self, page: int, e: Entry, out: list[Action]) -> None:
        woke_parked = e.pending != IDLE
        e.version += 1
        e.state, e.owner, e.copyset, e.probowner = MODIFIED, True, {self.me}, self.me
        e.unacked = set()
        out += [Action(ACT_MAP_RW, page), Action(ACT_DONE, page)]
        self._completed(page, e, out, woke_parked)

    def _start_invalidation(self, page: int, e: Entry, holders: set[int],
                            out: list[Action]) -> None:
        e.pending, e.unacked = WAIT_ACKS, set(holders)
        e.copyset = {self.me} | holders
        for n in sorted(holders):
            self._send(out, n, MSG_INVALIDATE, page, self.me, e.version + 1, txid=e.txid)

    def _ask(self, page: int, e: Entry, write: bool, out: list[Action], flags: int = 0) -> None:
        kind = MSG_WRITE if write else MSG_READ
        to = self.route(page)
        e.txid = self._new_txid()
        e.pending = WANT_WRITE if write else WANT_READ
        if self.i_manage(page) and self.transfers_ownership(kind):
            e.probowner = self.me
        e.write_soon = bool(flags & REQ_WRITE_SOON)
        self._send(out, to, kind, page, self.me, e.version, txid=e.txid, flags=flags)

    def _take_version(self, e: Entry, m: Msg) -> None:
        e.version = m.version
        e.write_soon = False  # the request is answered

    # -- handlers: one per engine.c handler ---------------------------------
    def fault_while_pending(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        pass  # the acquisition under way will wake this faulter too

    def fault_spurious(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        out.append(Action(ACT_WAKE, page))

    def fault_initial_read(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        e.state = SHARED
        out += [Action(ACT_MAP_RO, page), Action(ACT_DONE, page)]
        self._completed(page, e, out, woke_parked=False)

    def fault_initial_read_writable(self, page: int, e: Entry, m: Msg | None,
                                    out: list[Action]) -> None:
        self._become_writer(page, e, out)

    def fault_owner_write_alone(self, page: int, e: Entry, m: Msg | None,
                                out: list[Action]) -> None:
        self._become_writer(page, e, out)

    def fault_owner_write_invalidates(self, page: int, e: Entry, m: Msg | None,
                                      out: list[Action]) -> None:
        e.txid = self._new_txid()
        self._start_invalidation(page, e, e.copyset - {self.me}, out)

    def fault_owner_write_migrates(self, page: int, e: Entry, m: Msg | None,
                                   out: list[Action]) -> None:
        e.migratory = True  # read, then written while only the previous owner kept a copy
        self.fault_owner_write_invalidates(page, e, m, out)

    def fault_request_read(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        self._ask(page, e, False, out)

    def fault_request_read_write_soon(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        self._ask(page, e, False, out, REQ_WRITE_SOON)  # a write is predicted to follow

    def fault_request_write(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        self._ask(page, e, True, out)

    def prefetch_request(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        self._ask(page, e, False, out)  # no faulter yet: the reply maps the copy ahead of it

    def prefetch_needless(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        pass  # readable, asked for or owned here already, or prefetch is off

    def request_park(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        out.append(Action(ACT_PARK, page, 0, m))

    def request_forward(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._send(out, e.probowner, m.type, page, m.requester, m.version, m.copyset, m.txid,
                   m.flags, m.hops + 1)
        if self.transfers_ownership(m.type):
            e.probowner = m.requester

    def _elide(self, e: Entry, m: Msg) -> int:
        return 0 if m.version == e.version else REPLY_DATA

    def _freeze_for_readers(self, page: int, e: Entry, out: list[Action]) -> None:
        """The page leaves this node readable at most, frozen before its bytes go."""
        if e.state == MODIFIED:
            out.append(Action(ACT_WRPROTECT, page))
        elif e.state == INITIAL:
            out.append(Action(ACT_MAP_RO, page))
        e.state = SHARED

    def serve_write(self, page: int, e: Entry, m: Msg | None, out: list[Action], extra: int = 0) -> None:
        assert m is not None
        if e.state in (SHARED, MODIFIED):
            out.append(Action(ACT_ZAP, page))
        copyset = e.copyset - {self.me}
        flags = REPLY_OWNERSHIP | self._elide(e, m) | (REPLY_MIGRATORY if e.migratory else 0) | extra
        e.state, e.owner, e.copyset, e.probowner = INVALID, False, set(), m.requester
        e.migratory = False  # the mark goes with ownership
        self._send(out, m.requester, MSG_REPLY, page, m.requester, e.version, mask(copyset),
                   m.txid, flags, m.hops)

    def serve_read_write_soon(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        # nobody else holds a copy, so the hinted reader may write at once
        self.serve_write(page, e, m, out, REPLY_WRITABLE)

    def serve_read_migratory(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        # the reader is served as a writer: it will be the only holder
        self.serve_write(page, e, m, out)

    def serve_read_migratory_unused(self, page: int, e: Entry, m: Msg | None,
                                    out: list[Action]) -> None:
        e.migratory = False  # the last grantee only read: another reader means read sharing
        self.serve_read_handover(page, e, m, out)

    def serve_read_handover(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._freeze_for_readers(page, e, out)
        copyset = set(e.copyset)
        e.owner, e.copyset, e.probowner, e.migratory = False, set(), m.requester, False
        self._send(out, m.requester, MSG_REPLY, page, m.requester, e.version, mask(copyset),
                   m.txid, REPLY_OWNERSHIP | self._elide(e, m), m.hops)

    def serve_read_keep(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._freeze_for_readers(page, e, out)
        e.copyset.add(m.requester)
        self._send(out, m.requester, MSG_REPLY, page, m.requester, e.version, mask(e.copyset),
                   m.txid, self._elide(e, m), m.hops)

    def _own_for_write(self, e: Entry, m: Msg) -> None:
        self._take_version(e, m)
        e.owner, e.probowner, e.copyset = True, self.me, {self.me}
        e.migratory = bool(m.flags & REPLY_MIGRATORY)
        if e.state == INITIAL:
            e.state = INVALID

    def reply_write_alone(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._own_for_write(e, m)
        self._become_writer(page, e, out)

    def reply_write_invalidates(self, page: int, e: Entry, m: Msg | None,
                                out: list[Action]) -> None:
        assert m is not None
        self._own_for_write(e, m)
        self._start_invalidation(page, e, nodes_of(m.copyset) - {self.me}, out)

    def reply_read_owner(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._take_version(e, m)
        e.state, e.owner, e.probowner = SHARED, True, self.me
        e.copyset = nodes_of(m.copyset) | {self.me}
        out += [Action(ACT_MAP_RO, page), Action(ACT_DONE, page)]
        self._completed(page, e, out, woke_parked=True)

    def reply_read_migratory(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._own_for_write(e, m)
        e.state = SHARED  # readable only: the predicted write faults here, with no message
        out += [Action(ACT_MAP_RO, page), Action(ACT_DONE, page)]
        self._completed(page, e, out, woke_parked=True)

    def reply_read_copy(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._take_version(e, m)
        e.state, e.copyset = SHARED, set()
        self._hint(e, m.sender)
        out += [Action(ACT_MAP_RO, page), Action(ACT_DONE, page)]
        self._completed(page, e, out, woke_parked=True)

    def reply_read_stale(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        self._take_version(e, m)
        self._ask(page, e, False, out)

    def invalidate(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        if e.state in (SHARED, MODIFIED):
            out.append(Action(ACT_ZAP, page))
        e.state, e.copyset = INVALID, set()
        self._hint(e, m.sender)
        self._send(out, m.sender, MSG_INV_ACK, page, m.requester, e.version, txid=m.txid)

    def invalidate_while_reading(self, page: int, e: Entry, m: Msg | None,
                                 out: list[Action]) -> None:
        self.invalidate(page, e, m, out)
        e.pending = READ_STALE

    def ack_counted(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        assert m is not None
        e.unacked.discard(m.sender)
        e.copyset.discard(m.sender)

    def ack_last(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        self.ack_counted(page, e, m, out)
        self._become_writer(page, e, out)

    def grant_owned_up_front(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        e.state, e.probowner = MODIFIED, self.me
        e.version += 1

    def hold_end(self, page: int, e: Entry, m: Msg | None, out: list[Action]) -> None:
        e.pending = IDLE
        out.append(Action(ACT_UNPARK, page))
