"""The run's time limit (`--timeout`, `[cluster] timeout`) and node 0's start-up progress line.

The limit is a CLOCK_MONOTONIC deadline. `ivyvm run --nodes N` fixes it when
the user's command starts and hands it to its node processes (same host,
same clock) in DEADLINE_ENV, so the limit covers their start-up too; a node
started by hand counts from its own start. Node 0 enforces it: at the
deadline it stops its machine with Status.TIMEOUT, and its STOP carries that
status to every other node (hypervisor.node). The supervisor stops whatever
is left a moment later (hypervisor.cluster).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from .base import DEADLINE_ENV

PROGRESS_SECONDS = 1.0         # node 0 says who it still waits for this often while nodes join


def timeout_line(seconds: float, nodes: int = 1) -> str:
    stopped = "every node was stopped" if nodes > 1 else "the guest was stopped"
    return f"time limit of {seconds:g} s reached: {stopped}"


def deadline_for(timeout: float | None, started: float | None = None) -> float | None:
    """The monotonic deadline of a run limited to `timeout` seconds: inherited, or from `started`."""
    if timeout is None:
        return None
    inherited = os.environ.pop(DEADLINE_ENV, "")
    if inherited:
        try:
            return float(inherited)
        except ValueError:
            pass       # not ours to refuse: fall back to this process's own count
    return (time.monotonic() if started is None else started) + timeout


class TimeLimit:
    """Calls `expire()` once at `deadline` unless cancelled first."""

    def __init__(self, deadline: float, expire: Callable[[], None]) -> None:
        self.deadline = deadline
        self._expire = expire
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._wait, name="time-limit", daemon=True)

    def start(self) -> "TimeLimit":
        self._thread.start()
        return self

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _wait(self) -> None:
        if not self._cancelled.wait(max(0.0, self.left())):
            self._expire()

    def cancel(self) -> None:
        self._cancelled.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)


class JoinProgress:
    """While nodes join, say once a second which ones node 0 still waits for.

    The joining code updates `waiting` (node id -> address) as nodes arrive;
    `say` gets one line per tick. Nothing is said during the first second,
    so a cluster that forms at once prints nothing.
    """

    def __init__(self, waiting: dict[int, str], say: Callable[[str], None],
                 period: float = PROGRESS_SECONDS) -> None:
        self._waiting = dict(waiting)
        self._lock = threading.Lock()
        self._say = say
        self._period = period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="join-progress", daemon=True)

    def __enter__(self) -> "JoinProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(1.0)

    def joined(self, node: int) -> None:
        with self._lock:
            self._waiting.pop(node, None)

    def line(self) -> str | None:
        with self._lock:
            waiting = sorted(self._waiting.items())
        if not waiting:
            return None
        return "node 0: waiting for " + ", ".join(f"node {node} at {address}" for node, address in waiting)

    def _tick(self) -> None:
        while not self._done.wait(self._period):
            line = self.line()
            if line is not None:
                self._say(line)
