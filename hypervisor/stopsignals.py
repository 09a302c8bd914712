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
import threading

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
    if sys.unraisablehook is not _redeliver_swallowed_interrupt:
        global _next_unraisable_hook
        _next_unraisable_hook = sys.unraisablehook
        sys.unraisablehook = _redeliver_swallowed_interrupt


_next_unraisable_hook = sys.unraisablehook


def _redeliver_swallowed_interrupt(unraisable: "sys.UnraisableHookArgs") -> None:
    """A signal that arrives while Python runs a weakref callback or __del__ (the import system's
    module-lock callbacks, while a node still imports) raises there, where Python prints the
    exception and drops it: the stop would be lost and the line an 'Exception ignored' traceback.
    Deliver it again instead, once this hook has returned: raised inside the hook, it would be
    dropped the same way."""
    if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _received):
        _next_unraisable_hook(unraisable)
        return
    first = signal.Signals[_received[0]]
    _received.clear()
    returned = threading.Event()
    main = threading.main_thread().ident
    assert main is not None
    threading.Thread(target=_signal_after, args=(returned, main, first), daemon=True).start()
    returned.set()


def _signal_after(returned: threading.Event, main: int, signum: signal.Signals) -> None:
    returned.wait()
    signal.pthread_kill(main, signum)


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
