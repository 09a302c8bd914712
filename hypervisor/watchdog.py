"""The stall watchdog: a page fault outstanding longer than `stall_warn` is named in one line.

Each node's watchdog thread asks its DSM core, a few times a second, for the
faults outstanding longer than `stall_warn` seconds (native/probe.c: vCPU,
page, age). For each new one it asks every other node for its state of
that page over the control channel (PAGE_QUERY, answered with PAGE_STATE;
node 0 relays between the others, the channel being a star), waits up to
ANSWER_SECONDS for the answers, then says one line:

    node 1: vCPU 1 has waited 2.1 s for page 0x2000 (read); here INVALID, probowner 0, pending
    WANT_READ, last sent READ to node 0 2.1 s ago; node 0: INVALID, probowner 1, idle, last sent
    REPLY to node 1 2.1 s ago

(one line on the terminal). A stall is named once; the run goes on, and
`--timeout` ends it if nothing else does. docs/profile.md explains how to
read the line. Nothing here runs per fault: the thread polls.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import control
from .control import ControlError, Frame, Msg
from .dsm import DsmNode
from .native_consts import PAGE_SIZE, Pending, State, WireType

ANSWER_SECONDS = 0.5            # how long the line waits for other nodes' answers
MAX_POLL_SECONDS = 0.25         # the watchdog looks at least this often
MAX_AGE_MS = 0xFFFFFFFF
WAITING_PARKED, WAITING_HELD = 1, 2


# --- the codec --------------------------------------------------------------------
def encode_query(asker: int, qid: int, page: int) -> bytes:
    return control.encode(Msg.PAGE_QUERY, control.PAGE_QUERY.pack(asker, qid, page))


def decode_query(frame: Frame, peer: int, nnodes: int, npages: int) -> tuple[int, int, int]:
    """(asker, qid, page); node k may only ask for itself, node 0 relays anyone's question."""
    asker, qid, page = control.PAGE_QUERY.unpack(frame.payload)
    what = f"node {peer} asked for the state of page {page:#x}"
    if not 0 <= asker < nnodes or (peer != 0 and asker != peer):
        raise ControlError(f"{what} on behalf of node {asker}")
    if page >= npages:
        raise ControlError(f"{what}, beyond the guest's {npages} pages")
    return asker, qid, page


def _ms(ns: int) -> int:
    return min(MAX_AGE_MS, ns // 1_000_000)


def encode_state(asker: int, node: int, qid: int, page: int, info: dict[str, int]) -> bytes:
    waiting = (WAITING_PARKED if info["parked"] else 0) | (WAITING_HELD if info["held"] else 0)
    return control.encode(Msg.PAGE_STATE, control.PAGE_STATE.pack(
        asker, node, qid, page, info["state"], info["owner"], info["pending"], info["access"], info["probowner"],
        info["copyset"], info["version"], _ms(info["fault_age_ns"]),
        _ms(info["sent_age_ns"]) if info["sent_type"] else 0, info["sent_type"], info["sent_peer"], waiting))


def decode_state(frame: Frame, peer: int, nnodes: int, npages: int) -> tuple[int, int, int, dict[str, int]]:
    """(asker, answering node, qid, state): node k answers for itself only; node 0 relays."""
    (asker, node, qid, page, state, owner, pending, access, probowner, copyset, version, fault_ms, sent_ms,
     sent_type, sent_peer, waiting) = control.PAGE_STATE.unpack(frame.payload)
    what = f"node {peer} answered for node {node} about page {page:#x}"
    if not 0 <= node < nnodes or (peer != 0 and node != peer) or not 0 <= asker < nnodes:
        raise ControlError(f"{what} to node {asker}")
    if page >= npages or state not in State.__members__.values() or pending not in Pending.__members__.values():
        raise ControlError(f"{what} with page state {state} / pending {pending}")
    if owner > 1 or access > 2 or probowner >= nnodes or copyset >> nnodes or waiting >> 2:
        raise ControlError(f"{what} with owner {owner}, access {access}, probowner {probowner}, "
                           f"copyset {copyset:#x}, waiting {waiting}")
    if sent_type and (sent_type not in WireType.__members__.values() or sent_peer >= nnodes):
        raise ControlError(f"{what}: last sent message type {sent_type} to node {sent_peer}")
    return asker, node, qid, {"page": page, "state": state, "owner": owner, "pending": pending, "access": access,
                              "probowner": probowner, "copyset": copyset, "version": version,
                              "fault_ms": fault_ms, "sent_ms": sent_ms, "sent_type": sent_type,
                              "sent_peer": sent_peer, "waiting": waiting}


# --- the line ---------------------------------------------------------------------
def describe(state: dict[str, int], nnodes: int) -> str:
    """One node's view of a page, in words."""
    parts = [State(state["state"]).name]
    if state["owner"]:
        copies = [str(n) for n in range(nnodes) if state["copyset"] >> n & 1]
        parts.append(f"owner, copies on nodes {{{', '.join(copies)}}}" if copies else "owner")
    else:
        parts.append(f"probowner {state['probowner']}")
    parts.append(f"version {state['version']}")
    pending = Pending(state["pending"])
    parts.append("idle" if pending is Pending.IDLE else f"pending {pending.name}")
    if state["fault_ms"]:
        parts.append(f"a local fault waiting {state['fault_ms'] / 1000:.1f} s")
    if state["waiting"] & WAITING_PARKED:
        parts.append("requests parked")
    if state["waiting"] & WAITING_HELD:
        parts.append("requests held")
    if state["sent_type"]:
        parts.append(f"last sent {WireType(state['sent_type']).name} to node {state['sent_peer']} "
                     f"{state['sent_ms'] / 1000:.1f} s ago")
    else:
        parts.append("nothing sent for it yet")
    return ", ".join(parts)


def local_state(dsm: DsmNode, page: int) -> dict[str, int]:
    """This node's view of a page, in the same form as a decoded answer."""
    info = dsm.page_info(page)
    return {"page": page, "state": info["state"], "owner": info["owner"], "pending": info["pending"],
            "access": info["access"], "probowner": info["probowner"], "copyset": info["copyset"],
            "version": info["version"], "fault_ms": _ms(info["fault_age_ns"]),
            "sent_ms": _ms(info["sent_age_ns"]), "sent_type": info["sent_type"], "sent_peer": info["sent_peer"],
            "waiting": (WAITING_PARKED if info["parked"] else 0) | (WAITING_HELD if info["held"] else 0)}


def stall_line(node: int, nnodes: int, stall: dict[str, int], here: dict[str, int],
               others: dict[int, dict[str, int] | None]) -> str:
    who = f"vCPU {stall['vcpu']}" if stall["vcpu"] >= 0 else "a thread that is no vCPU"
    line = (f"node {node}: {who} has waited {stall['age_ns'] / 1e9:.1f} s for page "
            f"{stall['page'] * PAGE_SIZE:#x}; here {describe(here, nnodes)}")
    for other in sorted(others):
        state = others[other]
        line += f"; node {other}: " + (describe(state, nnodes) if state is not None else
                                       f"no answer within {ANSWER_SECONDS:g} s")
    return line


# --- the thread -------------------------------------------------------------------
@dataclass
class _Query:
    stall: dict[str, int]
    here: dict[str, int]
    deadline: float
    answers: dict[int, dict[str, int] | None] = field(default_factory=dict)


class Watchdog:
    """Names every fault outstanding longer than `stall_warn` seconds, once, with every node's state."""

    def __init__(self, node: int, nnodes: int, dsm: DsmNode, stall_warn: float,
                 ask: Callable[[int, int], None], say: Callable[[str], None],
                 quiet: Callable[[], bool] = lambda: False) -> None:
        self.node, self.nnodes, self.dsm, self.stall_warn = node, nnodes, dsm, stall_warn
        self._ask, self._say = ask, say
        # True once the run is ending or the DSM has failed: its own line names the cause (a lost
        # peer), and a stall line said beside it would only repeat it.
        self._quiet = quiet
        self._lock = threading.Lock()
        self._queries: dict[int, _Query] = {}
        self._named: set[tuple[int, int]] = set()     # (vcpu, page) of stalls already named
        self._next_qid = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def answered(self, qid: int, node: int, state: dict[str, Any]) -> None:
        """A PAGE_STATE for one of our queries (any thread)."""
        with self._lock:
            query = self._queries.get(qid)
            if query is None or query.stall["page"] != state["page"] or node == self.node:
                return         # late, for another page, or not ours to trust: the line is said already
            query.answers[node] = state
        if len(query.answers) == self.nnodes - 1:
            self._finish(qid)

    def _run(self) -> None:
        period = min(MAX_POLL_SECONDS, self.stall_warn / 4)
        while not self._stop.wait(period):
            self.check()

    def check(self) -> None:
        """One look: ask about new stalls, say the lines whose answers are in or overdue."""
        stalls = self.dsm.outstanding(self.stall_warn)
        current = {(s["vcpu"], s["page"]) for s in stalls}
        with self._lock:
            self._named &= current          # an ended stall may be named again if it comes back
        for stall in stalls:
            key = (stall["vcpu"], stall["page"])
            with self._lock:
                if key in self._named:
                    continue
                self._named.add(key)
                qid = self._next_qid
                self._next_qid = (qid + 1) & 0xFFFFFFFF or 1
                self._queries[qid] = _Query(stall, local_state(self.dsm, stall["page"]),
                                            time.monotonic() + ANSWER_SECONDS)
            if self.nnodes == 1:
                self._finish(qid)
                continue
            try:
                self._ask(qid, stall["page"])
            except OSError:
                pass           # the line still goes out at the deadline, saying who did not answer
        now = time.monotonic()
        with self._lock:
            overdue = [qid for qid, q in self._queries.items() if q.deadline <= now]
        for qid in overdue:
            self._finish(qid)

    def _finish(self, qid: int) -> None:
        with self._lock:
            query = self._queries.pop(qid, None)
        if query is None:
            return
        if self._quiet():
            return
        others = {n: query.answers.get(n) for n in range(self.nnodes) if n != self.node}
        self._say(stall_line(self.node, self.nnodes, query.stall, query.here, others))


class PageQueries:
    """The control-channel side of the watchdog: asks, answers and relays PAGE_QUERY / PAGE_STATE.

    Node k has one channel, to node 0; node 0 has one to every other node. So
    node k's question goes to node 0, which answers for itself and passes it
    on to the others; their answers come back through node 0 to node k.
    """

    def __init__(self, node: int, nnodes: int, npages: int, channels: dict[int, Any],
                 dsm: Callable[[], DsmNode | None]) -> None:
        self.node, self.nnodes, self.npages = node, nnodes, npages
        self.channels = channels
        self.dsm = dsm
        self.watchdog: Watchdog | None = None     # where answers to this node's questions go

    def ask(self, qid: int, page: int) -> None:
        question = encode_query(self.node, qid, page)
        for channel in list(self.channels.values()):
            channel.send(question)

    def on_query(self, channel: Any, frame: Frame) -> None:
        asker, qid, page = decode_query(frame, channel.peer, self.nnodes, self.npages)
        dsm = self.dsm()
        if dsm is None:
            raise ControlError(f"node {channel.peer} asked about page {page:#x} before node {self.node}'s DSM ran")
        channel.send(encode_state(asker, self.node, qid, page, dsm.page_info(page)))
        if self.node == 0:        # pass node k's question on to the nodes it has no channel to
            for peer, other in list(self.channels.items()):
                if peer != asker:
                    other.send(_as_sent(frame))

    def on_state(self, frame: Frame, peer: int) -> None:
        asker, node, qid, state = decode_state(frame, peer, self.nnodes, self.npages)
        if asker == self.node:
            if self.watchdog is not None:
                self.watchdog.answered(qid, node, state)
        elif self.node == 0 and asker in self.channels:
            self.channels[asker].send(_as_sent(frame))
        else:
            raise ControlError(f"node {peer} sent node {self.node} an answer meant for node {asker}")


def _as_sent(frame: Frame) -> bytes:
    """A received frame as it was sent, to relay it unchanged."""
    return control.encode(frame.type, frame.payload, frame.flags)
