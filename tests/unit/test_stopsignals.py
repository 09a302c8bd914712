"""hypervisor/stopsignals.py: a stop signal is never lost, even where Python drops exceptions."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# The signal's handler runs inside a weakref callback, as it does when a signal lands in the
# import system's module-lock callback while a node is still importing.
SIGNAL_IN_A_WEAKREF_CALLBACK = """
import signal, time, weakref
from hypervisor import stopsignals
stopsignals.install()

class Thing:
    pass

def callback(ref):
    signal.raise_signal(signal.SIGTERM)
    sum(range(1000))      # the handler runs here, and its KeyboardInterrupt is dropped

try:
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    time.sleep(5)
    print("the stop was lost")
except KeyboardInterrupt:
    print("stopped by", stopsignals.received())
"""


def test_a_signal_dropped_inside_a_weakref_callback_is_delivered_again() -> None:
    done = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_WEAKREF_CALLBACK], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.stdout == "stopped by SIGTERM\n", (done.stdout, done.stderr)
    assert done.stderr == ""


def test_other_dropped_exceptions_still_reach_the_usual_hook() -> None:
    script = ("import weakref\nfrom hypervisor import stopsignals\nstopsignals.install()\n"
              "class T: pass\nt = T()\nr = weakref.ref(t, lambda ref: 1 / 0)\ndel t\nprint('went on')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.stdout == "went on\n"
    assert "ZeroDivisionError" in done.stderr
