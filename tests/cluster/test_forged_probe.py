"""A node that sends a bad clock probe during the join (hypervisor/tscsync.py), end to end.

Node 1 is a real `ivyvm node` process whose first TSC_PROBE carries number 9
instead of 1. Node 0 must refuse the join with one line naming node 1 and the
probe, status 8, and node 1 must end with status 8 too, neither with a traceback.
"""
from __future__ import annotations

from pathlib import Path

from tests.cluster.common import START_BOUND, lines_of, run_with_scripted_member
from tests.conftest import requires_kvm

MISNUMBERING_NODE = """
import sys
from hypervisor import control, tscsync

honest = control.TSC_PROBE.pack
sent = []

def misnumbered(number):
    sent.append(number)
    return honest(9 if len(sent) == 1 else number)

control.TSC_PROBE = type("Probe", (), {"pack": staticmethod(misnumbered), "size": honest.__self__.size,
                                       "unpack": honest.__self__.unpack})()
from hypervisor.cli import main
sys.exit(main(sys.argv[1:]))
"""


@requires_kvm
def test_a_misnumbered_clock_probe_refuses_the_join_with_one_line(tmp_path: Path) -> None:
    exits = run_with_scripted_member(tmp_path, MISNUMBERING_NODE, [], START_BOUND)
    (line,) = lines_of(exits[0].stderr)
    assert "node 1 sent TSC_PROBE during the clock probes: probe 9 (flags 0x0), expected probe 1" in line, line
    (member_line,) = lines_of(exits[1].stderr)
    assert member_line.startswith("ivyvm: node 1: refused by node 0: node 1 sent TSC_PROBE"), member_line
