"""A peer that speaks garbage on the control channel, end to end (issue 11, section 3).

Node 1 here is a real `ivyvm node` process with one change: its heartbeat
thread first sends a forged frame to node 0, through the real (handshaken)
control channel. A forged IRQ for vCPU 99 used to kill node 0's receive
thread with a traceback and wedge the cluster with both nodes running. Now
node 0 must stop with status 8 and one line naming node 1 and the field,
and node 1 must be stopped with it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.status import Status
from tests.cluster.common import START_BOUND, lines_of, run_with_scripted_member
from tests.conftest import requires_kvm

STATUS_CLUSTER = Status.CLUSTER
STOP_BOUND = START_BOUND        # formation, then the forged frame at once

FORGING_NODE = """
import sys
from hypervisor import control, node_control
from hypervisor.control import Msg

forged = bytes.fromhex(sys.argv[1])
honest = node_control.ControlLinks.heartbeat

def forge_then_beat(self):
    self.channels[0].send(forged)
    honest(self)

node_control.ControlLinks.heartbeat = forge_then_beat
from hypervisor.cli import main
sys.exit(main(sys.argv[2:]))
"""


def forged(kind: str) -> bytes:
    from hypervisor import control
    from hypervisor.control import Msg
    return {
        "irq-target-99": control.encode(Msg.IRQ, control.IRQ.pack(99, 0x40)),
        "irq-vector-8": control.encode(Msg.IRQ, control.IRQ.pack(0, 8)),
        "io-for-node-0s-vcpu": control.encode(Msg.IO, control.IO.pack(1, 0, 0x3F8, 1, 1, 65)),
        "io-seq-skipped": control.encode(Msg.IO, control.IO.pack(7, 1, 0x3F8, 1, 1, 65)),
        "failed-status-negative": control.encode(Msg.FAILED, control.STATUS.pack(-1) + b"x"),
    }[kind]


@requires_kvm
@pytest.mark.parametrize("kind, needle", [
    ("irq-target-99", "node 1 sent an interrupt (vector 64) for vCPU 99; the guest has vCPUs 0..1"),
    ("irq-vector-8", "node 1 sent an interrupt (vector 8) for vCPU 0; vectors are 32..255"),
    ("io-for-node-0s-vcpu", "node 1 forwarded I/O (seq 1) for vCPU 0, which does not run on node 1"),
    ("io-seq-skipped", "node 1 sent I/O seq 7, expected 1"),
    ("failed-status-negative", "FAILED carries status -1, outside 1..255"),
])
def test_a_forged_control_frame_stops_the_cluster_with_one_line(tmp_path: Path, kind: str, needle: str) -> None:
    exits = run_with_scripted_member(tmp_path, FORGING_NODE, [forged(kind).hex()], STOP_BOUND)
    (line,) = lines_of(exits[0].stderr)
    assert line.startswith("ivyvm: node 0: ") and needle in line, line
    (member_line,) = lines_of(exits[1].stderr)
    assert member_line.startswith("ivyvm: node 1: stopped by node 0: ") and needle in member_line, member_line
