"""SIGINT and SIGTERM: the same clean stop on every path, one line, status 130 (Status.INTERRUPTED).

Both raise KeyboardInterrupt in the main thread, which every command
already turns into a stop (Machine.run stops the vCPUs; a node tells its
peers; the supervisor reaps its nodes). The first signal's name is kept
for the user's line ("interrupted by SIGTERM"); later ones are ignored
while that stop runs, so a second Ctrl-C cannot cut the clean-up short
with a traceback (SIGKILL still ends everything: nodes follow their
supervisor by PR_SET_PDEATHSIG).

A signal ignored when the process started (``nohup``, a background job of
a non-interactive shell) stays ignored: that is the caller's choice.
"""
from __future__ import annotations

import os
import signal
import sys

from hypervisor.status import Status

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Set by `ivyvm run --nodes` for its nodes: its supervisor says the one line
# of a Ctrl-C or SIGTERM itself, so the nodes keep quiet about being interrupted.
SUPERVISED_ENV = "IVYVM_SUPERVISED"
_received: list[str] = []


def interrupt_on_signal(signum: int, frame: object) -> None:
    """Signal handler: the first stop signal raises KeyboardInterrupt, the rest are noted only."""
    first = not _received
    _received.append(signal.Signals(signum).name)
    if first:
        raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT and SIGTERM to interrupt_on_signal (main thread only, as Python requires)."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, interrupt_on_signal)


def received() -> str | None:
    """The first stop signal's name, or None (a KeyboardInterrupt raised otherwise, e.g. by a test)."""
    return _received[0] if _received else None


def supervised() -> bool:
    return bool(os.environ.get(SUPERVISED_ENV))


def interrupted_line() -> str:
    """'interrupted by SIGTERM': the words every path uses for its one line."""
    name = received()
    return f"interrupted by {name}" if name else "interrupted"


def report_interrupted() -> int:
    """The one line (unless a supervisor says it) and the status of a command that was interrupted."""
    if not supervised():
        sys.stderr.write(f"ivyvm: {interrupted_line()}\n")
    return Status.INTERRUPTED
