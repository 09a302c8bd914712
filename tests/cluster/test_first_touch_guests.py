"""Spanning guests give exact results with first_touch = "write" (docs/protocol.md)."""
from __future__ import annotations

import pytest

from hypervisor import run_guest
from tests.cluster.common import guest_elf
from tests.conftest import requires_kvm


@requires_kvm
@pytest.mark.parametrize("name", ["spanning_counter", "pagewalk", "memtest"])
def test_a_spanning_guest_gives_exact_results_with_write_first_touch(name: str) -> None:
    result = run_guest(guest_elf(name), vcpus=2, nodes=2, timeout=120, first_touch="write")
    assert result.verdict is not None and result.verdict.startswith(f"PASS {name}"), result
    assert result.status == 0, result.stderr
