"""A peer that speaks garbage on the control channel, end to end (issue 11, section 3).

Node 1 here is a real `ivyvm node` process with one change: its heartbeat
thread first sends a forged frame to node 0, through the real (handshaken)
control channel. A forged IRQ for vCPU 99 used to kill node 0's receive
thread with a traceback and wedge the cluster with both nodes running. Now
node 0 must stop with status 8 and one line naming node 1 and the field,
and node 1 must be stopped with it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypervisor.status import Status
from tests.cluster.common import (SECRET, START_BOUND, await_exits, free_port_pairs, lines_of, start_node,
                                  write_cluster)
from tests.conftest import ROOT, guest_elf, requires_kvm

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
    ports = free_port_pairs(2)
    config = write_cluster(tmp_path, guest_elf("spin"), 2, [f"127.0.0.1:{p}" for p in ports])
    head = start_node(config, 0)
    env = dict(os.environ, IVYVM_SECRET=SECRET, PYTHONPATH=str(ROOT))
    member = subprocess.Popen([sys.executable, "-c", FORGING_NODE, forged(kind).hex(), "node", "--config",
                               str(config), "--id", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        exits = await_exits([head, member], since=time.monotonic(), bound=STOP_BOUND)
    finally:
        for proc in (head, member):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for exit in exits:
        assert "Traceback" not in exit.stderr, exit.stderr
        assert exit.status == STATUS_CLUSTER, exit.stderr
    (line,) = lines_of(exits[0].stderr)
    assert line.startswith("ivyvm: node 0: ") and needle in line, line
    (member_line,) = lines_of(exits[1].stderr)
    assert member_line.startswith("ivyvm: node 1: stopped by node 0: ") and needle in member_line, member_line
