"""Executable reference model of the Ivy protocol (PROTOCOL.md, docs/dsm.md).

Written from the protocol text, not from engine.c: copysets are Python sets,
the decision is a table lookup on (what arrived, what this node is doing,
whether it owns the page). It has the engine's interface (fault, message,
route, access, page) and returns the same actions, so the simulator can feed
both the same event and demand identical decisions and resulting states.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tests.dsm.engine_ffi import (
    ACT_DONE, ACT_MAP_RO, ACT_MAP_RW, ACT_PARK, ACT_SEND, ACT_UNPARK, ACT_WAKE,
    ACT_WRPROTECT, ACT_ZAP, IDLE, INITIAL, INVALID, MGR_DYNAMIC, MGR_FIXED, MODIFIED,
    MSG_INV_ACK, MSG_INVALIDATE, MSG_READ, MSG_REPLY, MSG_WRITE, READ_GIANTVM, READ_STALE,
    REPLY_DATA, REPLY_OWNERSHIP, SHARED, WAIT_ACKS, WANT_READ, WANT_WRITE, Action, Msg,
    PageState,
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


class ModelNode:
    def __init__(self, self_id: int, nnodes: int, npages: int,
                 read_ownership: int = READ_GIANTVM, manager: int = MGR_DYNAMIC) -> None:
        self.me = self_id
        self.nnodes = nnodes
        self.giantvm_reads = read_ownership == READ_GIANTVM
        self.manager_scheme = manager
        self.counter = 1
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
        return kind == MSG_WRITE or self.giantvm_reads

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
                         mask(e.unacked), e.txid)

    def set_version(self, page: int, version: int) -> None:
        self.pages[page].version = version

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

    def _become_writer(self, page: int, e: Entry, out: list[Action], woke_parked: bool) -> None:
        e.version += 1
        e.state, e.owner, e.copyset, e.probowner = MODIFIED, True, {self.me}, self.me
        e.pending, e.unacked = IDLE, set()
        out += [Action(ACT_MAP_RW, page), Action(ACT_DONE, page)]
        if woke_parked:
            out.append(Action(ACT_UNPARK, page))

    def _start_invalidation(self, page: int, e: Entry, holders: set[int],
                            out: list[Action]) -> None:
        e.pending, e.unacked = WAIT_ACKS, set(holders)
        e.copyset = {self.me} | holders
        for n in sorted(holders):
            self._send(out, n, MSG_INVALIDATE, page, self.me, e.version + 1, txid=e.txid)

    def _ask(self, page: int, e: Entry, write: bool, out: list[Action]) -> None:
        kind = MSG_WRITE if write else MSG_READ
        to = self.route(page)
        e.txid = self._new_txid()
        e.pending = WANT_WRITE if write else WANT_READ
        if self.i_manage(page) and self.transfers_ownership(kind):
            e.probowner = self.me
        self._send(out, to, kind, page, self.me, e.version, txid=e.txid)

    # -- local fault ------------------------------------------------------
    def fault(self, page: int, write: bool) -> list[Action]:
        e = self.pages[page]
        out: list[Action] = []
        if e.pending != IDLE:
            return out  # the acquisition under way will wake this faulter too
        if self.access(page) >= (2 if write else 1):
            return [Action(ACT_WAKE, page)]
        if not e.owner:
            self._ask(page, e, write, out)
        elif write:
            others = e.copyset - {self.me}
            if others:
                e.txid = self._new_txid()
                self._start_invalidation(page, e, others, out)
            else:
                self._become_writer(page, e, out, woke_parked=False)
        else:
            assert e.state == INITIAL and self.me == 0
            e.state = SHARED
            out += [Action(ACT_MAP_RO, page), Action(ACT_DONE, page)]
        return out

    # -- messages ---------------------------------------------------------
    def message(self, m: Msg) -> list[Action]:
        handler = {
            MSG_READ: self._request, MSG_WRITE: self._request, MSG_REPLY: self._reply,
            MSG_INVALIDATE: self._invalidate, MSG_INV_ACK: self._ack,
        }[m.type]
        out: list[Action] = []
        handler(self.pages[m.page], m, out)
        return out

    def _request(self, e: Entry, m: Msg, out: list[Action]) -> None:
        if e.pending != IDLE:
            out.append(Action(ACT_PARK, m.page, 0, m))
            return
        if not e.owner:
            target = e.probowner
            self._send(out, target, m.type, m.page, m.requester, m.version, m.copyset,
                       m.txid, m.flags, m.hops + 1)
            if self.transfers_ownership(m.type):
                e.probowner = m.requester
            return
        data = 0 if m.version == e.version else REPLY_DATA
        # The page leaves this node readable at most, and frozen before its bytes go.
        if m.type == MSG_WRITE:
            if e.state in (SHARED, MODIFIED):
                out.append(Action(ACT_ZAP, m.page))
            copyset = e.copyset - {self.me}
            e.state, e.owner, e.copyset, e.probowner = INVALID, False, set(), m.requester
            self._send(out, m.requester, MSG_REPLY, m.page, m.requester, e.version, mask(copyset),
                       m.txid, REPLY_OWNERSHIP | data, m.hops)
            return
        if e.state == MODIFIED:
            out.append(Action(ACT_WRPROTECT, m.page))
        elif e.state == INITIAL:
            out.append(Action(ACT_MAP_RO, m.page))
        e.state = SHARED
        if self.giantvm_reads:
            copyset = set(e.copyset)
            e.owner, e.copyset, e.probowner = False, set(), m.requester
            flags = REPLY_OWNERSHIP | data
        else:
            e.copyset.add(m.requester)
            copyset, flags = set(e.copyset), data
        self._send(out, m.requester, MSG_REPLY, m.page, m.requester, e.version, mask(copyset),
                   m.txid, flags, m.hops)

    def _reply(self, e: Entry, m: Msg, out: list[Action]) -> None:
        if m.txid != e.txid or e.pending not in (WANT_READ, WANT_WRITE, READ_STALE):
            raise ModelError(f"node {self.me}: unexpected reply {m}")
        if not m.flags & REPLY_DATA and m.version != e.version:
            raise ModelError(f"node {self.me}: reply without data for version {m.version}, "
                             f"have {e.version}")
        e.version = m.version
        if e.pending == WANT_WRITE:
            holders = nodes_of(m.copyset) - {self.me}
            e.owner, e.probowner, e.copyset = True, self.me, {self.me}
            if e.state == INITIAL:
                e.state = INVALID
            if holders:
                self._start_invalidation(m.page, e, holders, out)
            else:
                self._become_writer(m.page, e, out, woke_parked=True)
            return
        if e.pending == READ_STALE:
            e.pending = IDLE
            self._ask(m.page, e, False, out)
            return
        e.state, e.pending = SHARED, IDLE
        if m.flags & REPLY_OWNERSHIP:
            e.owner, e.copyset, e.probowner = True, nodes_of(m.copyset) | {self.me}, self.me
        else:
            e.copyset = set()
            self._hint(e, m.sender)
        out += [Action(ACT_MAP_RO, m.page), Action(ACT_DONE, m.page), Action(ACT_UNPARK, m.page)]

    def _invalidate(self, e: Entry, m: Msg, out: list[Action]) -> None:
        if e.owner:
            raise ModelError(f"node {self.me}: owner of page {m.page} told to invalidate")
        if e.state in (SHARED, MODIFIED):
            out.append(Action(ACT_ZAP, m.page))
        e.state, e.copyset = INVALID, set()
        self._hint(e, m.sender)
        if e.pending == WANT_READ:
            e.pending = READ_STALE
        self._send(out, m.sender, MSG_INV_ACK, m.page, m.requester, e.version, txid=m.txid)

    def _ack(self, e: Entry, m: Msg, out: list[Action]) -> None:
        if e.pending != WAIT_ACKS or m.sender not in e.unacked:
            raise ModelError(f"node {self.me}: unexpected ack {m}")
        e.unacked.discard(m.sender)
        e.copyset.discard(m.sender)
        if not e.unacked:
            self._become_writer(m.page, e, out, woke_parked=True)
