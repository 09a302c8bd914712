"""The runtime trace: records in protocol order, the ring, clock alignment and the merged Chrome trace.

The nodes here are real runtimes in one process, meshed over socketpairs (sealed links);
threads touch their guest views from C, so every record comes from the
same fault and message paths a guest's vCPU takes.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import pytest

from hypervisor import trace
from hypervisor._ivy_native import lib
from hypervisor._ivy_testkit import lib as kit
from hypervisor.clocksync import ClockSync
from hypervisor.dsm import DsmError, DsmNode, DsmOptions
from hypervisor.memory import GuestRam
from hypervisor.native_consts import ENGINE_TYPES, PAGE_SIZE, REPLY_DATA, WIRE_HDR_SIZE, WireType
from tests.dsm.sealed_peer import linked_pair
from tests.trace_check import Graph, check_messages, check_remote_faults

K = trace.KIND
READ, WRITE, REPLY, INVALIDATE, INV_ACK = (WireType[n] for n in ("READ", "WRITE", "REPLY", "INVALIDATE", "INV_ACK"))
ACCESS = {name: code for code, name in trace.ACCESS.items()}
PAGE = 3


class Mesh:
    """n runtimes in this process, each with its own RAM, linked by socketpairs."""

    def __init__(self, n: int, records: int = 4096, pages: int = 16, **options: Any) -> None:
        self.rams = [GuestRam(pages * PAGE_SIZE) for _ in range(n)]
        peers: list[dict[int, Any]] = [{} for _ in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                peers[i][j], peers[j][i] = linked_pair()
        opts = DsmOptions(trace_records=records, **options)
        self.nodes = [DsmNode(i, n, self.rams[i], peers[i], opts) for i in range(n)]
        for node in self.nodes:
            node.start()
        self.threads: list[dict[int, int]] = [{} for _ in range(n)]   # per node: kernel tid -> "vCPU"

    def touch(self, node: int, write: bool, page: int = PAGE, vcpu: int = 0) -> int:
        """One access from a new thread, as a vCPU would; returns the thread's kernel id."""
        addr = self.rams[node].guest_addr + page * PAGE_SIZE
        tid: list[int] = []
        def run() -> None:
            tid.append(threading.get_native_id())
            if write:
                kit.ivy_test_store64(addr, 0x1234)
            else:
                kit.ivy_test_load64(addr)
        t = threading.Thread(target=run)
        t.start()
        t.join(10)
        assert not t.is_alive(), f"node {node}'s access to page {page} never completed"
        self.threads[node][tid[0]] = vcpu
        return tid[0]

    def stop(self) -> list[list[trace.Record]]:
        for node in self.nodes:
            node.stop()
        for node in self.nodes:
            assert node.error is None, node.error
        return [node.trace_records() for node in self.nodes]

    def node_traces(self) -> list[trace.NodeTrace]:
        return [trace.NodeTrace(n.node_id, len(self.nodes), n.trace_records(), self.threads[n.node_id], None,
                                trace.boot_id(), n.trace_dropped) for n in self.nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for ram in self.rams:
            ram.close()


@pytest.fixture
def mesh():
    made: list[Mesh] = []
    yield lambda n, **kw: made.append(Mesh(n, **kw)) or made[-1]
    for m in made:
        m.close()


def engine_records(records: list[trace.Record]) -> list[trace.Record]:
    """Without link heartbeats (PING, BYE), which come whenever the timer says."""
    return [r for r in records if not (r.kind in (K["send"], K["recv"]) and r.type not in ENGINE_TYPES)]


Want = Callable[[trace.Record], bool]


def step(kind: str, **fields: int) -> Want:
    """A record of `kind` with these fields (`remote`: a DONE's type, 1 when a request was sent)."""
    fields = {("type" if f == "remote" else f): v for f, v in fields.items()}
    def match(r: trace.Record) -> bool:
        return r.kind == K[kind] and all(getattr(r, f) == v for f, v in fields.items())
    match.__name__ = f"{kind}{fields}"
    return match


def in_order(records: list[trace.Record], wants: list[Want]) -> list[trace.Record]:
    """The records matching `wants`, one each, in that order (others may come between)."""
    found, i = [], 0
    for want in wants:
        while i < len(records) and not want(records[i]):
            i += 1
        assert i < len(records), f"no {want.__name__} after {found[-1] if found else 'the start'}:\n" + \
            "\n".join(map(str, records))
        found.append(records[i])
        i += 1
    return found


def test_two_nodes_read_then_write_in_protocol_order(mesh) -> None:
    m = mesh(2)
    m.touch(0, write=True)      # node 0, the first owner, writes locally: version 1, which node 1 lacks
    reader = m.touch(1, write=False)
    m.touch(0, write=True)
    node0, node1 = map(engine_records, m.stop())
    # Node 1 reads: a fault of its thread, a READ to the owner, the REPLY, the grant, done.
    fault, read, reply, _, done = in_order(node1, [
        step("fault", page=PAGE, type=ACCESS["read"], tid=reader), step("send", type=READ, peer=0, page=PAGE),
        step("recv", type=REPLY, peer=0, page=PAGE), step("grant", page=PAGE, type=ACCESS["read"]),
        step("done", page=PAGE, remote=1)])
    txid = read.txid
    assert txid and reply.txid == txid == done.txid and read.requester == 1
    assert fault.ns <= read.ns <= reply.ns <= done.ns and done.version > 0   # DONE carries the latency
    got, sent = in_order(node0, [step("recv", type=READ, peer=1, txid=txid),
                                 step("send", type=REPLY, peer=1, txid=txid)])
    assert sent.bytes == reply.bytes == WIRE_HDR_SIZE + PAGE_SIZE   # the page travelled
    assert reply.flags & REPLY_DATA and reply.version == sent.version >= 1
    assert got.seq == read.seq and sent.seq == reply.seq                     # per-link sequence pairs them
    # Node 0 writes: GiantVM gave ownership to the reader, so the WRITE goes to node 1, which drops its copy.
    write, back, _, done0 = in_order([r for r in node0 if r.ns > sent.ns], [
        step("send", type=WRITE, peer=1, page=PAGE), step("recv", type=REPLY, peer=1, page=PAGE),
        step("grant", page=PAGE, type=ACCESS["write"]), step("done", page=PAGE, remote=1)])
    assert write.ns > sent.ns and write.txid == back.txid == done0.txid != txid
    in_order(node1, [step("recv", type=WRITE, peer=0, txid=write.txid), step("zap", page=PAGE),
                     step("send", type=REPLY, peer=0, txid=write.txid)])


def test_three_nodes_forwarded_read_and_invalidation(mesh) -> None:
    m = mesh(3)
    m.touch(1, write=True)      # node 1 owns the page, modified
    m.touch(2, write=False)     # node 2 asks node 0 (its probable owner), which forwards to node 1
    m.touch(0, write=True)      # node 0 takes it from node 2 and invalidates node 1's copy
    node0, node1, node2 = map(engine_records, m.stop())
    read, reply, done = in_order(node2, [step("fault", page=PAGE, type=ACCESS["read"]), step("send", type=READ, peer=0),
                                         step("recv", type=REPLY, peer=1), step("done", remote=1)])[1:]
    t = read.txid
    assert reply.txid == done.txid == t and reply.hops == 1
    in_order(node0, [step("recv", type=READ, peer=2, txid=t), step("send", type=READ, peer=1, txid=t)])
    in_order(node1, [step("recv", type=READ, peer=0, txid=t, requester=2), step("wrprotect", page=PAGE),
                     step("send", type=REPLY, peer=2, txid=t)])
    _, write, _, inval, ack, _, _ = in_order(node0, [
        step("fault", page=PAGE), step("send", type=WRITE, peer=2), step("recv", type=REPLY, peer=2),
        step("send", type=INVALIDATE, peer=1), step("recv", type=INV_ACK, peer=1), step("grant", type=ACCESS["write"]),
        step("done", remote=1)])
    u = write.txid
    assert inval.txid == ack.txid == u != t
    in_order(node1, [step("recv", type=INVALIDATE, peer=0, txid=u), step("zap", page=PAGE),
                     step("send", type=INV_ACK, peer=0, txid=u)])
    in_order(node2, [step("recv", type=WRITE, peer=0, txid=u), step("send", type=REPLY, peer=0, txid=u)])


def test_merged_trace_pairs_every_message_and_draws_each_remote_fault(mesh, tmp_path) -> None:
    m = mesh(3)
    m.touch(1, write=True, vcpu=1)
    m.touch(2, write=False, vcpu=2)
    m.touch(0, write=True, vcpu=0)
    for page in range(4, 8):           # a few more, both ways
        m.touch(page % 3, write=page % 2 == 0, page=page, vcpu=page % 3)
    m.stop()
    paths = []
    for n in m.node_traces():
        paths.append(tmp_path / f"n{n.node}.json")
        trace.write_node_trace(paths[-1], n)
    merged = trace.merge_files(paths, tmp_path / "out.json")
    loaded = json.loads((tmp_path / "out.json").read_text())
    assert loaded == json.loads(json.dumps(merged))
    g = Graph(loaded)
    sent = sum(1 for t in m.node_traces() for r in engine_records(t.records) if r.kind == K["send"])
    assert check_messages(g) == sent > 0
    assert loaded["otherData"]["ivyvm"]["unpaired_sends"] == loaded["otherData"]["ivyvm"]["unpaired_receives"] == 0
    # A track per DSM loop and per vCPU thread, named.
    assert {g.names[(n, trace.DSM_TID)] for n in range(3)} == {"DSM event loop"}
    assert {g.names[(n, trace.VCPU_TID0 + v)] for n, v in ((0, 0), (1, 1), (2, 2))} == {"vCPU 0", "vCPU 1", "vCPU 2"}
    paths = check_remote_faults(g)
    assert len(paths) == sum(1 for s in g.slices("vcpu") if g.slice(s)["name"].startswith("remote")) >= 3
    # Node 2's forwarded read: its chain runs 2 -> 0 -> 1 -> 2, on the tracks of those nodes.
    forwarded = [p for p in paths if p[0][0] == 2 and "read" in g.slice(p[0])["name"]][0]
    nodes = [s[0] for s in forwarded]
    assert nodes.index(0) < nodes.index(1) < len(nodes) - 1 and nodes[-1] == 2


def test_ring_keeps_the_oldest_counts_drops_and_drain_makes_room(mesh) -> None:
    m = mesh(2, records=8)
    m.touch(1, write=False, page=1)
    m.touch(1, write=False, page=2)      # about 10 records on node 1 so far: the ring is full
    node1 = m.nodes[1]
    first = node1.trace_records()        # draining empties the ring
    assert len(first) == 8 and node1.trace_dropped > 0
    assert first[0].kind == K["fault"] and first[0].page == 1     # the oldest are the ones kept
    m.touch(1, write=False, page=5)
    later = engine_records(node1.trace_records()[8:])
    in_order(later, [step("fault", page=5), step("send", type=READ, page=5), step("recv", type=REPLY, page=5)])
    m.stop()


def test_tracing_off_records_nothing_and_bad_capacities_are_refused(mesh) -> None:
    m = mesh(2, records=0)
    m.touch(1, write=True)
    assert m.stop() == [[], []] and m.nodes[0].trace_dropped == 0
    for bad in (-1, lib.IVY_TRACE_MAX_RECORDS + 1):
        with pytest.raises(DsmError, match="trace_records"):
            DsmOptions(trace_records=bad)


def test_clock_estimate_within_half_the_best_round_trip() -> None:
    """Two ClockSyncs exchanging stamps through a simulated link: peer clock = ours + 7 ms."""
    offset, ours, theirs = 7_000_000, ClockSync(), ClockSync()
    now = 1_000_000_000
    for delay_out, delay_back in ((300_000, 80_000), (40_000, 45_000), (900_000, 20_000)):
        payload = ours.stamp(now)                               # ours -> theirs
        now += delay_out
        theirs.received(payload, now + offset)
        now += 250_000_000                                      # the peer's next heartbeat
        payload = theirs.stamp(now + offset)                    # theirs -> ours
        now += delay_back
        ours.received(payload, now)
        now += 1000
    est = ours.estimate()
    assert est is not None and est["samples"] == 3
    assert est["rtt_ns"] == 40_000 + 45_000                    # the best sample was kept
    assert abs(est["offset_ns"] - offset) <= est["rtt_ns"] // 2
    assert ClockSync().estimate() is None


def _shifted(t: trace.NodeTrace, by_ns: int, estimate: int, host: str) -> trace.NodeTrace:
    """`t` as if recorded on another host whose clock is `by_ns` behind, estimated as `estimate`."""
    records = [r._replace(ns=r.ns - by_ns) for r in t.records]
    return replace(t, records=records, boot_id=host, clock={"offset_ns": estimate, "rtt_ns": 50_000, "samples": 4})


def test_merge_applies_offsets_and_never_draws_an_arrow_backwards(mesh) -> None:
    m = mesh(2)
    for page in range(1, 6):
        m.touch(page % 2, write=True, page=page)
    m.stop()
    t0, t1 = m.node_traces()
    behind = 5_000_000_000
    for estimate, corrected in ((behind, False), (behind + 2_000_000, True), (behind - 2_000_000, True)):
        merged = trace.merge([t0, _shifted(t1, behind, estimate, "other-host")])
        info = merged["otherData"]["ivyvm"]
        assert info["clock_offsets_ns"]["1"] == estimate
        shift = info["causality_shifts_ns"]["1"]
        # A right estimate needs no correction; a wrong one is corrected by at most its error.
        assert (shift != 0) == corrected and abs(shift) <= abs(estimate - behind) + 1, info
        assert info["clamped_arrows"] == 0
        check_messages(Graph(merged))
    # Without an estimate and 5 s apart, every arrow one way would point backwards: fixed all the same.
    merged = trace.merge([t0, replace(_shifted(t1, behind, 0, "other-host"), clock=None)])
    assert merged["otherData"]["ivyvm"]["clock_sources"]["1"].startswith("unknown")
    check_messages(Graph(merged))


def test_node_trace_files_round_trip_and_bad_ones_say_why(mesh, tmp_path) -> None:
    m = mesh(2)
    m.touch(1, write=False)
    m.stop()
    t = m.node_traces()[1]
    path = tmp_path / "node1.json"
    trace.write_node_trace(path, t)
    back = trace.read_node_trace(path)
    assert back == t
    (tmp_path / "junk.json").write_text("not json")
    (tmp_path / "other.json").write_text('{"traceEvents": []}')
    for bad, why in ((tmp_path / "missing.json", "cannot read"), (tmp_path / "junk.json", "not JSON"),
                     (tmp_path / "other.json", "not a node trace")):
        with pytest.raises(trace.TraceError, match=why):
            trace.read_node_trace(bad)
    with pytest.raises(trace.TraceError, match="appears twice"):
        trace.merge([t, t])


def test_a_request_in_the_hold_window_is_recorded_held_then_served(mesh) -> None:
    hold_s = 0.5
    m = mesh(2, hold_us=int(hold_s * 1e6))
    m.touch(0, write=True)          # version 1 at node 0
    m.touch(1, write=False)         # node 1 reads (and becomes the owner): its hold window opens
    m.touch(0, write=True)          # node 0's WRITE reaches node 1 inside the window and waits there
    node0, node1 = map(engine_records, m.stop())
    write = in_order(node0, [step("fault", page=PAGE), step("send", type=WRITE, peer=1)])[1]
    got, held, released, _, sent = in_order(node1, [
        step("recv", type=WRITE, peer=0, txid=write.txid), step("hold_begin", page=PAGE, txid=write.txid),
        step("hold_end", page=PAGE), step("zap", page=PAGE), step("send", type=REPLY, peer=0, txid=write.txid)])
    assert held.type == WRITE and held.peer == 0       # the request held, and whose it is
    assert released.ns - got.ns > hold_s / 4 * 1e9, "the request was not held for the window"
    g = Graph(trace.merge(m.node_traces()))
    check_messages(g)
    # The reply came after the hold, yet node 0's write fault still chains through node 1 and back.
    assert any(p[0][0] == 0 for p in check_remote_faults(g))


def test_a_drifting_clock_is_clamped_and_no_arrow_points_backwards(mesh) -> None:
    """Node 1's clock running 50% fast: no constant offset fits every message, so the merge
    corrects what it can and draws the receives still too early at their send's time."""
    m = mesh(2)
    for page in range(1, 7):
        m.touch(page % 2, write=True, page=page)
        time.sleep(0.02)
    m.stop()
    t0, t1 = m.node_traces()
    start = t1.records[0].ns
    fast = replace(t1, boot_id="other-host", clock={"offset_ns": 0, "rtt_ns": 50_000, "samples": 4},
                   records=[r._replace(ns=start + (r.ns - start) * 3 // 2) for r in t1.records])
    merged = trace.merge([t0, fast])
    assert merged["otherData"]["ivyvm"]["clamped_arrows"] > 0
    ends: dict[int, dict[str, float]] = {}
    for e in merged["traceEvents"]:
        if e["ph"] in "sf" and e["cat"] == "message":
            ends.setdefault(e["id"], {})[e["ph"]] = e["ts"]
    assert ends and all(pair["f"] >= pair["s"] for pair in ends.values())
