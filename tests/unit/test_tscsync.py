"""The join's host-TSC estimate (hypervisor/tscsync.py): synthetic samples, the probe exchange, bad frames."""
from __future__ import annotations

import os
import socket
import threading

import pytest

from hypervisor import control, tscsync
from hypervisor.control import Channel, ControlError, Msg
from hypervisor.crypto import LinkKeys


def samples(skew: int, delays: list[tuple[int, int]], start: int = 10_000_000) -> list[tuple[int, int, int]]:
    """(t0, s, t3) of probes from a node whose clock reads node 0's minus `skew`, one-way delays given."""
    out, now = [], start
    for there, back in delays:
        t0 = now
        out.append((t0, t0 + there + skew, t0 + there + back))
        now += there + back + 5000
    return out


def test_skew_is_recovered_within_the_bound_of_the_shortest_round_trip() -> None:
    delays = [(9000, 7000), (1500, 1300), (40_000, 2000), (3000, 3000)]
    found = tscsync.estimate(samples(123_456_789, delays))
    assert found.rtt == 2800 and found.bound == 1400 and found.samples == 4
    assert abs(found.offset - 123_456_789) <= found.bound
    assert not found.same_clock
    assert found.vcpu_offset(-500) == -500 + found.offset


def test_asymmetric_delays_cost_at_most_half_the_round_trip() -> None:
    for there, back in [(100, 9900), (9900, 100), (5000, 5000)]:
        found = tscsync.estimate(samples(-7_000_000, [(there, back)]))
        assert abs(found.offset - -7_000_000) <= found.bound == 5000
        assert found.offset == -7_000_000 + (there - back) // 2


def test_one_clock_is_left_uncorrected() -> None:
    found = tscsync.estimate(samples(0, [(2000, 2600), (1800, 1700)]))
    assert found.same_clock and found.vcpu_offset(42) == 42


def test_impossible_samples_are_ignored() -> None:
    good = samples(1_000_000, [(2000, 2000)])
    found = tscsync.estimate([(50, 0, 10), *good])
    assert found.samples == 1 and found.rtt == 4000
    with pytest.raises(ValueError):
        tscsync.estimate([(50, 0, 10)])


def pair() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    keys = LinkKeys(os.urandom(32), os.urandom(32))
    return Channel(a, peer=1, keys=keys), Channel(b, peer=0, keys=keys.swapped())


def test_the_knob_skews_only_the_node_it_names() -> None:
    skewed = tscsync.host_tsc_reader(1, {tscsync.SKEW_ENV: "1:5000000000"})
    plain = tscsync.host_tsc_reader(0, {tscsync.SKEW_ENV: "1:5000000000"})
    assert 4_000_000_000 < skewed() - plain() < 6_000_000_000
    with pytest.raises(ValueError, match="NODE:CYCLES"):
        tscsync.host_tsc_reader(1, {tscsync.SKEW_ENV: "one:5"})


def test_probes_over_a_channel_recover_an_injected_skew() -> None:
    head, member = pair()
    skew = 3_000_000_000
    server = threading.Thread(target=tscsync.answer, args=(head, tscsync.host_tsc_reader(0, {})))
    server.start()
    found = tscsync.measure(member, tscsync.host_tsc_reader(1, {tscsync.SKEW_ENV: f"1:{skew}"}))
    server.join()
    assert found.samples == tscsync.PROBES
    assert abs(found.offset - -skew) <= found.bound, found
    assert not found.same_clock and found.vcpu_offset(0) == found.offset


def test_probes_on_one_host_find_one_clock() -> None:
    head, member = pair()
    server = threading.Thread(target=tscsync.answer, args=(head, tscsync.host_tsc_reader(0, {})))
    server.start()
    found = tscsync.measure(member, tscsync.host_tsc_reader(1, {}))
    server.join()
    assert found.same_clock, found


@pytest.mark.parametrize("frame, match", [
    (control.Frame(Msg.TSC_STAMP, 0, control.TSC_STAMP.pack(2, 99)), "answer 2 .*expected answer 1"),
    (control.Frame(Msg.TSC_STAMP, 0, control.TSC_STAMP.pack(1, 0)), "no host TSC"),
    (control.Frame(Msg.TSC_STAMP, 0, control.TSC_STAMP.pack(1, 1 << 63)), "no host TSC"),
    (control.Frame(Msg.TSC_STAMP, 4, control.TSC_STAMP.pack(1, 99)), "flags 0x4"),
    (control.Frame(Msg.PING, 0, control.PING.pack(1, 2, 3)), "sent PING during the clock probes"),
])
def test_a_bad_stamp_is_refused(frame: control.Frame, match: str) -> None:
    with pytest.raises(ControlError, match=match):
        tscsync.decode_stamp(frame, 0, 1)


def test_a_bad_probe_is_refused() -> None:
    with pytest.raises(ControlError, match="probe 3 .*expected probe 2"):
        tscsync.decode_probe(control.Frame(Msg.TSC_PROBE, 0, control.TSC_PROBE.pack(3)), 1, 2)
    with pytest.raises(ControlError, match="sent IO_DONE"):
        tscsync.decode_probe(control.Frame(Msg.IO_DONE, 0, control.IO_DONE.pack(1, 0, 0)), 1, 1)


def test_stamps_of_the_right_size_only() -> None:
    with pytest.raises(ControlError, match="TSC_STAMP has length 4"):
        control.check_header(Msg.TSC_STAMP, 4)
