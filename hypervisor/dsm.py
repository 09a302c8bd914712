"""The DSM control plane: start, watch and stop one node of the shared guest RAM.

The data plane is C (native/runtime.c, native/engine.c), reached through the
private cffi module ``hypervisor._ivy_native``. Python only hands it the RAM
views and the authenticated peer sockets (see ``hypervisor.handshake``), then
reads statistics and waits for failure. Nothing here runs per fault.
"""
from __future__ import annotations

import os
import select
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from hypervisor import trace
from hypervisor._ivy_native import ffi, lib
from hypervisor.native_consts import (ERR_LEN, FIRST_TOUCH, HEARTBEAT_MS, MANAGERS, MAX_NODES, NO_NODE, NO_PAGE, PAGE_SIZE,
                                      READ_OWNERSHIP, TIMEOUT_MS, WIRE_PROTO, FailKind, WireType)

PROTOCOL_VERSION = WIRE_PROTO
HOLD_US_DEFAULT = 50
FAULT_KINDS = ("read", "write", "wp", "spurious", "duplicate", "local", "remote")


class DsmError(Exception):
    """A DSM node could not be set up, or it stopped because of an error."""


@dataclass(frozen=True)
class DsmFailure:
    """Why a running node stopped, as the C core recorded it (struct ivy_rt_failure)."""

    node: int
    kind: FailKind
    peer: int | None       # the node concerned
    page: int | None       # the page concerned
    what: str              # the check or transition that refused, or the call that failed
    text: str              # the C core's one line
    awaited: int           # pages this node was waiting for

    @property
    def internal(self) -> bool:
        """A bug in ivyvm (an engine refusal or an impossible action), not a fault of the cluster."""
        return self.kind in (FailKind.PROTOCOL, FailKind.ENGINE)

    @property
    def line(self) -> str:
        return f"node {self.node}: {self.text}"


@dataclass(frozen=True)
class DsmOptions:
    """Protocol variant (must match cluster-wide) and link liveness timing."""

    read_ownership: str = "giantvm"
    manager: str = "dynamic"
    # Migratory pages (docs/protocol.md): a page one node read then wrote is
    # granted whole on its next read, and a read the node's predictor expects
    # a write to follow is granted writable where no other copy exists
    # (write-soon reads), so a read-modify-write takes one round trip instead
    # of two. GiantVM reads only. Off by default (bench/migratory.py).
    migratory: bool = False
    # What node 0's first read of a page nobody touched since boot is granted
    # (docs/protocol.md, the worked example): "read" (default) or "write", which
    # saves the write fault of a read-modify-write. Node-local: peers need not agree.
    # It matters only with map_owned off: with it node 0 faults on no untouched page.
    first_touch: str = "read"
    # A read fault continuing a sequential run asks for the following pages as
    # read copies, installed before the vCPU touches them (an adaptive window,
    # runtime.c run_prefetch). Classic Ivy reads only. Node-local: the owner
    # sees ordinary READs. Off by default (bench: pagecost (a) and (b)).
    prefetch: bool = False
    heartbeat_ms: int = HEARTBEAT_MS
    timeout_ms: int = TIMEOUT_MS
    # Busy-poll this long for an expected reply before sleeping in epoll. Off by
    # default: on a host with fewer cores than busy threads (vCPUs + event
    # loops) polling steals the CPU the peer needs (bench/dsm_bench.py --poll-us).
    poll_us: int = 0
    # After a local fault on a page completes, requests that could take the page
    # away wait this long, so the woken thread runs its access first (Mirage's
    # delta; without it a hot page can circle the nodes with no access done).
    # A write grant's window ends early once the writer's word changed, so a
    # long window costs a ping-pong nothing; 50 us covers a cross-CPU wake-up
    # (20-35 us on the development hosts). 0 serves them at once. Measured:
    # docs/dsm.md, bench --hold-us.
    hold_us: int = HOLD_US_DEFAULT
    # Keep a trace ring of this many records (native/trace.h; 64 bytes each, touched only
    # as written); 0: tracing off, which costs the fault path one predicted branch per hook.
    # Node-local: peers need not agree.
    trace_records: int = 0
    # Node 0 owns every page at boot: map them all writable at start, in large
    # ranges, so its guest's first touch of a page nobody else has touched costs
    # what it costs without the DSM (no userfaultfd fault): measured 0.02 x one
    # node without the DSM, against 2.7 x off. The price, measured with the fault
    # trace: a page node 0 never used travels with its 4 KiB (and a zap) when
    # another node first asks for it; whole guests tie or win
    # (docs/guest-performance.md).
    map_owned: bool = True
    # A peer's second and later frames of one pass of the event loop wait in its
    # output queue and leave together at the pass's end, or once batch_bytes wait
    # (0: the runtime's IVY_RT_BATCH_BYTES): one send() for a prefetch window's
    # requests or replies instead of one each. Same wire, same order; node-local.
    # Measured: docs/dsm.md, "Batching" (bench/batch.py).
    batch: bool = True
    batch_bytes: int = 0
    # 1..99: the DSM's event-loop thread runs SCHED_FIFO at this priority (root), so a
    # message preempts a vCPU that spins on the same CPU. Off (0) by default: measured,
    # it made a guest's remote page 1.5 x slower (docs/guest-performance.md).
    dsm_priority: int = 0

    def __post_init__(self) -> None:
        if self.read_ownership not in READ_OWNERSHIP:
            raise DsmError(f"read_ownership {self.read_ownership!r}: expected one of {', '.join(READ_OWNERSHIP)}")
        if self.manager not in MANAGERS:
            raise DsmError(f"manager {self.manager!r}: expected one of {', '.join(MANAGERS)}")
        if self.first_touch not in FIRST_TOUCH:
            raise DsmError(f"first_touch {self.first_touch!r}: expected one of {', '.join(FIRST_TOUCH)}")
        if not isinstance(self.migratory, bool):
            raise DsmError(f"migratory {self.migratory!r}: expected true or false")
        if not isinstance(self.prefetch, bool):
            raise DsmError(f"prefetch {self.prefetch!r}: expected true or false")
        if self.prefetch and self.read_ownership != "ivy":
            raise DsmError("prefetch needs ivy reads (a read copy that leaves ownership in place)")
        if self.migratory and self.read_ownership != "giantvm":
            raise DsmError(f"migratory pages need read_ownership \"giantvm\" (a read that moves ownership), "
                           f"not {self.read_ownership!r}")
        if not isinstance(self.batch, bool):
            raise DsmError(f"batch {self.batch!r}: expected true or false")
        if not 0 <= self.batch_bytes <= lib.IVY_RT_BATCH_MAX_BYTES:
            raise DsmError(f"batch_bytes {self.batch_bytes} must be between 0 (the default) and "
                           f"{lib.IVY_RT_BATCH_MAX_BYTES}")
        if not 0 <= self.poll_us <= 1_000_000:
            raise DsmError(f"poll_us {self.poll_us} must be between 0 and 1000000")
        if not 0 <= self.dsm_priority <= 99:
            raise DsmError(f"dsm_priority {self.dsm_priority} must be between 0 (off) and 99")
        if not 0 <= self.hold_us <= 1_000_000:
            raise DsmError(f"hold_us {self.hold_us} must be between 0 and 1000000")
        if not 0 <= self.trace_records <= lib.IVY_TRACE_MAX_RECORDS:
            raise DsmError(f"trace_records {self.trace_records} must be between 0 and {lib.IVY_TRACE_MAX_RECORDS}")
        if not 1 <= self.heartbeat_ms < self.timeout_ms:
            raise DsmError(f"heartbeat_ms {self.heartbeat_ms} must be >= 1 and below timeout_ms {self.timeout_ms}")

    @property
    def read_ownership_code(self) -> int:
        return int(READ_OWNERSHIP[self.read_ownership])

    @property
    def manager_code(self) -> int:
        return int(MANAGERS[self.manager])


@dataclass(frozen=True)
class RamRegion:
    """Guest RAM as the DSM sees it: the memfd and its two MAP_SHARED views."""

    memfd: int
    guest_addr: int
    vmm_addr: int
    size: int

    @classmethod
    def of(cls, ram: Any) -> "RamRegion":
        """Accept a RamRegion, or anything with (fd or memfd), guest_addr, vmm_addr, size (GuestRam)."""
        if isinstance(ram, RamRegion):
            return ram
        fd = getattr(ram, "memfd", getattr(ram, "fd", None))
        if fd is None:
            raise DsmError(f"{type(ram).__name__} has no memfd/fd attribute: not guest RAM")
        return cls(int(fd), int(ram.guest_addr), int(ram.vmm_addr), int(ram.size))


def _histogram(stats: Any) -> dict[int, int]:
    """Latency buckets keyed by their lower bound in ns; empty buckets left out."""
    return {1 << i: int(stats.lat_hist[i]) for i in range(lib.IVY_RT_LAT_BUCKETS) if stats.lat_hist[i]}


class DsmNode:
    """One node of the DSM: owns the runtime, its thread and the peer sockets.

    ``peers`` maps every other node id to an authenticated connection with its
    keys (a ``hypervisor.handshake.Link``: ``.sock`` and ``.keys``); the node
    takes ownership of the sockets (detached, closed by stop()). Every frame
    is sealed with the keys. ``insecure_plaintext`` sends frames unsealed: it
    exists for the benchmark's baseline only and no user path reaches it.
    Create, optionally mark_loaded(), start(), then stop() (or use ``with``).
    """

    def __init__(self, node_id: int, nnodes: int, ram: Any, peers: Mapping[int, Any],
                 options: DsmOptions | None = None, *, insecure_plaintext: bool = False) -> None:
        self.node_id = node_id
        self.nnodes = nnodes
        self.options = options or DsmOptions()
        self.ram = RamRegion.of(ram)
        self._rt: Any = ffi.NULL
        self._started = False
        self._trace = bytearray()     # records drained so far (trace_records())
        self._trace_dropped = 0
        if not 1 <= nnodes <= MAX_NODES or not 0 <= node_id < nnodes:
            raise DsmError(f"node {node_id} of {nnodes}: need 1 <= nnodes <= {MAX_NODES} and 0 <= node < nnodes")
        expected = set(range(nnodes)) - {node_id}
        if set(peers) != expected:
            raise DsmError(f"node {node_id}: sockets for nodes {sorted(peers)} given, nodes {sorted(expected)} needed")
        cfg = ffi.new("struct ivy_rt_config *")
        cfg.self = node_id
        cfg.nnodes = nnodes
        cfg.read_ownership = self.options.read_ownership_code
        cfg.manager = self.options.manager_code
        cfg.migratory = int(self.options.migratory)
        cfg.first_touch = int(FIRST_TOUCH[self.options.first_touch])
        cfg.prefetch = int(self.options.prefetch)
        cfg.memfd = self.ram.memfd
        cfg.guest_addr = self.ram.guest_addr
        cfg.vmm_addr = self.ram.vmm_addr
        cfg.size = self.ram.size
        cfg.heartbeat_ms = self.options.heartbeat_ms
        cfg.timeout_ms = self.options.timeout_ms
        cfg.poll_us = self.options.poll_us
        cfg.hold_us = self.options.hold_us
        cfg.trace_records = self.options.trace_records
        cfg.map_owned = int(self.options.map_owned)
        cfg.batch = int(self.options.batch)
        cfg.batch_bytes = self.options.batch_bytes
        cfg.fifo_priority = self.options.dsm_priority
        for i in range(MAX_NODES):
            cfg.peer_fds[i] = -1
        cfg.insecure_plaintext = bool(insecure_plaintext)
        for peer, link in peers.items():
            if not insecure_plaintext:
                at = peer * len(link.keys.send)
                ffi.memmove(cfg.send_keys + at, link.keys.send, len(link.keys.send))
                ffi.memmove(cfg.recv_keys + at, link.keys.recv, len(link.keys.recv))
            sock = link.sock
            cfg.peer_fds[peer] = sock.detach() if hasattr(sock, "detach") else int(sock)
        err = ffi.new("char[]", ERR_LEN)
        self._rt = lib.ivy_rt_create(cfg, err, ERR_LEN)
        if self._rt == ffi.NULL:
            for peer in peers:
                os.close(cfg.peer_fds[peer])
            raise DsmError(f"node {node_id}: {ffi.string(err).decode()}")

    def mark_loaded(self, pages: Iterable[int], version: int = 1) -> None:
        """Declare pages written before start (node 0's image): they travel with version >= 1."""
        self._require(started=False)
        for page in pages:
            if lib.ivy_rt_set_version(self._rt, page, version) != 0:
                raise DsmError(f"node {self.node_id}: cannot mark page {page:#x} loaded with version {version} "
                               f"(RAM has {self.ram.size // PAGE_SIZE} pages; versions start at 1)")

    def start(self) -> None:
        self._require(started=False)
        if lib.ivy_rt_start(self._rt) != 0:
            raise DsmError(f"node {self.node_id}: {self.error}")
        self._started = True

    def stop(self) -> None:
        """Say BYE to the peers, join the thread, wake blocked faulters, close every fd."""
        if self._rt != ffi.NULL:
            lib.ivy_rt_stop(self._rt)

    def close(self) -> None:
        """stop() and free the runtime; statistics are gone afterwards, trace records are kept."""
        if self._rt != ffi.NULL:
            lib.ivy_rt_stop(self._rt)
            self._drain_trace()
            lib.ivy_rt_destroy(self._rt)
            self._rt = ffi.NULL

    def __enter__(self) -> "DsmNode":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _require(self, started: bool) -> None:
        if self._rt == ffi.NULL:
            raise DsmError(f"node {self.node_id} is closed")
        if self._started != started:
            raise DsmError(f"node {self.node_id} is {'not ' if not self._started else ''}started")

    @property
    def failure(self) -> DsmFailure | None:
        """Why the node stopped on its own (peer silent, bad frame, ...), or None."""
        if self._rt == ffi.NULL:
            return None
        f = lib.ivy_rt_failure(self._rt)
        if f == ffi.NULL:
            return None
        return DsmFailure(self.node_id, FailKind(f.kind), None if f.peer == NO_NODE else int(f.peer),
                          None if f.page == NO_PAGE else int(f.page), ffi.string(f.what).decode(),
                          ffi.string(f.text).decode(), int(f.awaited))

    @property
    def error(self) -> str | None:
        """The failure's one line, or None."""
        failure = self.failure
        return None if failure is None else failure.line

    @property
    def failure_fd(self) -> int:
        """An fd that polls readable once the node has failed."""
        self._require(started=self._started)
        return int(lib.ivy_rt_failure_fd(self._rt))

    def wait_failed(self, timeout: float | None) -> bool:
        """Block up to `timeout` seconds (None: forever) for a failure; True if the node failed."""
        if self.error is not None:
            return True
        poller = select.poll()
        poller.register(self.failure_fd, select.POLLIN)
        poller.poll(None if timeout is None else int(timeout * 1000))
        return self.error is not None

    @property
    def tracing(self) -> bool:
        return self.options.trace_records > 0

    def _drain_trace(self) -> None:
        if self._rt != ffi.NULL and self.tracing:
            self._trace += trace.drain(self._rt)
            self._trace_dropped = int(lib.ivy_rt_trace_dropped(self._rt))

    def trace_records(self) -> list[Any]:
        """Every trace record so far, oldest first (hypervisor.trace.Record); callable while
        running (drains the ring, which makes room) and after close()."""
        self._drain_trace()
        return trace.decode(bytes(self._trace))

    @property
    def trace_dropped(self) -> int:
        """Records a full ring could not take (the ring keeps the oldest; trace.h)."""
        self._drain_trace()
        return self._trace_dropped

    def access(self, page: int) -> int:
        """This node's access to a page right now: 0 none, 1 read, 2 read-write."""
        return int(lib.ivy_rt_access(self._rt, page))

    def top_pages(self, n: int = 16) -> list[tuple[int, int]]:
        """(page, faults) for the n pages that faulted most, most first."""
        pages = ffi.new("uint64_t[]", n)
        counts = ffi.new("uint32_t[]", n)
        filled = lib.ivy_rt_top_pages(self._rt, pages, counts, n)
        return [(int(pages[i]), int(counts[i])) for i in range(filled)]

    def faults_read(self) -> int:
        """Faults read from userfaultfd so far (read, write and write-protect): cheap, for sampling."""
        s = lib.ivy_rt_stats(self._rt)
        return int(s.faults_read) + int(s.faults_write) + int(s.faults_wp)

    # --- probes (native/probe.c): racy snapshots for the profile and the watchdog ---
    def register_vcpu(self, vcpu: int, thread_id: int) -> None:
        """Tie thread `thread_id`'s faults to vCPU `vcpu`; call from that thread before it runs the guest."""
        self._require(started=self._started)
        if lib.ivy_rt_register_vcpu(self._rt, vcpu, thread_id) != 0:
            raise DsmError(f"node {self.node_id}: cannot register vCPU {vcpu} (thread {thread_id}): "
                           f"at most {int(lib.IVY_RT_MAX_VCPUS)} per node")

    def vcpus(self) -> list[dict[str, int | bool]]:
        """Each registered vCPU's faults and time blocked in them (ns), in registration order."""
        out = ffi.new("struct ivy_rt_vcpu_info[]", int(lib.IVY_RT_MAX_VCPUS))
        filled = lib.ivy_rt_vcpus(self._rt, out, int(lib.IVY_RT_MAX_VCPUS))
        return [{"vcpu": int(v.vcpu), "faults": int(v.faults), "blocked_ns": int(v.blocked_ns),
                 "max_ns": int(v.max_ns), "waiting": bool(v.waiting), "page": int(v.page),
                 "waiting_ns": int(v.waiting_ns)} for v in out[0:filled]]

    def outstanding(self, min_age_s: float = 0.0, limit: int = 64) -> list[dict[str, int]]:
        """Faults waiting at least `min_age_s`: page, age_ns, vcpu (-1: not a vCPU's)."""
        out = ffi.new("struct ivy_rt_stall[]", limit)
        filled = lib.ivy_rt_outstanding(self._rt, out, limit, int(min_age_s * 1e9))
        return [{"page": int(f.page), "age_ns": int(f.age_ns), "vcpu": int(f.vcpu)} for f in out[0:filled]]

    def page_info(self, page: int) -> dict[str, Any]:
        """The engine's entry for `page` and the last message sent and received for it."""
        info = ffi.new("struct ivy_rt_page_info *")
        if lib.ivy_rt_page_info(self._rt, page, info) != 0:
            raise DsmError(f"node {self.node_id}: page {page:#x} is beyond RAM")
        fields = ("state", "owner", "pending", "access", "mapped", "parked", "held", "probowner", "copyset",
                  "version", "acks_missing", "fault_age_ns", "sent_type", "sent_peer", "sent_age_ns",
                  "recv_type", "recv_peer", "recv_age_ns")
        return {name: int(getattr(info, name)) for name in fields}

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (GiantVM's KVM_DSM_PF_PROFILE, and more)."""
        if self._rt == ffi.NULL:
            raise DsmError(f"node {self.node_id} is closed")
        s = lib.ivy_rt_stats(self._rt)
        by_type = lambda arr: {t.name: int(arr[t]) for t in WireType}  # noqa: E731
        count = int(s.lat_count)
        return {
            "node": self.node_id,
            "faults": {kind: int(getattr(s, f"faults_{kind}")) for kind in FAULT_KINDS},
            "messages_sent": by_type(s.msgs_sent),
            "messages_received": by_type(s.msgs_recv),
            "bytes_sent": by_type(s.bytes_sent),
            "bytes_received": by_type(s.bytes_recv),
            "forwards": int(s.forwards),
            "reply_hops": int(s.reply_hops),
            "replies_with_data": int(s.replies_data),
            "replies_elided": int(s.replies_elided),
            "parked": int(s.parked),
            "unparked": int(s.unparked),
            "held": int(s.held),
            "holds_cut": int(s.holds_cut),
            "uffd": {name: int(getattr(s, name)) for name in
                     ("zaps", "wrprotects", "continues", "wp_clears", "wakes", "eexist")},
            "sends_queued": int(s.sends_queued),
            "sends": int(s.sends),
            "frames_batched": int(s.batched),
            "mapped_up_front": int(s.mapped_up_front),
            "prefetches": int(s.prefetches),
            "prefetched": int(s.prefetched),
            "hinted_reads": int(s.hinted_reads),
            "writable_grants": int(s.writable_grants),
            "hints_unused": int(s.hints_unused),
            "latency": {
                "count": count,
                "mean_ns": int(s.lat_sum_ns) // count if count else 0,
                "max_ns": int(s.lat_max_ns),
                "histogram_ns": _histogram(s),
            },
            "top_pages": self.top_pages(16),
            "error": self.error,
        }
