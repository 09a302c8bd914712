"""Checks of a Chrome JSON trace written by hypervisor.trace, shared by the DSM and cluster tests.

They read only the JSON, as a viewer does: slices ("X"), flows ("s"/"f")
bound to the slice enclosing their timestamp on their track, metadata ("M").
"""
from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from typing import Any

Slice = tuple[int, int, int]   # pid, tid, index in that track's start-sorted list


class Graph:
    def __init__(self, trace: dict[str, Any]) -> None:
        events = trace["traceEvents"]
        assert {e["ph"] for e in events} <= {"X", "s", "f", "M"}, Counter(e["ph"] for e in events)
        self.tracks: dict[tuple[int, int], list[dict]] = defaultdict(list)
        for e in events:
            if e["ph"] == "X":
                assert e["dur"] >= 0 and isinstance(e["pid"], int) and isinstance(e["tid"], int), e
                self.tracks[(e["pid"], e["tid"])].append(e)
        for slices in self.tracks.values():
            slices.sort(key=lambda e: e["ts"])
            for a, b in zip(slices, slices[1:]):    # one thread does one thing at a time
                assert a["ts"] + a["dur"] <= b["ts"] + 1e-6, (a, b)
        self.starts = {k: [e["ts"] for e in v] for k, v in self.tracks.items()}
        self.names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
                      if e["ph"] == "M" and e["name"] == "thread_name"}
        ends: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for e in events:
            if e["ph"] in "sf":
                ends[e["id"]][e["ph"]].append(e)
        self.flows: list[tuple[str, str, Slice, Slice, float, float]] = []
        self.out: dict[Slice, list[tuple[str, Slice]]] = defaultdict(list)
        self.into: dict[Slice, list[tuple[str, Slice]]] = defaultdict(list)
        for fid, pair in ends.items():
            assert len(pair["s"]) == 1 and len(pair["f"]) == 1, (fid, pair)
            s, f = pair["s"][0], pair["f"][0]
            assert s["cat"] == f["cat"], (s, f)
            src, dst = self.bound(s), self.bound(f)
            self.flows.append((s["cat"], s["name"], src, dst, s["ts"], f["ts"]))
            self.out[src].append((s["cat"], dst))
            self.into[dst].append((s["cat"], src))

    def bound(self, e: dict) -> Slice:
        """The slice a flow event attaches to: the one enclosing its time on its track."""
        key = (e["pid"], e["tid"])
        i = bisect.bisect_right(self.starts[key], e["ts"] + 1e-9) - 1
        assert i >= 0, f"flow {e} before every slice of its track"
        s = self.tracks[key][i]
        assert s["ts"] - 1e-9 <= e["ts"] <= s["ts"] + s["dur"] + 1e-9, f"flow {e} outside every slice"
        return (key[0], key[1], i)

    def slice(self, ref: Slice) -> dict:
        return self.tracks[(ref[0], ref[1])][ref[2]]

    def slices(self, cat: str) -> list[Slice]:
        return [(p, t, i) for (p, t), v in self.tracks.items() for i, e in enumerate(v) if e["cat"] == cat]


def check_messages(g: Graph) -> int:
    """Every send pairs with exactly one receive, and no arrow points backwards in time."""
    sends, recvs = g.slices("dsm.send"), g.slices("dsm.recv")
    messages = [f for f in g.flows if f[0] == "message"]
    for _, name, src, dst, ts_s, ts_f in messages:
        assert ts_f >= ts_s, f"{name} arrow points backwards: {g.slice(src)} -> {g.slice(dst)}"
        a, b = g.slice(src), g.slice(dst)
        assert a["cat"] == "dsm.send" and b["cat"] == "dsm.recv", (a, b)
        assert a["args"]["txid"] == b["args"]["txid"] and a["args"]["page"] == b["args"]["page"], (a, b)
        assert a["args"]["to"] == dst[0] and b["args"]["from"] == src[0], (a, b)
        assert a["args"]["link_seq"] == b["args"]["link_seq"], (a, b)
    out = Counter(src for _, _, src, _, _, _ in messages)
    into = Counter(dst for _, _, _, dst, _, _ in messages)
    assert all(out[s] == 1 for s in sends), "a send without exactly one arrow"
    assert all(into[r] == 1 for r in recvs), "a receive without exactly one arrow"
    assert len(messages) == len(sends) == len(recvs)
    return len(messages)


def fault_path(g: Graph, fault: Slice) -> list[Slice] | None:
    """The chain of slices from a vCPU's fault slice back to itself, following arrows."""
    paths = {fault: [fault]}
    frontier = [fault]
    while frontier:
        nxt = []
        for node in frontier:
            for _, dst in g.out[node]:
                if dst == fault:
                    return paths[node] + [dst]
                if dst not in paths:
                    paths[dst] = paths[node] + [dst]
                    nxt.append(dst)
        frontier = nxt
    return None


def check_remote_faults(g: Graph) -> list[list[Slice]]:
    """Every remote fault's slice leads, arrow by arrow, through another node and back."""
    paths = []
    for fault in g.slices("vcpu"):
        e = g.slice(fault)
        if not e["name"].startswith("remote"):
            continue
        path = fault_path(g, fault)
        assert path is not None, f"no chain of arrows from {e} back to it"
        assert {p[0] for p in path} - {fault[0]}, f"{e}'s chain never left node {fault[0]}"
        times = [g.slice(p)["ts"] for p in path[:-1]]
        assert times == sorted(times), f"{e}'s chain goes back in time"
        paths.append(path)
    return paths
