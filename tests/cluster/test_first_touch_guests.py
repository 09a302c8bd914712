"""Spanning guests give exact results with first_touch = "write" (docs/protocol.md)."""
from __future__ import annotations

import pytest

from hypervisor import run_guest
from tests.cluster.common import guest_elf, passing_guest, run_cli
from tests.conftest import requires_kvm


@requires_kvm
@pytest.mark.parametrize("name", ["spanning_counter", "pagewalk", "memtest"])
def test_a_spanning_guest_gives_exact_results_with_write_first_touch(name: str) -> None:
    # With node 0's pages mapped at start (the default) it would never take a first-touch fault.
    passing_guest(name, first_touch="write", no_map_owned=True)


@requires_kvm
def test_no_map_owned_leaves_node0_pages_to_fault_in() -> None:
    """The switch reaches node 0's DSM: with it, no page is mapped at start and node 0 faults more."""
    mapped = run_guest(guest_elf("pagewalk"), vcpus=2, nodes=2, timeout=120)
    unmapped = run_guest(guest_elf("pagewalk"), vcpus=2, nodes=2, timeout=120, no_map_owned=True)
    assert mapped.status == unmapped.status == 0, (mapped.stderr, unmapped.stderr)
    head = lambda result: next(n["dsm"] for n in result.stats if n["node"] == 0)  # noqa: E731
    assert head(mapped)["mapped_up_front"] > 0 and head(unmapped)["mapped_up_front"] == 0
    assert head(unmapped)["faults"]["local"] > head(mapped)["faults"]["local"]


@requires_kvm
def test_write_first_touch_with_pages_mapped_at_start_is_a_usage_error() -> None:
    out = run_cli("run", str(guest_elf("hello")), "--vcpus", "2", "--nodes", "2", "--first-touch", "write")
    assert out.status == 2, out
    assert out.stderr.strip().splitlines() == [
        "ivyvm: --first-touch write needs --no-map-owned (with node 0's pages mapped at start, its guest never "
        "faults on an untouched page)"], out.stderr
