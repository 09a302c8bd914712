"""Prefetch (docs/protocol.md) on spanning guests: exact results with the
option on (classic Ivy reads, which it needs), with batching (docs/dsm.md) on
and off, since prefetch windows are the bursts it sends together; and the
DSM's counters show pages installed ahead of the vCPU that touched them."""
from __future__ import annotations

import pytest

from hypervisor import run_guest
from tests.cluster.common import guest_elf, passing_guest, run_cli
from tests.conftest import requires_kvm


@requires_kvm
@pytest.mark.parametrize("batch", [True, False], ids=["batch", "no-batch"])
@pytest.mark.parametrize("name", ["hello", "spanning_counter", "pagewalk", "memtest", "mp_litmus"])
def test_a_spanning_guest_gives_exact_results_with_prefetch(name: str, batch: bool) -> None:
    result = passing_guest(name, read_ownership="ivy", prefetch=True, **({} if batch else {"no_batch": True}))
    sends = sum(node["dsm"]["sends"] for node in result.stats)
    frames = sum(sum(node["dsm"]["messages_sent"].values()) for node in result.stats)
    queued = sum(node["dsm"]["sends_queued"] for node in result.stats)   # a full socket adds flushes
    if not batch:
        assert sends == frames or queued > 0, (sends, frames, queued)
    elif name == "pagewalk":  # its sequential runs are prefetch windows: bursts to one peer
        assert sends < frames, (sends, frames)
    else:                     # a guest without bursts may send every frame alone
        assert sends <= frames, (sends, frames)


@requires_kvm
def test_pagewalk_reads_pages_installed_ahead() -> None:
    result = run_guest(guest_elf("pagewalk"), vcpus=2, nodes=2, timeout=120, read_ownership="ivy", prefetch=True)
    assert result.status == 0, result.stderr
    assert sum(node["dsm"]["prefetched"] for node in result.stats) > 0, result.stats


@requires_kvm
def test_prefetch_with_giantvm_reads_is_a_usage_error() -> None:
    out = run_cli("run", str(guest_elf("hello")), "--vcpus", "2", "--nodes", "2", "--prefetch")
    assert out.status == 2, out
    assert out.stderr.strip().splitlines() == [
        "ivyvm: --prefetch needs --read-ownership ivy (a read copy that leaves ownership in place), not giantvm"
    ], out.stderr
