"""Node k's stderr, passed on line by line to the supervisor's until it stops the cluster.

Once `ivyvm run` is interrupted it says one line and stops every node. A node
that was still joining may see node 0 leave before its own SIGTERM arrives and
report that departure; the supervisor knows why node 0 left, so from then on
what the other nodes say is not news. Node 0 is not relayed: it streams the
console and, supervised, says nothing when signalled.
"""
from __future__ import annotations

import os
import threading
from typing import IO


class StderrRelay:
    """One thread per node: copies whole lines (each in one write(2), like base.say) until muted."""

    def __init__(self, stream: IO[bytes], name: str, out_fd: int = 2) -> None:
        self._stream = stream
        self._out_fd = out_fd
        self._muted = threading.Event()
        self._thread = threading.Thread(target=self._copy, name=name, daemon=True)
        self._thread.start()

    def mute(self) -> None:
        self._muted.set()

    def _copy(self) -> None:
        with self._stream:
            for line in self._stream:
                if self._muted.is_set():
                    continue            # still read, so the node never blocks on a full pipe
                while line:
                    try:
                        line = line[os.write(self._out_fd, line):]
                    except OSError:
                        self._muted.set()    # nowhere to say it: keep draining
                        break

    def join(self, timeout: float) -> None:
        """After the node has exited: its last lines are out before the supervisor's own."""
        self._thread.join(timeout)
