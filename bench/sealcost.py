"""The cost of sealing DSM frames: sealed and unsealed remote read faults, paired.

Two 2-node clusters stay up side by side on the same CPUs, one sealing its frames and
one not (the bench-only switch; users always seal). Short blocks of read faults run on
one, then the other, the order swapped every pair, on the same pages: a burst of host
noise lands in one pair and moves one pair ratio, not the result. The estimate is the
median of the per-pair ratios of block medians; the interquartile range of those ratios
is printed beside it, so a reader sees how far one run's figure can be trusted.
"""
from __future__ import annotations

import statistics
from typing import Any

from bench.floors import Placement, summary
from hypervisor.devkit.cluster import Cluster
from hypervisor.native_consts import ENGINE_TYPES

PAIRS = 40
BLOCK_PAGES = 200


def quartiles(xs: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def sent(cluster: Cluster) -> int:
    return sum(sum(w.call("stats")["stats"]["messages_sent"][t.name] for t in ENGINE_TYPES)
               for w in cluster.workers)


def read_block(cluster: Cluster, pages: list[int]) -> tuple[list[int], int]:
    """The owner takes the pages back (the reader's copies go), then the reader faults each in:
    the fault times, and the messages the faults took."""
    reader, owner = cluster.workers
    owner.call("run", workload="write_pages", pages_list=pages)
    before = sent(cluster)
    ns = reader.call("run", workload="touch_timed", pages_list=pages, write=0)["ns"]
    return ns, sent(cluster) - before


def paired(where: Placement, options: dict[str, Any], pairs: int = PAIRS,
           block_pages: int = BLOCK_PAGES) -> dict[str, Any]:
    pages = list(range(64, 64 + block_pages))
    ratios: list[float] = []
    samples: dict[bool, list[int]] = {True: [], False: []}
    messages = {True: 0, False: 0}
    with Cluster(2, pages=64 + block_pages + 8, options=options, cpus=where.node_cpus(2)) as sealed, \
         Cluster(2, pages=64 + block_pages + 8, options=options, cpus=where.node_cpus(2),
                 insecure_plaintext=True) as plain:
        for cluster in (sealed, plain):   # warm-up: first touches, connections, caches
            read_block(cluster, pages)
        for i in range(pairs):
            medians = {}
            for seal in ((True, False) if i % 2 == 0 else (False, True)):
                ns, msgs = read_block(sealed if seal else plain, pages)
                samples[seal].extend(ns)
                messages[seal] += msgs
                medians[seal] = statistics.median(ns)
            ratios.append(medians[True] / medians[False])
        stats = [r["stats"] for c in (sealed, plain) for r in c.stop_all()]
    q1, q3 = quartiles(ratios)
    return {"ratio": statistics.median(ratios), "ratio_iqr": [q1, q3], "pair_ratios": ratios,
            "pairs": pairs, "block_pages": block_pages,
            **{key: {**summary(samples[seal]), "messages_per_fault": messages[seal] / len(samples[seal])}
               for key, seal in (("sealed", True), ("unsealed", False))},
            "errors": [s["error"] for s in stats if s["error"]]}


CRYPTO_STEPS = ("seal page record", "open page record", "seal header-only record", "open header-only record")


def crypto_alone(where: Placement, n: int = 400, gap_us: int = 50) -> dict[str, Any]:
    """Sealing and opening alone (native/testkit.c), each call after gap_us asleep on node 0's
    CPU: what a read fault cannot avoid paying for encryption (one header-only record each way
    and one page record back; each side seals one and opens one)."""
    from bench.floors import on_cpu
    from hypervisor._ivy_testkit import ffi, lib
    out = ffi.new("uint64_t[]", n * len(CRYPTO_STEPS))
    with on_cpu(where.cpus[0]):
        if lib.ivy_bench_crypto(n, gap_us * 1000, out) != 0:
            raise RuntimeError("ivy_bench_crypto: libcrypto failed")
    steps = {name: summary(list(out[k * n + n // 10:(k + 1) * n])) for k, name in enumerate(CRYPTO_STEPS)}
    return {"gap_us": gap_us, "steps": steps,
            "per_read_fault_us": sum(s["median_us"] for s in steps.values())}
