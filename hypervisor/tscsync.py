"""How far each host's TSC is from node 0's, measured during the join, before GO.

Node k sends PROBES numbered TSC_PROBEs, one at a time; node 0 answers each
with its host TSC as it read the probe (TSC_STAMP). For each, node k holds
NTP's stamps in cycles: t0 (its probe left, its clock), t0's answer stamp s
(node 0's clock) and t3 (the answer arrived, its clock). Node 0 read s at
some point in [t0, t3] of node k's clock, so

    offset = s - (t0 + t3) / 2      (node 0's host TSC minus node k's)

is wrong by at most bound = (t3 - t0) / 2, the unknown asymmetry of the two
one-way delays; the sample with the smallest round trip is kept. If
|offset| <= bound the clocks cannot be told apart (one host: they are the
same TSC) and nothing is corrected; else node k's vCPUs take node 0's vCPU
offset plus this one, so the guest reads node 0's host TSC on every node.

Drift is not corrected: the estimate holds at start; hosts whose TSCs tick
at different rates move apart afterwards (docs/cluster.md, "One clock").

Testing knob: IVYVM_TEST_TSC_SKEW="K:CYCLES" adds CYCLES to every host-TSC
reading node K takes here, a fake skew the tests must see recovered. Used
only by tests; a run without it reads the host TSC unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable

from . import control
from ._ivy_native import lib
from .control import Channel, ControlError, Msg

PROBES = 12                     # round trips per node; the shortest one is kept
SKEW_ENV = "IVYVM_TEST_TSC_SKEW"


@dataclass(frozen=True)
class Estimate:
    offset: int        # node 0's host TSC minus this node's, cycles
    bound: int         # |error| <= bound: half the kept sample's round trip
    rtt: int           # that round trip, cycles
    samples: int

    @property
    def same_clock(self) -> bool:
        """The offset is within the error: no correction is justified (one host)."""
        return abs(self.offset) <= self.bound

    def vcpu_offset(self, node0_offset: int) -> int:
        """The TSC offset this node's vCPUs take so the guest reads node 0's clock."""
        return node0_offset if self.same_clock else node0_offset + self.offset


def estimate(samples: Iterable[tuple[int, int, int]]) -> Estimate:
    """From (t0, s, t3) samples: t0, t3 this node's TSC around node 0's stamp s."""
    kept = [(t3 - t0, t0, s, t3) for t0, s, t3 in samples if t3 >= t0]
    if not kept:
        raise ValueError("no clock sample with a round trip that can be")
    rtt, t0, s, t3 = min(kept)
    return Estimate(s - (t0 + t3) // 2, (rtt + 1) // 2, rtt, len(kept))


def host_tsc_reader(node_id: int, environ: dict[str, str] | None = None) -> Callable[[], int]:
    """This host's TSC, plus the test knob's fake skew if it names this node."""
    skew = 0
    knob = (os.environ if environ is None else environ).get(SKEW_ENV, "")
    if knob:
        node, _, cycles = knob.partition(":")
        try:
            if int(node) == node_id:
                skew = int(cycles)
        except ValueError:
            raise ValueError(f"{SKEW_ENV}={knob!r}: expected NODE:CYCLES") from None
    if not skew:
        return lib.ivy_host_tsc
    return lambda: lib.ivy_host_tsc() + skew


def measure(channel: Channel, read_tsc: Callable[[], int]) -> Estimate:
    """Node k: PROBES round trips to node 0 on its control channel, then the estimate."""
    samples = []
    for number in range(1, PROBES + 1):
        t0 = read_tsc()
        channel.send(control.encode(Msg.TSC_PROBE, control.TSC_PROBE.pack(number)))
        frame = channel.receive()
        t3 = read_tsc()
        if frame.type is Msg.STOP:
            raise StoppedByHead(frame)
        samples.append((t0, decode_stamp(frame, channel.peer, number), t3))
    return estimate(samples)


class StoppedByHead(Exception):
    """Node 0 sent STOP instead of answering a probe (it refused this node)."""

    def __init__(self, frame: control.Frame) -> None:
        super().__init__("stopped")
        self.frame = frame


def answer(channel: Channel, read_tsc: Callable[[], int]) -> None:
    """Node 0: answer node k's PROBES probes, each with the host TSC as it arrived."""
    for number in range(1, PROBES + 1):
        frame = channel.receive()
        stamp = read_tsc()
        decode_probe(frame, channel.peer, number)
        channel.send(control.encode(Msg.TSC_STAMP, control.TSC_STAMP.pack(number, stamp)))


def decode_probe(frame: control.Frame, peer: int, expected: int) -> None:
    what = f"node {peer} sent {frame.type.name} during the clock probes"
    if frame.type is not Msg.TSC_PROBE:
        raise ControlError(f"{what}, expected TSC_PROBE {expected}")
    (number,) = control.TSC_PROBE.unpack(frame.payload)
    if frame.flags or number != expected:
        raise ControlError(f"{what}: probe {number} (flags {frame.flags:#x}), expected probe {expected}")


def decode_stamp(frame: control.Frame, peer: int, expected: int) -> int:
    what = f"node {peer} sent {frame.type.name} during the clock probes"
    if frame.type is not Msg.TSC_STAMP:
        raise ControlError(f"{what}, expected TSC_STAMP {expected}")
    number, stamp = control.TSC_STAMP.unpack(frame.payload)
    if frame.flags or number != expected:
        raise ControlError(f"{what}: answer {number} (flags {frame.flags:#x}), expected answer {expected}")
    if not 0 < stamp < 1 << 63:
        raise ControlError(f"{what}: TSC {stamp:#x} is no host TSC (0 or past 2^63)")
    return stamp


def describe(node_id: int, found: Estimate, asked: int) -> str:
    what = "no correction (one clock)" if found.same_clock else f"vCPU TSC offset set to {asked}"
    return (f"node {node_id}: host TSC offset to node 0: {found.offset} cycles, error bound {found.bound} "
            f"(shortest of {found.samples} round trips: {found.rtt} cycles): {what}")
