"""Deterministic simulator: N engines (engine.c through cffi) in one process.

Links are FIFO per (sender, receiver) pair; a seeded scheduler picks which
link delivers next, when a faulting thread starts or retries, so messages
are reordered across links and faults interleave with the traffic. Actions
are performed as the runtime would: MAP/ZAP/WRPROTECT update a per-node
access table, SEND enqueues (a reply with IVY_REPLY_DATA carries the
sender's bytes), PARK/UNPARK hold and re-deliver. Page bytes are one integer
per node, with a shadow copy of the last value written.

After every engine call the simulator checks the protocol's invariants and
that the reference model (tests/dsm/model.py) made the same decision; at the
end it runs to quiescence and demands that every fault completed.

Replay one run:  python -m tests.dsm.sim --seed 1234 --nodes 5 --options ivy,central
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from tests.dsm.engine_ffi import (
    ACT_DONE, ACT_MAP_RO, ACT_MAP_RW, ACT_PARK, ACT_SEND, ACT_UNPARK, ACT_WAKE, ACT_WRPROTECT,
    ACT_ZAP, IDLE, MANAGERS, MGR_CENTRAL, MGR_DYNAMIC, MGR_FIXED, MSG_NAMES, MSG_READ, MSG_REPLY,
    MSG_WRITE, READ_GIANTVM, READ_IVY, READ_OWNERSHIP, REPLY_DATA, REPLY_OWNERSHIP, Action, CEngine, Msg,
    describe,
)
from tests.dsm.model import ModelError, ModelNode, nodes_of

ACCESS_OF_STATE = {0: 0, 1: 0, 2: 1, 3: 2}  # INITIAL, INVALID, SHARED, MODIFIED
ALL_OPTIONS = [f"{r},{m}" for r in READ_OWNERSHIP for m in MANAGERS]


EngineFactory = Callable[[int, int, int, int, int], Any]


class SimFailure(AssertionError):
    """An invariant broke, the engine and the model disagreed, or a fault never completed."""


def parse_options(text: str) -> tuple[int, int]:
    """'ivy,central' -> (read_ownership, manager); either part may be omitted."""
    read_ownership, manager = READ_GIANTVM, MGR_DYNAMIC
    for word in filter(None, (w.strip() for w in text.split(","))):
        if word in READ_OWNERSHIP:
            read_ownership = READ_OWNERSHIP[word]
        elif word in MANAGERS:
            manager = MANAGERS[word]
        else:
            raise ValueError(f"unknown option {word!r}: expected one of "
                             f"{', '.join([*READ_OWNERSHIP, *MANAGERS])}")
    return read_ownership, manager


@dataclass
class Faulter:
    """One guest thread blocked on one access."""

    node: int
    page: int
    write: bool
    started: int  # step number, for the report


@dataclass
class Stats:
    steps: int = 0
    accesses: int = 0
    faults: int = 0
    spurious: int = 0
    messages: dict[int, int] = field(default_factory=dict)
    data_replies: int = 0
    elided_replies: int = 0
    parked: int = 0
    hops: int = 0
    done: int = 0


class Simulation:
    def __init__(self, seed: int, nodes: int, options: str = "giantvm,dynamic",
                 faults: int = 40, compare_model: bool = True, npages: int | None = None,
                 loaded: bool = True, engine_factory: EngineFactory | None = None) -> None:
        """A run is a function of its arguments; `seed` drives every random choice.

        npages (default: 1..4 from the seed), loaded (node 0's loader wrote some
        pages) and engine_factory (an engine other than engine.c, e.g. a broken
        one to prove the checks catch it) are for hand-written scenarios.
        """
        if not 2 <= nodes <= 64:
            raise ValueError(f"nodes must be 2..64, got {nodes}")
        self.seed, self.nnodes, self.options = seed, nodes, options
        self.rng = random.Random(seed)
        self.npages = npages if npages is not None else self.rng.randint(1, 4)
        read_ownership, manager = parse_options(options)
        factory: EngineFactory = engine_factory or CEngine
        self.engines = [factory(n, nodes, self.npages, read_ownership, manager)
                        for n in range(nodes)]
        self.models = ([ModelNode(n, nodes, self.npages, read_ownership, manager)
                        for n in range(nodes)] if compare_model else None)
        self.links: dict[tuple[int, int], deque[tuple[Msg, int | None]]] = {
            (a, b): deque() for a in range(nodes) for b in range(nodes) if a != b}
        self.access = [[0] * self.npages for _ in range(nodes)]
        self.ram = [[0] * self.npages for _ in range(nodes)]
        self.shadow = [0] * self.npages
        self.parked: dict[tuple[int, int], list[Msg]] = {}
        # UNPARKed requests wait for their own scheduling turn: a runtime that
        # re-delivered them before the woken threads ran could hand a hot page
        # round a ring of nodes forever without any access completing.
        self.unparked: deque[tuple[int, list[Msg]]] = deque()
        self.waiting: dict[tuple[int, int], list[Faulter]] = {}
        self.ready: list[Faulter] = []
        self.faults_left = faults
        self.next_value = 1
        self.stats = Stats()
        self.trace: deque[str | tuple[int, str | Msg, list[Action]]] = deque(maxlen=60)
        # (event, pending, owner, state) before each engine call: which transitions ran.
        self.coverage: dict[tuple[str, int, bool, int], int] = {}
        self.max_threads = self.rng.randint(1, 3)  # blocked threads per node
        self.spurious_rate = self.rng.choice([0.0, 0.1])
        # Node 0's loader wrote some pages before start (version 1).
        for page in range(self.npages):
            if loaded and self.rng.random() < 0.3:
                self.load(page)

    def load(self, page: int) -> None:
        """Node 0's loader writes `page` before any event (version 1)."""
        value = self._new_value()
        self.ram[0][page] = value
        self.shadow[page] = value
        self.engines[0].set_version(page, 1)
        if self.models:
            self.models[0].set_version(page, 1)

    # -- reporting ----------------------------------------------------------
    def replay_command(self) -> str:
        return (f"python -m tests.dsm.sim --seed {self.seed} --nodes {self.nnodes} "
                f"--options {self.options}")

    def fail(self, why: str) -> SimFailure:
        lines = [f"{why}", f"replay: {self.replay_command()}", "last events:"]
        for t in self.trace:
            if isinstance(t, str):
                lines.append(f"  {t}")
            else:
                node, what, actions = t
                lines.append(f"  n{node} {self._what(node, what)}: "
                             + ", ".join(describe(a) for a in actions))
        return SimFailure("\n".join(lines))

    @staticmethod
    def _what(node: int, what: str | Msg) -> str:
        if isinstance(what, str):
            return what
        return "got " + describe(Action(ACT_SEND, what.page, node, what))

    def _new_value(self) -> int:
        value = self.next_value
        self.next_value += 1
        return value

    # -- driving one engine ---------------------------------------------------
    def _call(self, node: int, event: str, page: int, msg: Msg | None, c_call,
              model_call) -> list[Action]:
        before = self.engines[node].page(page)
        key = (event, before.pending, before.owner, before.state)
        self.coverage[key] = self.coverage.get(key, 0) + 1
        what: str | Msg = msg if msg is not None else f"{event} p{page}"
        try:
            actions = c_call()
        except AssertionError as exc:  # EngineAssertion, or a Python engine's own check
            raise self.fail(f"node {node} {self._what(node, what)}: {exc}") from None
        self.trace.append((node, what, actions))
        if self.models is not None:
            try:
                expected = model_call()
            except ModelError as exc:
                raise self.fail(f"node {node} {self._what(node, what)}: model: {exc}") from None
            if actions != expected:
                raise self.fail(
                    f"node {node} {self._what(node, what)}: engine and model disagree\n"
                    f"  engine: {[describe(a) for a in actions]}\n"
                    f"  model:  {[describe(a) for a in expected]}")
            got, want = self.engines[node].page(page), self.models[node].page(page)
            if got != want:
                raise self.fail(f"node {node} {self._what(node, what)}: page state differs\n"
                                f"  engine: {got}\n  model:  {want}")
        return actions

    def _fault(self, f: Faulter) -> None:
        self.stats.faults += 1
        event = "write fault" if f.write else "read fault"
        self.waiting.setdefault((f.node, f.page), []).append(f)
        actions = self._call(f.node, event, f.page, None,
                             lambda: self.engines[f.node].fault(f.page, f.write),
                             lambda: self.models[f.node].fault(f.page, f.write))  # type: ignore[index]
        self._perform(f.node, f.page, actions)

    def _deliver(self, node: int, msg: Msg, payload: int | None) -> None:
        if msg.type == MSG_REPLY and msg.flags & REPLY_DATA:
            assert payload is not None
            self.ram[node][msg.page] = payload  # the runtime copies bytes before the engine runs
        actions = self._call(node, MSG_NAMES[msg.type], msg.page, msg, lambda: self.engines[node].message(msg),
                             lambda: self.models[node].message(msg))  # type: ignore[index]
        self._perform(node, msg.page, actions)

    def _perform(self, node: int, page: int, actions: list[Action]) -> None:
        unpark = False
        for a in actions:
            if a.page != page:
                raise self.fail(f"node {node}: action {describe(a)} for another page")
            if a.kind == ACT_SEND:
                assert a.msg is not None
                if a.msg.sender != node or a.to == node:
                    raise self.fail(f"node {node}: bad send {describe(a)}")
                payload = None
                if a.msg.type == MSG_REPLY:
                    if a.msg.flags & REPLY_DATA:
                        payload = self.ram[node][page]
                        self.stats.data_replies += 1
                    else:
                        self.stats.elided_replies += 1
                    self.stats.hops += a.msg.hops
                self.stats.messages[a.msg.type] = self.stats.messages.get(a.msg.type, 0) + 1
                self.links[(node, a.to)].append((a.msg, payload))
            elif a.kind == ACT_MAP_RO:
                self.access[node][page] = 1
                self._wake(node, page)
            elif a.kind == ACT_MAP_RW:
                self.access[node][page] = 2
                self._wake(node, page)
            elif a.kind == ACT_ZAP:
                self.access[node][page] = 0
            elif a.kind == ACT_WRPROTECT:
                if self.access[node][page] != 2:
                    raise self.fail(f"node {node}: WRPROTECT of p{page} without write access")
                self.access[node][page] = 1
            elif a.kind == ACT_WAKE:
                self.stats.spurious += 1
                self._wake(node, page)
            elif a.kind == ACT_PARK:
                assert a.msg is not None
                if a.msg.type not in (MSG_READ, MSG_WRITE):
                    raise self.fail(f"node {node}: parked a {describe(a)}")
                self.stats.parked += 1
                self.parked.setdefault((node, page), []).append(a.msg)
            elif a.kind == ACT_UNPARK:
                unpark = True
            elif a.kind == ACT_DONE:
                self.stats.done += 1
            else:
                raise self.fail(f"node {node}: unknown action {a}")
        self._check(page)
        if unpark and (node, page) in self.parked:
            self.unparked.append((node, self.parked.pop((node, page))))

    def _redeliver(self) -> None:
        node, msgs = self.unparked.popleft()
        for msg in msgs:
            self._deliver(node, msg, None)

    def _wake(self, node: int, page: int) -> None:
        self.ready.extend(self.waiting.pop((node, page), []))

    # -- guest threads --------------------------------------------------------
    def _attempt(self, f: Faulter) -> None:
        """A thread (re)tries its access: done if allowed, else it faults."""
        need = 2 if f.write else 1
        if self.access[f.node][f.page] >= need and self.rng.random() >= self.spurious_rate:
            self.stats.accesses += 1
            if f.write:
                value = self._new_value()
                self.ram[f.node][f.page] = value
                self.shadow[f.page] = value
                self.trace.append(f"n{f.node} wrote p{f.page}={value}")
            elif self.ram[f.node][f.page] != self.shadow[f.page]:
                raise self.fail(f"node {f.node} read p{f.page}={self.ram[f.node][f.page]}, "
                                f"last written {self.shadow[f.page]}")
            self._check(f.page)
            return
        self._fault(f)

    def _blocked_threads(self, node: int) -> int:
        count = sum(1 for f in self.ready if f.node == node)
        return count + sum(len(v) for (n, _), v in self.waiting.items() if n == node)

    # -- hand-driven scenarios (unit tests) ---------------------------------------
    def access_now(self, node: int, page: int, write: bool) -> Faulter:
        """A guest thread on `node` touches `page` now; returns it (see `blocked`)."""
        f = Faulter(node, page, write, self.stats.steps)
        self._attempt(f)
        return f

    def blocked(self, f: Faulter) -> bool:
        return any(f in v for v in self.waiting.values()) or f in self.ready

    def redeliver_unparked(self) -> None:
        """The runtime re-delivers the requests it was told to UNPARK."""
        while self.unparked:
            self._redeliver()

    def deliver_one(self, src: int, dst: int) -> Msg:
        """Deliver the oldest message on link src->dst."""
        if not self.links[(src, dst)]:
            raise self.fail(f"nothing in flight from {src} to {dst}")
        msg, payload = self.links[(src, dst)].popleft()
        self._deliver(dst, msg, payload)
        return msg

    def retry_ready(self) -> None:
        """Every woken thread retries its access once."""
        ready, self.ready = self.ready, []
        for f in ready:
            self._attempt(f)

    def in_flight(self) -> list[tuple[int, int, Msg]]:
        return [(a, b, m) for (a, b), q in self.links.items() for m, _ in q]

    def settle(self) -> None:
        """Deliver everything and retry woken threads, in a fixed order, to quiescence."""
        for _ in range(100000):
            busy = [k for k, q in self.links.items() if q]
            if self.ready:
                self._attempt(self.ready.pop(0))
            elif self.unparked:
                self._redeliver()
            elif busy:
                self.deliver_one(*busy[0])
            else:
                return
        raise self.fail("settle: no quiescence")

    # -- invariants -----------------------------------------------------------
    def _check(self, page: int) -> None:
        states = [e.page(page) for e in self.engines]
        owners = [n for n, st in enumerate(states) if st.owner]
        moving = [m for q in self.links.values() for m, _ in q
                  if m.page == page and m.type == MSG_REPLY and m.flags & REPLY_OWNERSHIP]
        if len(owners) + len(moving) != 1:
            raise self.fail(f"p{page}: {len(owners)} owners {owners} and {len(moving)} "
                            "ownership replies in flight")
        holders = [n for n in range(self.nnodes) if self.access[n][page]]
        writers = [n for n in holders if self.access[n][page] == 2]
        if writers and holders != writers:
            raise self.fail(f"p{page}: node {writers[0]} writes while {holders} have access")
        for n, st in enumerate(states):
            if ACCESS_OF_STATE[st.state] != self.access[n][page]:
                raise self.fail(f"node {n} p{page}: engine state {st} but mapping gives "
                                f"access {self.access[n][page]}")
            if self.access[n][page] and self.ram[n][page] != self.shadow[page]:
                raise self.fail(f"node {n} p{page}: readable stale bytes "
                                f"{self.ram[n][page]} != {self.shadow[page]}")
        if owners:
            covered = nodes_of(states[owners[0]].copyset)
        else:
            covered = nodes_of(moving[0].copyset) | {moving[0].requester}
        if not set(holders) <= covered:
            raise self.fail(f"p{page}: copyset {sorted(covered)} misses holders {holders}")
        by_version: dict[int, int] = {}
        for n, st in enumerate(states):
            v = st.version
            if by_version.setdefault(v, self.ram[n][page]) != self.ram[n][page]:
                raise self.fail(f"p{page}: version {v} with different bytes on different nodes")

    # -- scheduler --------------------------------------------------------------
    def step(self) -> bool:
        """Run one scheduling decision; False once nothing is left to do."""
        busy_links = [k for k, q in self.links.items() if q]
        choices: list[str] = []
        if busy_links:
            choices += ["deliver"] * 4
        if self.ready:
            choices += ["retry"] * 2
        if self.unparked:
            choices += ["unpark"]
        if self.faults_left > 0:
            choices += ["fault"] * 2
        if not choices:
            return False
        self.stats.steps += 1
        pick = self.rng.choice(choices)
        if pick == "deliver":
            link = self.rng.choice(busy_links)
            msg, payload = self.links[link].popleft()
            self._deliver(link[1], msg, payload)
        elif pick == "unpark":
            self._redeliver()
        elif pick == "retry":
            f = self.ready.pop(self.rng.randrange(len(self.ready)))
            self._attempt(f)
        else:
            node = self.rng.randrange(self.nnodes)
            if self._blocked_threads(node) >= self.max_threads:
                return True
            self.faults_left -= 1
            page = self.rng.randrange(self.npages)
            # Often every node hammers page 0 at once.
            if self.rng.random() < 0.3:
                page = 0
            self._attempt(Faulter(node, page, self.rng.random() < 0.5, self.stats.steps))
        return True

    def run(self) -> Stats:
        limit = 5000 + 200 * self.faults_left * self.nnodes
        while self.step():
            if self.stats.steps > limit:
                raise self.fail(f"no quiescence after {limit} steps")
        stuck = [f for v in self.waiting.values() for f in v]
        if stuck:
            raise self.fail(f"faults never completed: {stuck}")
        if any(self.parked.values()) or self.unparked:
            raise self.fail(f"requests still parked: {self.parked}")
        for n, e in enumerate(self.engines):
            for page in range(self.npages):
                if e.page(page).pending != IDLE:
                    raise self.fail(f"node {n} p{page} still pending at quiescence: {e.page(page)}")
        return self.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay or explore DSM simulator seeds.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--options", default="giantvm,dynamic",
                        help=f"read ownership and manager, e.g. {', '.join(ALL_OPTIONS)}")
    parser.add_argument("--faults", type=int, default=40)
    parser.add_argument("--no-model", action="store_true", help="skip the reference model")
    args = parser.parse_args(argv)
    try:
        parse_options(args.options)
        if not 2 <= args.nodes <= 64:
            raise ValueError(f"--nodes must be 2..64, got {args.nodes}")
    except ValueError as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return 2
    for seed in range(args.seed, args.seed + args.seeds):
        sim = Simulation(seed, args.nodes, args.options, args.faults, not args.no_model)
        try:
            stats = sim.run()
        except SimFailure as exc:
            print(f"FAIL seed {seed}: {exc}", file=sys.stderr)
            return 1
        if args.seeds == 1:
            msgs = ", ".join(f"{MSG_NAMES[t]}={n}" for t, n in sorted(stats.messages.items()))
            print(f"ok: {stats.steps} steps, {stats.accesses} accesses, {stats.faults} faults "
                  f"({stats.spurious} spurious), messages {msgs}, replies with data "
                  f"{stats.data_replies} / elided {stats.elided_replies}, parked {stats.parked}, "
                  f"hops {stats.hops}")
    if args.seeds > 1:
        print(f"ok: {args.seeds} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
