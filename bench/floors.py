"""The DSM benchmark's baselines: floors and a bound built from the bare mechanisms (native/testkit.c).

A placement says where the two sides of every measurement run: the faulting
side on node 0's CPU, the serving side on node 1's. With one CPU for both, the
serving side's work lands on the faulting side's critical path; with a CPU
each, the sides run concurrently, as nodes on separate hosts do, and a
message wakes a CPU that was idle. Floors and DSM runs of one placement are
always compared with each other, never across placements.
"""
from __future__ import annotations

import contextlib
import os
import socket
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from hypervisor._ivy_native import ffi
from hypervisor._ivy_testkit import lib


@dataclass(frozen=True)
class Placement:
    """Node i runs on cpus[i % len(cpus)]."""

    name: str
    label: str
    cpus: tuple[int, ...]

    def cpu_of(self, node: int) -> int:
        return self.cpus[node % len(self.cpus)]

    def node_cpus(self, nnodes: int) -> list[int]:
        return [self.cpu_of(i) for i in range(nnodes)]

    @property
    def faulting_cpu(self) -> int:
        return self.cpu_of(0)

    @property
    def serving_cpu(self) -> int:
        return self.cpu_of(1)


def summary(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)
    return {"n": len(s), "median_us": statistics.median(s) / 1000,
            "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000, "min_us": s[0] / 1000}


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """The body runs pinned to one CPU; this process's affinity is restored after."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def _warm(ns: Any, n: int) -> dict[str, float]:
    return summary(list(ns)[n // 10:])  # the first touches warm caches


def uffd_floor(n: int, where: Placement) -> dict[str, float]:
    """Bare MINOR fault round trip: zap, touch, a thread asleep in read() CONTINUEs (one CPU: node 0's)."""
    out = ffi.new("uint64_t[]", n)
    with on_cpu(where.faulting_cpu):
        if lib.ivy_bench_uffd_floor(n, out) != 0:
            raise SystemExit("bare userfaultfd floor failed: userfaultfd with MINOR faults on a memfd is needed")
    return _warm(out, n)


def over_loopback(serve: Callable[[int], int], measure: Callable[[int], int], where: Placement) -> int:
    """serve(fd) in a forked process on the serving CPU, measure(fd) here on the faulting CPU,
    over loopback TCP with TCP_NODELAY."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {where.serving_cpu})
            c = socket.create_connection(("127.0.0.1", port))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            serve(c.fileno())
        finally:
            os._exit(0)
    try:
        with on_cpu(where.faulting_cpu):
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rc = measure(conn.fileno())
            conn.close()  # a server that answers until EOF stops here
    finally:
        os.waitpid(pid, 0)
        listener.close()
    return rc


def tcp_floor(n: int, where: Placement, epoll: bool = False) -> dict[str, float]:
    """A frame header out, a header and a page back, between two processes over loopback.

    epoll: each side waits in epoll_wait and then calls a non-blocking recv, as
    the DSM event loop must, instead of sleeping inside a blocking recv."""
    ping, pong = ((lib.ivy_bench_tcp_ping_epoll, lib.ivy_bench_tcp_pong_epoll) if epoll
                  else (lib.ivy_bench_tcp_ping, lib.ivy_bench_tcp_pong))
    out = ffi.new("uint64_t[]", n)
    if over_loopback(lambda fd: pong(fd, n), lambda fd: ping(fd, n, out), where) != 0:
        raise SystemExit("bare TCP floor failed")
    return _warm(out, n)


def fault_bound(n: int, where: Placement) -> dict[str, float]:
    """A design bound, not a floor (testkit.c ivy_bench_bound_fault): a remote read fault built
    from the bare mechanisms, the asking thread blocking in recv for its answer, the owner
    write-protecting before it sends. What any runtime could reach on this host."""
    out = ffi.new("uint64_t[]", n)
    if over_loopback(lib.ivy_bench_bound_owner, lambda fd: lib.ivy_bench_bound_fault(fd, n, out), where) != 0:
        raise SystemExit("composed remote-fault bound failed")
    return _warm(out, n)


_MECHANISM_NAMES = {
    lib.IVY_MECH_WP_SET: "downgrade a written page (WRITEPROTECT set)",
    lib.IVY_MECH_WP_CLEAR: "upgrade (WRITEPROTECT clear)",
    lib.IVY_MECH_ZAP: "zap a mapped page (MADV_DONTNEED)",
    lib.IVY_MECH_CONTINUE: "map a page (CONTINUE, no waiter)",
    lib.IVY_MECH_COPY: "copy a page into the VMM view",
}
# In testkit.h's order, which is the order of ivy_bench_mechanisms' output.
MECHANISMS = tuple(_MECHANISM_NAMES[k] for k in range(lib.IVY_MECH_COUNT))


def mechanisms(npages: int, where: Placement) -> dict[str, dict[str, float]]:
    """Each step a remote fault adds to the floors, timed alone on distinct pages (node 0's CPU)."""
    out = ffi.new("uint64_t[]", len(MECHANISMS) * npages)
    with on_cpu(where.faulting_cpu):
        if lib.ivy_bench_mechanisms(npages, out) != 0:
            raise SystemExit("timing the userfaultfd mechanisms failed")
    return {name: summary(list(out[k * npages:(k + 1) * npages])) for k, name in enumerate(MECHANISMS)}
