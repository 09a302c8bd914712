"""A guest that faults after its node's DSM core failed is reported as the DSM's failure."""
from __future__ import annotations

from types import SimpleNamespace

from hypervisor.dsm import DsmFailure, FailKind
from hypervisor.machine import RunResult
from hypervisor.node import Node
from hypervisor.status import Status


def _node(failure: DsmFailure | None) -> SimpleNamespace:
    return SimpleNamespace(id=1, dsm=SimpleNamespace(failure=failure))


LOST = DsmFailure(1, FailKind.PEER_GARBAGE, 0, None, "open", "node 0 sent a record that does not verify", 1)


def test_a_triple_fault_after_the_dsm_failed_is_the_dsm_failure() -> None:
    result = Node._blame_the_dsm(_node(LOST), RunResult(Status.TRIPLE_FAULT, "vcpu 1: triple fault", True))
    assert (result.status, result.message, result.error) == (
        Status.CLUSTER, "node 1: node 0 sent a record that does not verify", True)


def test_a_guest_fault_with_a_healthy_dsm_stays_the_guest_s() -> None:
    fault = RunResult(Status.TRIPLE_FAULT, "vcpu 1: triple fault", True)
    assert Node._blame_the_dsm(_node(None), fault) is fault
    assert Node._blame_the_dsm(SimpleNamespace(id=1, dsm=None), fault) is fault


def test_a_guest_exit_is_never_rewritten() -> None:
    exit_ = RunResult(0, "", False)
    assert Node._blame_the_dsm(_node(LOST), exit_) is exit_
