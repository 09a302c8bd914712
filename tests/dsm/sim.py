"""Deterministic simulator: N engines (engine.c through cffi) in one process.

Links are FIFO per (sender, receiver) pair; a seeded scheduler picks which
link delivers next, when a faulting thread starts or retries, so messages
are reordered across links and faults interleave with the traffic. Actions
are performed as the runtime would: MAP/ZAP/WRPROTECT update a per-node
access table, SEND enqueues (a reply with IVY_REPLY_DATA carries the
sender's bytes), PARK/UNPARK hold and re-deliver. Page bytes are one integer
per node, with a shadow copy of the last value written.

With the `hold` option every owner's completed fault starts a hold window
(engine.h): the scheduler ends it at a random later step (HOLD_EXPIRED), or
after the woken writer stored (STORE_SEEN), and requests arriving meanwhile
are parked by the engine like any other.

After every engine call the simulator checks the protocol's invariants and
that the reference model (tests/dsm/model.py) took the same table row, made
the same decision and reached the same state; at the end it runs to
quiescence and demands that every fault completed. `coverage` counts the
table rows each run took.

The sweep (what `make check-engine` runs):  python -m tests.dsm.sim
Replay one run:  python -m tests.dsm.sim --seed 1234 --nodes 5 --options ivy,central
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from tests.dsm.engine_ffi import (
    ACT_DONE, ACT_HOLD, ACT_MAP_RO, ACT_MAP_RW, ACT_PARK, ACT_SEND, ACT_UNPARK, ACT_WAKE,
    ACT_WRPROTECT, ACT_ZAP, EV_HOLD_EXPIRED, EV_STORE_SEEN, HOLDING, IDLE, INITIAL, INVALID,
    MODIFIED, MSG_NAMES, MSG_READ, MSG_REPLY, MSG_WRITE, REPLY_DATA, REPLY_OWNERSHIP, SHARED,
    Action, CEngine, Msg, c_rows, describe,
)
from tests.dsm.model import ROWS as MODEL_ROWS
from tests.dsm.model import ModelError, ModelNode, nodes_of
from tests.dsm.options import ALL_OPTIONS, EngineOptions, parse_options
from tests.dsm.report import action_diff, state_diff

ACCESS_OF_STATE = {INITIAL: 0, INVALID: 0, SHARED: 1, MODIFIED: 2}
ROW_NAMES = [r.name for r in c_rows()]
__all__ = ["ALL_OPTIONS", "ROW_NAMES", "Simulation", "SimFailure", "parse_options"]


EngineFactory = Callable[..., Any]


class SimFailure(AssertionError):
    """An invariant broke, the engine and the model disagreed, or a fault never completed."""


@dataclass
class Faulter:
    """One guest thread blocked on one access."""

    node: int
    page: int
    write: bool
    started: int  # step number, for the report
    write_soon: bool = False  # a read the runtime's predictor expects a write to follow


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
    holds: int = 0


class Simulation:
    def __init__(self, seed: int, nodes: int, options: str = "giantvm,dynamic",
                 faults: int = 40, compare_model: bool = True, npages: int | None = None,
                 loaded: bool = True, engine_factory: EngineFactory | None = None,
                 mutant: str | None = None, map_owned: bool | None = None) -> None:
        """A run is a function of its arguments; `seed` drives every random choice.

        npages (default: 1..4 from the seed), loaded (node 0's loader wrote
        some pages) and map_owned (node 0 maps what it owns up front; default:
        from the seed) have CLI flags. engine_factory (an engine other than
        engine.c) and mutant (engine.c with one handler broken, see
        engine_ffi.MUTANTS) are for tests proving the checks catch bugs; such
        a run, or one driven by hand (access_now, deliver_one, ...), replays
        from its test, not from the CLI.
        """
        if not 2 <= nodes <= 64:
            raise ValueError(f"nodes must be 2..64, got {nodes}")
        self.seed, self.nnodes = seed, nodes
        self.opts = parse_options(options)
        self.options = self.opts.spelled()
        self.faults = faults
        self.rng = random.Random(seed)
        self.pages_given = npages
        self.loaded = loaded
        self.npages = npages if npages is not None else self.rng.randint(1, 4)
        self.scripted = engine_factory is not None
        self.mutant = mutant
        o = self.opts
        if engine_factory is None:
            self.engines = [CEngine(n, nodes, self.npages, o.read_ownership, o.manager, o.hold,
                                    o.first_touch, o.migratory, o.prefetch, mutant=mutant)
                            for n in range(nodes)]
        else:
            self.engines = [engine_factory(n, nodes, self.npages, o.read_ownership, o.manager,
                                           o.hold, o.first_touch, o.migratory) for n in range(nodes)]
        self.models = ([ModelNode(n, nodes, self.npages, o.read_ownership, o.manager, o.hold,
                                  o.first_touch, o.migratory, o.prefetch) for n in range(nodes)]
                       if compare_model else None)
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
        # The runtime's prefetches: a read expected soon, with no faulter yet.
        self.prefetches_left = faults // 2 if self.opts.prefetch else 0
        self.next_value = 1
        self.stats = Stats()
        self.trace: deque[str | tuple[int, str | Msg, list[Action]]] = deque(maxlen=60)
        # Table rows taken, by name (engine.c's ROWS).
        self.coverage: Counter[str] = Counter()
        # Hold windows running (node, page), and writers that stored inside theirs.
        self.holding: set[tuple[int, int]] = set()
        self.watching: set[tuple[int, int]] = set()
        self.stored: set[tuple[int, int]] = set()
        self.max_threads = self.rng.randint(1, 3)  # blocked threads per node
        self.spurious_rate = self.rng.choice([0.0, 0.1])
        # Node 0's loader wrote some pages before start (version 1).
        for page in range(self.npages):
            if loaded and self.rng.random() < 0.3:
                self.load(page)
        self.map_owned_given = map_owned
        self.map_owned = map_owned if map_owned is not None else self.rng.random() < 0.5
        if self.map_owned:
            for page in range(self.npages):
                self._map_owned(page)

    def _map_owned(self, page: int) -> None:
        """Node 0's runtime maps its INITIAL page writable before start (DsmOptions.map_owned)."""
        def mapped(node: Any) -> list[Action]:
            if not node.map_owned(page):
                raise self.fail(f"node 0 could not map p{page} up front")
            return []
        self._call(0, "map owned", page, None, lambda: mapped(self.engines[0]),
                   lambda: mapped(self.models[0]))  # type: ignore[index]
        self.access[0][page] = 2
        self._check(page)

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
        """The command that reruns exactly this run."""
        if self.scripted:
            test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
            return f"python -m pytest -q '{test}'" if test else "(a scripted run: rerun its caller)"
        words = [f"--seed {self.seed}", f"--nodes {self.nnodes}", f"--options {self.options}",
                 f"--faults {self.faults}"]
        if self.pages_given is not None:
            words.append(f"--pages {self.pages_given}")
        if not self.loaded:
            words.append("--no-load")
        if self.models is None:
            words.append("--no-model")
        if self.mutant:
            words.append(f"--mutant {self.mutant}")
        if self.map_owned_given is not None:
            words.append("--map-owned" if self.map_owned_given else "--no-map-owned")
        return "python -m tests.dsm.sim " + " ".join(words)

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
        what: str | Msg = msg if msg is not None else f"{event} p{page}"
        try:
            actions = c_call()
        except AssertionError as exc:  # EngineAssertion, or a Python engine's own check
            raise self.fail(f"node {node} {self._what(node, what)}: {exc}") from None
        engine = self.engines[node]
        row = getattr(engine, "row", -1)
        name = ROW_NAMES[row] if 0 <= row < len(ROW_NAMES) else "?"
        self.coverage[name] += 1
        self.trace.append((node, what, actions))
        if self.models is not None:
            model = self.models[node]
            try:
                expected = model_call()
            except ModelError as exc:
                raise self.fail(f"node {node} {self._what(node, what)}: engine row {name}; "
                                f"model: {exc}") from None
            where = f"node {node} {self._what(node, what)}"
            model_name = MODEL_ROWS[model.row].name
            if row >= 0 and model_name != name:
                raise self.fail(f"{where}: engine took row {name}, model took row {model_name}")
            if actions != expected:
                raise self.fail(f"{where}: row {name}: engine and model disagree\n  "
                                + "\n  ".join(action_diff(actions, expected)))
            diff = state_diff(engine.page(page), model.page(page))
            if diff:
                raise self.fail(f"{where}: row {name}: page state differs\n  " + "\n  ".join(diff))
        return actions

    def _fault(self, f: Faulter) -> None:
        self.stats.faults += 1
        event = "write fault" if f.write else "write-soon read fault" if f.write_soon else "read fault"
        self.waiting.setdefault((f.node, f.page), []).append(f)
        actions = self._call(f.node, event, f.page, None,
                             lambda: self.engines[f.node].fault(f.page, f.write, f.write_soon),
                             lambda: self.models[f.node].fault(f.page, f.write, f.write_soon))  # type: ignore[index]
        self._perform(f.node, f.page, actions)

    def _prefetch(self, node: int, page: int) -> None:
        actions = self._call(node, "prefetch", page, None,
                             lambda: self.engines[node].prefetch(page),
                             lambda: self.models[node].prefetch(page))  # type: ignore[index]
        self._perform(node, page, actions)

    def _deliver(self, node: int, msg: Msg, payload: int | None) -> None:
        if msg.type == MSG_REPLY and msg.flags & REPLY_DATA:
            assert payload is not None
            self.ram[node][msg.page] = payload  # the runtime copies bytes before the engine runs
        actions = self._call(node, MSG_NAMES[msg.type], msg.page, msg, lambda: self.engines[node].message(msg),
                             lambda: self.models[node].message(msg))  # type: ignore[index]
        self._perform(node, msg.page, actions)

    def _hold_event(self, node: int, page: int, event: int) -> None:
        """The runtime's clock or watched word ends a hold that is still running."""
        if self.engines[node].page(page).pending != HOLDING:
            return  # a late timer: the hold already ended (or a fault restarted it)
        name = "hold expired" if event == EV_HOLD_EXPIRED else "store seen"
        actions = self._call(node, name, page, None,
                             lambda: self.engines[node].hold_event(page, event),
                             lambda: self.models[node].hold_event(page, event))  # type: ignore[index]
        self._perform(node, page, actions)

    def _perform(self, node: int, page: int, actions: list[Action]) -> None:
        unpark = False
        if any(a.kind == ACT_HOLD for a in actions):
            self.holding.add((node, page))
            self.stored.discard((node, page))
            # The runtime watches the word a woken writer faulted on.
            if any(a.kind == ACT_MAP_RW for a in actions):
                self.watching.add((node, page))
            else:
                self.watching.discard((node, page))
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
            elif a.kind == ACT_HOLD:
                self.stats.holds += 1
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
                if (f.node, f.page) in self.watching:
                    self.watching.discard((f.node, f.page))
                    self.stored.add((f.node, f.page))
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
    def access_now(self, node: int, page: int, write: bool, write_soon: bool = False) -> Faulter:
        """A guest thread on `node` touches `page` now (write_soon: a hinted read); returns it (see `blocked`)."""
        self.scripted = True
        f = Faulter(node, page, write, self.stats.steps, write_soon)
        self._attempt(f)
        return f

    def blocked(self, f: Faulter) -> bool:
        return any(f in v for v in self.waiting.values()) or f in self.ready

    def redeliver_unparked(self) -> None:
        """The runtime re-delivers the requests it was told to UNPARK."""
        self.scripted = True
        while self.unparked:
            self._redeliver()

    def deliver_one(self, src: int, dst: int) -> Msg:
        """Deliver the oldest message on link src->dst."""
        self.scripted = True
        if not self.links[(src, dst)]:
            raise self.fail(f"nothing in flight from {src} to {dst}")
        msg, payload = self.links[(src, dst)].popleft()
        self._deliver(dst, msg, payload)
        return msg

    def retry_ready(self) -> None:
        """Every woken thread retries its access once."""
        self.scripted = True
        ready, self.ready = self.ready, []
        for f in ready:
            self._attempt(f)

    def end_holds(self) -> None:
        """Every hold window ends: by the writer's store where it stored, else by the clock."""
        self.scripted = True
        for node, page in sorted(self.stored):
            self.stored.discard((node, page))
            self._hold_event(node, page, EV_STORE_SEEN)
        for node, page in sorted(self.holding):
            self.holding.discard((node, page))
            self._hold_event(node, page, EV_HOLD_EXPIRED)

    def in_flight(self) -> list[tuple[int, int, Msg]]:
        return [(a, b, m) for (a, b), q in self.links.items() for m, _ in q]

    def settle(self) -> None:
        """Deliver everything and retry woken threads, in a fixed order, to quiescence."""
        self.scripted = True
        for _ in range(100000):
            busy = [k for k, q in self.links.items() if q]
            if self.ready:
                self._attempt(self.ready.pop(0))
            elif self.unparked:
                self._redeliver()
            elif busy:
                self.deliver_one(*busy[0])
            elif self.stored or self.holding:
                self.end_holds()
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
        if self.holding:
            choices += ["expire"]
        if self.stored:
            choices += ["store"] * 2
        if self.prefetches_left > 0:
            choices += ["prefetch"]
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
        elif pick in ("expire", "store"):
            pool = self.holding if pick == "expire" else self.stored
            node, page = self.rng.choice(sorted(pool))
            pool.discard((node, page))
            self._hold_event(node, page, EV_HOLD_EXPIRED if pick == "expire" else EV_STORE_SEEN)
        elif pick == "prefetch":
            self.prefetches_left -= 1
            self._prefetch(self.rng.randrange(self.nnodes), self.rng.randrange(self.npages))
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
            write = self.rng.random() < 0.5
            # The runtime hints some reads (any option: without migratory pages the engine ignores it).
            self._attempt(Faulter(node, page, write, self.stats.steps, not write and self.rng.random() < 0.5))
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


NODE_COUNTS = range(2, 9)


def sweep(seeds: int, first_seed: int = 0, faults: int = 40, compare_model: bool = True,
          options: list[str] | None = None, node_counts: range | list[int] = NODE_COUNTS,
          mutant: str | None = None) -> Counter[str]:
    """Run `seeds` seeds of every option combination on every node count.
    Returns the rows taken; raises SimFailure on the first failing run."""
    coverage: Counter[str] = Counter()
    configs = [(spelled, nodes) for spelled in options or ALL_OPTIONS for nodes in node_counts]
    for i, (spelled, nodes) in enumerate(configs):
        # Each configuration gets seeds of its own: the seed also picks pages,
        # thread counts and spurious re-faults, which must vary across the sweep.
        for seed in range(first_seed + i * seeds, first_seed + (i + 1) * seeds):
            sim = Simulation(seed, nodes, spelled, faults, compare_model, mutant=mutant)
            sim.run()
            coverage.update(sim.coverage)
    return coverage


def uncovered(coverage: Counter[str]) -> list[str]:
    return [name for name in ROW_NAMES if not coverage[name]]


def coverage_report(coverage: Counter[str]) -> str:
    width = max(len(n) for n in ROW_NAMES)
    return "\n".join(f"  {name:<{width}} {coverage[name]:8d}" for name in ROW_NAMES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Without --nodes/--options: sweep every option combination on 2-8 nodes and "
                    "fail if a table row is never taken (make check-engine). With them: run "
                    "(or replay) seeds of one configuration.")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per configuration (sweep: 3; one configuration: 1)")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--options", default=None,
                        help=f"comma-separated words, e.g. ivy,central,hold (all: {len(ALL_OPTIONS)} "
                             "combinations of giantvm|ivy, dynamic|central|fixed, hold, touch-write, migratory, prefetch)")
    parser.add_argument("--faults", type=int, default=40)
    parser.add_argument("--pages", type=int, default=None, help="pages (default: 1-4 from the seed)")
    parser.add_argument("--no-load", action="store_true", help="node 0's loader wrote no page")
    parser.add_argument("--no-model", action="store_true", help="skip the reference model")
    parser.add_argument("--mutant", default=None, help="engine.c with one handler broken (tests)")
    parser.add_argument("--map-owned", action=argparse.BooleanOptionalAction, default=None,
                        help="node 0 maps what it owns up front (default: from the seed)")
    args = parser.parse_args(argv)
    try:
        if args.options is not None:
            parse_options(args.options)
        if args.nodes is not None and not 2 <= args.nodes <= 64:
            raise ValueError(f"--nodes must be 2..64, got {args.nodes}")
        if args.pages is not None and not 1 <= args.pages <= 64:
            raise ValueError(f"--pages must be 1..64, got {args.pages}")
        if args.seeds is not None and args.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
        from tests.dsm.engine_ffi import MUTANTS
        if args.mutant is not None and args.mutant not in MUTANTS:
            raise ValueError(f"unknown mutant {args.mutant!r}: expected one of {', '.join(MUTANTS)}")
    except ValueError as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return 2
    sweeping = args.nodes is None and args.options is None
    t0 = time.monotonic()
    if sweeping:
        seeds = args.seeds or 3
        try:
            coverage = sweep(seeds, args.seed, args.faults, not args.no_model, mutant=args.mutant)
        except SimFailure as exc:
            print(f"FAIL {exc}", file=sys.stderr)
            return 1
        runs = len(ALL_OPTIONS) * len(NODE_COUNTS) * seeds
        print(f"rows taken over {runs} runs ({len(ALL_OPTIONS)} option combinations x "
              f"{len(NODE_COUNTS)} node counts x {seeds} seeds, {time.monotonic() - t0:.1f} s):")
        print(coverage_report(coverage))
        missing = uncovered(coverage)
        if missing:
            print(f"FAIL: rows never taken: {', '.join(missing)}", file=sys.stderr)
            return 1
        print(f"ok: every one of the {len(ROW_NAMES)} rows taken")
        return 0
    seeds = args.seeds or 1
    nodes = args.nodes if args.nodes is not None else 3
    options = args.options if args.options is not None else "giantvm,dynamic"
    coverage = Counter()
    for seed in range(args.seed, args.seed + seeds):
        sim = Simulation(seed, nodes, options, args.faults, not args.no_model, npages=args.pages,
                         loaded=not args.no_load, mutant=args.mutant, map_owned=args.map_owned)
        try:
            stats = sim.run()
        except SimFailure as exc:
            print(f"FAIL seed {seed}: {exc}", file=sys.stderr)
            return 1
        coverage.update(sim.coverage)
        if seeds == 1:
            msgs = ", ".join(f"{MSG_NAMES[t]}={n}" for t, n in sorted(stats.messages.items()))
            print(f"ok: {stats.steps} steps, {stats.accesses} accesses, {stats.faults} faults "
                  f"({stats.spurious} spurious), messages {msgs}, replies with data "
                  f"{stats.data_replies} / elided {stats.elided_replies}, parked {stats.parked}, "
                  f"holds {stats.holds}, hops {stats.hops}")
    if seeds > 1:
        print(f"ok: {seeds} seeds; rows taken:")
        print(coverage_report(coverage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
