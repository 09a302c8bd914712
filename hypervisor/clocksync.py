"""How far a node's CLOCK_MONOTONIC is from its peer's, from heartbeats both already send.

Every control-channel PING carries three CLOCK_MONOTONIC stamps: when it was
sent, and, echoing the last PING received from the peer, when that one was
sent (by the peer) and received (here). A node receiving a PING that echoes
its own then holds NTP's four stamps:

    t0  our PING left (our clock)        t1  the peer got it (peer's clock)
    t2  the peer's PING left (peer's)    t3  it arrived here (ours)

offset = ((t1 - t0) + (t2 - t3)) / 2 is the peer's clock minus ours, wrong
by at most half of round trip = (t3 - t0) - (t2 - t1) (the unknown asymmetry
of the two one-way delays), so the sample with the smallest round trip is
kept. Nothing is exchanged that the heartbeat did not already send.
"""
from __future__ import annotations

import threading
import time

from .control import PING


class ClockSync:
    """One per control channel: stamps outgoing PINGs and learns from incoming ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._echo = (0, 0)                 # (peer's sent_ns, our receive ns) of its last PING
        self.best: tuple[int, int] | None = None   # (round trip ns, offset ns)
        self.samples = 0

    def stamp(self, now_ns: int | None = None) -> bytes:
        with self._lock:
            echo = self._echo
        return PING.pack(time.monotonic_ns() if now_ns is None else now_ns, *echo)

    def received(self, payload: bytes, now_ns: int | None = None) -> None:
        t3 = time.monotonic_ns() if now_ns is None else now_ns
        t2, t0, t1 = PING.unpack(payload)
        with self._lock:
            self._echo = (t2, t3)
            if not t0:
                return
            rtt = (t3 - t0) - (t2 - t1)
            if rtt < 0:        # stamps that cannot be (a garbled or replayed echo): learn nothing
                return
            self.samples += 1
            if self.best is None or rtt < self.best[0]:
                self.best = (rtt, ((t1 - t0) + (t2 - t3)) // 2)

    def estimate(self) -> dict[str, int] | None:
        """{"offset_ns": peer minus ours, "rtt_ns": that sample's round trip, "samples"}, or None."""
        with self._lock:
            if self.best is None:
                return None
            return {"offset_ns": self.best[1], "rtt_ns": self.best[0], "samples": self.samples}
