"""The profile's arithmetic, its schema check and its table (hypervisor.profile), without KVM."""
from __future__ import annotations

import copy

import pytest

from hypervisor import profile


def test_percentiles_are_upper_bounds_of_log2_buckets() -> None:
    # 10 latencies: 5 in [1024, 2048), 4 in [4096, 8192), 1 in [65536, 131072) ns.
    histogram = {1024: 5, 4096: 4, 65536: 1}
    assert profile.percentile_bounds(histogram, 10) == {"p50_ns": 2048, "p90_ns": 8192, "p99_ns": 131072}
    # The largest latency seen bounds the top bucket's percentiles more tightly.
    assert profile.percentile_bounds(histogram, 10, max_ns=70000)["p99_ns"] == 70000
    assert profile.percentile_bounds({}, 0) == {"p50_ns": 0, "p90_ns": 0, "p99_ns": 0}
    assert profile.percentile_bounds({1024: 1, 2048: 99}, 100)["p50_ns"] == 4096


class FakeDsm:
    def __init__(self) -> None:
        self.total = 0

    def faults_read(self) -> int:
        return self.total


def test_fault_sampler_counts_per_interval_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile, "MAX_SAMPLES", 8)
    dsm = FakeDsm()
    sampler = profile.FaultSampler(dsm, interval=1000.0)   # sampled by hand below, not by its thread
    sampler._last = 0
    for step in range(7):
        dsm.total += step
        sampler.sample()
    assert sampler.counts == [0, 1, 2, 3, 4, 5, 6]
    dsm.total += 7
    sampler.sample()            # the 8th sample: pairs merge, the interval doubles
    assert sampler.counts == [1, 5, 9, 13] and sampler.interval == 2000.0
    assert sum(sampler.counts) == dsm.total
    assert sampler.stop() == {"interval_s": 2000.0, "faults": [1, 5, 9, 13]}


def sample_node(node: int = 0) -> dict:
    return {
        "node": node, "vcpus": [node], "run_seconds": 2.0,
        "faults": {"read": 5, "write": 3, "wp": 1, "spurious": 0, "duplicate": 1, "local": 2, "remote": 6},
        "latency": {"count": 8, "mean_ns": 90000, "max_ns": 300000, "p50_ns": 65536, "p90_ns": 262144,
                    "p99_ns": 300000, "histogram": [[32768, 4], [131072, 3], [262144, 1]]},
        "messages": {name: {"sent": 1, "received": 2, "bytes_sent": 4152, "bytes_received": 112}
                     for name in ("READ", "WRITE", "REPLY", "INVALIDATE", "INV_ACK", "PING", "BYE")},
        "forwards": 1, "reply_hops": 2, "replies_with_data": 3, "replies_elided": 1, "parked": 0, "held": 2, "sends": 5,
        "vcpu_blocked": [{"vcpu": node, "faults": 9, "blocked_ns": 500_000_000, "max_ns": 300000, "share": 0.25}],
        "hot_pages": [{"address": 0x5000, "faults": 4}, {"address": 0x201000, "faults": 2}],
        "timeline": {"interval_s": 0.1, "faults": [3, 0, 6]},
        "error": None,
    }


def test_a_good_document_passes_the_schema() -> None:
    profile.check(profile.document([sample_node(1), sample_node(0)]))
    profile.check(profile.document([], note=profile.NO_DSM_LINE))
    assert [n["node"] for n in profile.document([sample_node(1), sample_node(0)])["nodes"]] == [0, 1]


@pytest.mark.parametrize("spoil, where", [
    (lambda d: d["nodes"][0].pop("faults"), "$.nodes[0]: missing keys ['faults']"),
    (lambda d: d["nodes"][0].update(extra=1), "unknown keys ['extra']"),
    (lambda d: d["nodes"][0]["latency"].update(p50_ns="fast"), "$.nodes[0].latency.p50_ns: expected int"),
    (lambda d: d["nodes"][0]["hot_pages"].append({"address": -4096, "faults": 1}),
     "$.nodes[0].hot_pages[2].address: expected int"),
    (lambda d: d["nodes"][0]["vcpu_blocked"][0].update(share=True), "share: expected number"),
    (lambda d: d.update(schema="ivyvm-stats/0"), "$.schema: expected 'ivyvm-stats/1'"),
    (lambda d: d["nodes"][0].update(error=5), "$.nodes[0].error: expected str"),
    (lambda d: d.update(nodes={}), "$.nodes: expected a list"),
])
def test_the_schema_check_names_what_is_wrong(spoil, where: str) -> None:
    doc = profile.document([copy.deepcopy(sample_node())])
    spoil(doc)
    with pytest.raises(profile.SchemaError) as info:
        profile.check(doc)
    assert where in str(info.value)


def test_the_table_prints_nodes_in_order_with_every_section() -> None:
    table = profile.format_table([sample_node(1), sample_node(0)], missing=[2])
    lines = table.splitlines()
    assert lines[0] == "DSM profile of 3 nodes"
    heads = [line for line in lines if not line.startswith(" ")][1:]
    assert heads == ["node 0 (vCPUs 0), 2.00 s", "node 1 (vCPUs 1), 2.00 s",
                     "node 2: no statistics (it did not stop cleanly)"]
    assert "  faults        5 read, 3 write, 1 write-protect; 6 remote, 2 local; 0 spurious, " \
           "1 while already fetching" in lines
    assert ("  latency       8 timed: mean 90.0 us, p50 <= 65.5 us, p90 <= 262.1 us, p99 <= 300.0 us, "
            "max 300.0 us (p: upper bounds of log2 buckets)") in lines
    assert "                REPLY            1         2       4152 B        112 B" in lines
    assert ("  forwarding    1 requests passed on, 0.50 hops per reply received; 1 of 4 replies without "
            "bytes (versions matched)") in lines
    assert "  vCPU 0        blocked 500.0 ms in 9 faults, 25.0% of the run, longest 300.0 us" in lines
    assert "  hottest pages 0x5000 (4), 0x201000 (2)   (guest-physical address, faults)" in lines
