"""DSM traces: each node's records (native/trace.h), its trace file, and one Chrome JSON trace.

A node's trace file is JSON: what its ring recorded, which kernel thread ran
which vCPU, and how its CLOCK_MONOTONIC relates to node 0's (estimated from
control-channel heartbeats, hypervisor/clocksync.py). ``merge`` joins the
files of any set of nodes into the documented Chrome JSON trace format
(ui.perfetto.dev, chrome://tracing): a process per node, a thread track for
its DSM event loop and one per vCPU, a slice per fault on its vCPU's track,
and a flow arrow per message. docs/trace.md explains how to read it.
"""
from __future__ import annotations

import json
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from hypervisor._ivy_native import ffi, lib
from hypervisor.cenum import enum_members, lowercase
from hypervisor.native_consts import PAGE_SIZE, WireType

FORMAT = "ivyvm-node-trace"
FORMAT_VERSION = 1
MESSAGE_TYPES = {int(t): t.name for t in WireType}
HEARTBEATS = ("PING", "BYE")     # link liveness: used to align clocks, not drawn
ACCESS = {code: name.replace("wp", "write-protect")
          for name, code in lowercase(enum_members(ffi, "enum ivy_trace_access", "IVY_TR_ACCESS_")).items()}
DSM_TID, VCPU_TID0, OTHER_TID0 = 1, 10, 1_000_000
SLICE_NS = 1000                  # a DSM step is drawn this long at most (its real cost is not recorded)

KIND = lowercase(enum_members(ffi, "enum ivy_trace_kind", "IVY_TR_"))
KIND_NAMES = {code: name for name, code in KIND.items()}
# Records that start the event loop's work (a fault read, a frame received, a
# hold window over): everything recorded after one and before the next is its
# consequence, since the loop does one thing at a time.
INPUTS = {KIND["fault"], KIND["recv"], KIND["hold_end"]}


class TraceError(Exception):
    """A trace file that cannot be read or merged; the message is the user's one line."""


def _record_layout() -> tuple[struct.Struct, tuple[str, ...]]:
    """The binary record's struct format, built from the C declaration (one source)."""
    ctype = ffi.typeof("struct ivy_trace_record")
    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    fmt, names, at = "<", [], 0
    for name, f in sorted(ctype.fields, key=lambda item: item[1].offset):
        assert f.offset == at, f"hole before {name}"
        size = ffi.sizeof(f.type)
        if f.type.kind == "array":
            fmt += f"{size}x"
        else:
            fmt += codes[size]
            names.append(name)
        at += size
    layout = struct.Struct(fmt)
    assert layout.size == ffi.sizeof(ctype) == lib.IVY_TRACE_RECORD_SIZE
    return layout, tuple(names)


LAYOUT, FIELDS = _record_layout()
Record = NamedTuple("Record", [(name, int) for name in FIELDS])  # type: ignore[misc]


def decode(raw: bytes) -> list[Record]:
    return [Record(*values) for values in LAYOUT.iter_unpack(raw)]


def drain(rt: Any, batch: int = 65536) -> bytes:
    """Every record the runtime `rt` (a struct ivy_rt *) holds now, as raw bytes."""
    out = ffi.new("struct ivy_trace_record[]", batch)
    chunks = []
    while True:
        n = lib.ivy_rt_trace_drain(rt, out, batch)
        chunks.append(bytes(ffi.buffer(out, n * LAYOUT.size)))
        if n < batch:
            return b"".join(chunks)


def boot_id() -> str:
    """Processes with one boot id share CLOCK_MONOTONIC (unless in different time namespaces)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class NodeTrace:
    node: int
    nnodes: int
    records: list[Record]
    vcpu_threads: dict[int, int] = field(default_factory=dict)   # kernel tid -> vCPU
    clock: dict[str, int] | None = None    # offset_ns (node 0's clock minus ours), rtt_ns, samples
    boot_id: str = ""
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "node": self.node, "nnodes": self.nnodes,
                "boot_id": self.boot_id, "clock": self.clock, "dropped": self.dropped,
                "vcpu_threads": {str(tid): vcpu for tid, vcpu in self.vcpu_threads.items()},
                "fields": list(FIELDS), "records": [list(r) for r in self.records]}


def write_node_trace(path: Path, trace: NodeTrace) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(trace.to_json(), separators=(",", ":")))
    os.replace(tmp, path)


def read_node_trace(path: Path) -> NodeTrace:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise TraceError(f"cannot read {path}: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TraceError(f"{path}: not a node trace (not JSON)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TraceError(f"{path}: not a node trace written by ivyvm (no \"format\": \"{FORMAT}\")")
    if data.get("version") != FORMAT_VERSION or data.get("fields") != list(FIELDS):
        raise TraceError(f"{path}: node trace version {data.get('version')} with other record fields; "
                         f"this ivyvm reads version {FORMAT_VERSION}")
    try:
        records = [Record(*(int(v) for v in r)) for r in data["records"]]
        node, nnodes = int(data["node"]), int(data["nnodes"])
        threads = {int(t): int(v) for t, v in data["vcpu_threads"].items()}
        clock = data.get("clock")
        if clock is not None:
            clock = {k: int(clock[k]) for k in ("offset_ns", "rtt_ns", "samples")}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TraceError(f"{path}: a node trace with missing or malformed fields") from None
    if not 0 <= node < nnodes:
        raise TraceError(f"{path}: node {node} of {nnodes} nodes")
    return NodeTrace(node, nnodes, records, threads, clock, str(data.get("boot_id", "")),
                     int(data.get("dropped", 0)))


def part_path(path: Path, node: int) -> Path:
    """Node `node`'s own file for a cluster-wide trace path: out.json -> out.node1.json."""
    return path.with_name(f"{path.stem}.node{node}{path.suffix}")


def check_output_path(path: Path) -> str | None:
    """Why a trace cannot be written at `path`, or None."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{path} is a directory"
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"directory {parent} is not writable"
    return None


# --- merging -------------------------------------------------------------------

def clock_offsets(traces: list[NodeTrace]) -> dict[int, tuple[int, str]]:
    """Each node's offset onto the reference node's clock, and where it came from."""
    ref = traces[0]     # node 0 when present: every estimate is against node 0's clock
    def to_node0(t: NodeTrace) -> int | None:
        return 0 if t.node == 0 else t.clock["offset_ns"] if t.clock is not None else None
    out = {}
    for t in traces:
        mine, theirs = to_node0(t), to_node0(ref)
        if t is ref:
            out[t.node] = (0, "reference")
        elif t.boot_id and t.boot_id == ref.boot_id:
            out[t.node] = (0, "same host")
        elif mine is not None and theirs is not None:
            rtt = t.clock["rtt_ns"] if t.clock else 0
            out[t.node] = (mine - theirs, f"heartbeats, best round trip {rtt / 1000:.0f} us")
        else:
            out[t.node] = (0, "unknown: no estimate")
    return out


def _links(traces: list[NodeTrace]) -> tuple[dict, dict]:
    sends, recvs = {}, {}
    for t in traces:
        for i, r in enumerate(t.records):
            if r.kind == KIND["send"]:
                sends[(t.node, r.peer, r.seq)] = (t.node, i)
            elif r.kind == KIND["recv"]:
                recvs[(r.peer, t.node, r.seq)] = (t.node, i)
    return sends, recvs


def causal_shifts(times: dict[int, list[float]], traces: list[NodeTrace], pairs: Iterable[tuple]) -> dict[int, float]:
    """The least per-node shifts (reference node 0 ns) after which no receive precedes its send.

    Every pair a->b asks shift[b] - shift[a] >= send + 1 - recv: difference
    constraints, solved by Bellman-Ford relaxation. Feasible whenever the
    clocks kept a constant offset during the run (each real message took
    time); otherwise the pass limit ends it and the caller clamps what is left.
    """
    need: dict[tuple[int, int], float] = {}
    for (a, ia), (b, ib) in pairs:
        if a != b:
            gap = times[a][ia] + 1 - times[b][ib]
            need[(a, b)] = max(need.get((a, b), gap), gap)
    shift = {t.node: 0.0 for t in traces}
    for _ in range(len(shift) + 1):
        changed = False
        for (a, b), gap in need.items():
            if shift[b] - shift[a] < gap:
                shift[b] = shift[a] + gap
                changed = True
        if not changed:
            break
    ref = shift[traces[0].node]
    return {n: s - ref for n, s in shift.items()}


def _heartbeat(r: Record) -> bool:
    return r.kind in (KIND["send"], KIND["recv"]) and MESSAGE_TYPES.get(r.type) in HEARTBEATS


def _durations(t: NodeTrace, ts: list[float]) -> list[float]:
    """A step lasts until the next one, SLICE_NS at most; heartbeats (not drawn) 1 ns."""
    out = []
    for i, r in enumerate(t.records):
        nxt = ts[i + 1] if i + 1 < len(ts) else ts[i] + SLICE_NS
        out.append(1.0 if _heartbeat(r) else min(float(SLICE_NS), nxt - ts[i]))
    return out


def _spread(times: list[float]) -> list[float]:
    """Strictly increasing by >= 2 ns, so every DSM step has room for its arrows."""
    out, last = [], float("-inf")
    for t in times:
        last = max(t, last + 2)
        out.append(last)
    return out


def _page_args(r: Record) -> dict[str, Any]:
    return {"page": r.page, "guest_physical": f"{r.page * PAGE_SIZE:#x}"}


def _step(r: Record) -> tuple[str, dict[str, Any]]:
    """A DSM event-loop record's slice name and arguments."""
    kind, args = KIND_NAMES.get(r.kind, f"kind {r.kind}"), _page_args(r)
    gpa = args["guest_physical"]
    if r.kind in (KIND["send"], KIND["recv"]):
        mtype = MESSAGE_TYPES.get(r.type, f"type {r.type}")
        args.update(txid=f"{r.txid:#x}", version=r.version, requester=r.requester, hops=r.hops, bytes=r.bytes,
                    flags=r.flags, link_seq=r.seq)
        if r.kind == KIND["send"]:
            return f"send {mtype} {gpa} to node {r.peer}", {**args, "to": r.peer}
        return f"recv {mtype} {gpa} from node {r.peer}", {**args, "from": r.peer}
    if r.kind == KIND["fault"]:
        return f"fault {ACCESS.get(r.type, r.type)} {gpa}", {**args, "thread": r.tid}
    if r.kind == KIND["grant"]:
        return f"grant {'rw' if ACCESS.get(r.type) == 'write' else 'ro'} {gpa}", args
    if r.kind in (KIND["park"], KIND["hold_begin"]):
        mtype = MESSAGE_TYPES.get(r.type, f"type {r.type}")
        verb = "park" if r.kind == KIND["park"] else "hold"
        return f"{verb} {mtype} {gpa} of node {r.peer}", {**args, "txid": f"{r.txid:#x}", "requester": r.peer}
    if r.kind == KIND["done"]:
        return (f"done {'remote' if r.type else 'local'} fault {gpa}",
                {**args, "txid": f"{r.txid:#x}", "latency_us": r.version / 1000})
    return f"{kind.replace('_', ' ')} {gpa}", args


class _Builder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.next_flow = 1

    def slice(self, pid: int, tid: int, name: str, start_ns: float, dur_ns: float, cat: str,
              args: dict[str, Any]) -> None:
        self.events.append({"ph": "X", "pid": pid, "tid": tid, "name": name, "cat": cat,
                            "ts": start_ns / 1000, "dur": dur_ns / 1000, "args": args})

    def flow(self, cat: str, name: str, src: tuple[int, int, float], dst: tuple[int, int, float]) -> None:
        fid = self.next_flow
        self.next_flow += 1
        for ph, (pid, tid, ns) in (("s", src), ("f", dst)):
            self.events.append({"ph": ph, "id": fid, "pid": pid, "tid": tid, "ts": ns / 1000, "cat": cat,
                                "name": name, "bp": "e"})


def merge(traces: list[NodeTrace]) -> dict[str, Any]:
    """One Chrome JSON trace (object form) of every node in `traces`."""
    if not traces:
        raise TraceError("no node traces to merge")
    traces = sorted(traces, key=lambda t: t.node)
    seen = [t.node for t in traces]
    if len(set(seen)) != len(seen):
        raise TraceError(f"node {next(n for n in seen if seen.count(n) > 1)} appears twice")
    if len({t.nnodes for t in traces}) != 1:
        raise TraceError(f"the traces come from clusters of different sizes ({sorted({t.nnodes for t in traces})} nodes)")
    offsets = clock_offsets(traces)
    by_node = {t.node: t for t in traces}
    times = {t.node: _spread([r.ns + offsets[t.node][0] for r in t.records]) for t in traces}
    # How long each DSM step is drawn; arrows attach at the middle of a step.
    durations = {t.node: _durations(t, times[t.node]) for t in traces}
    anchors = {n: [t + d / 2 for t, d in zip(times[n], durations[n])] for n in times}
    sends, recvs = _links(traces)
    pairs = [(sends[k], recvs[k]) for k in sends.keys() & recvs.keys()]
    shifts = causal_shifts(anchors, traces, pairs)
    origin = min((ts[0] + shifts[n] for n, ts in times.items() if ts), default=0.0)
    for n, ts in times.items():
        times[n] = [t + shifts[n] - origin for t in ts]

    b = _Builder()
    # Where each DSM step is drawn, and the point inside it that arrows attach to.
    step_end: dict[tuple[int, int], float] = {}
    def anchor(node: int, i: int) -> tuple[int, int, float]:
        return (node, DSM_TID, (times[node][i] + step_end[(node, i)]) / 2)

    for t in traces:
        b.events.append({"ph": "M", "name": "process_name", "pid": t.node, "args": {"name": f"node {t.node}"}})
        b.events.append({"ph": "M", "name": "process_sort_index", "pid": t.node, "args": {"sort_index": t.node}})
        b.events.append({"ph": "M", "name": "thread_name", "pid": t.node, "tid": DSM_TID,
                         "args": {"name": "DSM event loop"}})
        b.events.append({"ph": "M", "name": "thread_sort_index", "pid": t.node, "tid": DSM_TID,
                         "args": {"sort_index": 0}})
        ts = times[t.node]
        for i, r in enumerate(t.records):
            end = step_end[(t.node, i)] = ts[i] + durations[t.node][i]
            if _heartbeat(r):
                continue
            name, args = _step(r)
            b.slice(t.node, DSM_TID, name, ts[i], end - ts[i], f"dsm.{KIND_NAMES.get(r.kind, '?')}", args)

    clamped = messages = 0
    unpaired_sends = unpaired_recvs = 0
    for key, (a, ia) in sends.items():
        r = by_node[a].records[ia]
        if MESSAGE_TYPES.get(r.type) in HEARTBEATS:
            continue
        if key not in recvs:
            # Sent to a node without a trace here, or still in flight when the trace ended.
            unpaired_sends += 1 if r.peer in by_node else 0
            continue
        node_b, ib = recvs[key]
        src, dst = anchor(a, ia), anchor(node_b, ib)
        if dst[2] < src[2]:     # only when the clocks drifted during the run: see causal_shifts
            clamped += 1
            dst = (dst[0], dst[1], src[2])
        b.flow("message", MESSAGE_TYPES.get(r.type, "?"), src, dst)
        messages += 1
    for key, (node_b, ib) in recvs.items():
        if key not in sends and key[0] in by_node and \
                MESSAGE_TYPES.get(by_node[node_b].records[ib].type) not in HEARTBEATS:
            unpaired_recvs += 1

    faults = _fault_slices(b, traces, times, step_end, anchor)
    return {"traceEvents": b.events, "displayTimeUnit": "ns",
            "otherData": {"ivyvm": {
                "nodes": [t.node for t in traces], "nnodes": traces[0].nnodes,
                "clock_offsets_ns": {str(n): o for n, (o, _) in offsets.items()},
                "clock_sources": {str(n): s for n, (_, s) in offsets.items()},
                "causality_shifts_ns": {str(n): round(s, 1) for n, s in shifts.items()},
                "messages": messages, "clamped_arrows": clamped, "unpaired_sends": unpaired_sends, "unpaired_receives": unpaired_recvs,
                "dropped_records": {str(t.node): t.dropped for t in traces}, "faults": faults}}}


def _fault_slices(b: _Builder, traces: list[NodeTrace], times: dict[int, list[float]],
                  step_end: dict[tuple[int, int], float], anchor: Any) -> int:
    """A slice per fault on its thread's track, from the fault read to its DONE (or WAKE),
    and arrows tying it to the DSM steps it caused, in order."""
    count = 0
    for t in traces:
        named: set[int] = set()
        open_faults: dict[int, list[int]] = defaultdict(list)  # page -> FAULT record indexes
        cause: int | None = None                                # the input record being handled
        by_txid: dict[int, int] = {}                            # txid -> last frame received with it
        def track(tid: int) -> int:
            vcpu = t.vcpu_threads.get(tid)
            track_id = VCPU_TID0 + vcpu if vcpu is not None else OTHER_TID0 + tid
            if track_id not in named:
                named.add(track_id)
                label = f"vCPU {vcpu}" if vcpu is not None else f"thread {tid}"
                b.events.append({"ph": "M", "name": "thread_name", "pid": t.node, "tid": track_id,
                                 "args": {"name": label}})
                b.events.append({"ph": "M", "name": "thread_sort_index", "pid": t.node, "tid": track_id,
                                 "args": {"sort_index": 1 + (vcpu if vcpu is not None else 1000)}})
            return track_id
        for i, r in enumerate(t.records):
            heartbeat = _heartbeat(r)
            if heartbeat:
                continue
            if r.kind in INPUTS:
                cause = i
                if r.kind == KIND["recv"] and r.txid:
                    by_txid[r.txid] = i
            elif r.kind in (KIND["send"], KIND["done"], KIND["grant"]):
                # A reply, forward, invalidation or completion answers the frame of its
                # transaction (possibly after it was parked or held); anything else is the
                # consequence of the input being handled: the loop does one thing at a time.
                source = by_txid.get(r.txid, cause) if r.kind != KIND["grant"] and r.txid else cause
                if source is not None:
                    b.flow("cause", "then", anchor(t.node, source), anchor(t.node, i))
            if r.kind == KIND["fault"]:
                open_faults[r.page].append(i)
                continue
            if r.kind not in (KIND["done"], KIND["wake"]) or not open_faults.get(r.page):
                continue
            end = step_end[(t.node, i)]
            for fi in open_faults.pop(r.page):
                f = t.records[fi]
                tid = track(f.tid)
                start = times[t.node][fi]
                remote = r.kind == KIND["done"] and r.type == 1
                how = "remote" if remote else "local" if r.kind == KIND["done"] else "spurious"
                args = {**_page_args(f), "access": ACCESS.get(f.type, f.type), "thread": f.tid,
                        "blocked_us": round((end - start) / 1000, 3)}
                if remote:
                    args["txid"] = f"{r.txid:#x}"
                b.slice(t.node, tid, f"{how} {ACCESS.get(f.type, f.type)} fault {args['guest_physical']}",
                        start, end - start, "vcpu", args)
                mid_start = (start + step_end[(t.node, fi)]) / 2
                b.flow("fault", "fault", (t.node, tid, mid_start), anchor(t.node, fi))
                b.flow("fault", "resume", anchor(t.node, i), (t.node, tid, (times[t.node][i] + end) / 2))
                count += 1
    return count


def write_chrome(path: Path, trace: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(trace, separators=(",", ":")))
    os.replace(tmp, path)


def merge_files(inputs: list[Path], output: Path) -> dict[str, Any]:
    """`ivyvm trace merge`: read every node file, write one Chrome trace; TraceError on bad input."""
    problem = check_output_path(output)
    if problem:
        raise TraceError(f"-o {output}: {problem}")
    merged = merge([read_node_trace(p) for p in inputs])
    write_chrome(output, merged)
    return merged
