"""A node's shutdown stops its DSM core before it unmaps the guest RAM that core serves from."""
from __future__ import annotations

from pathlib import Path

from hypervisor.config import loopback_cluster
from hypervisor.node import Node
from tests.conftest import guest_elf


class Core:
    """Stands in for DsmNode: its thread would read and write guest RAM until stop() returns."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.running = True

    def stop(self) -> None:
        self.running = False
        self.log.append("dsm stopped")

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self.stop()
        self.log.append("dsm freed")


class GuestMachine:
    def __init__(self, core: Core, log: list[str]) -> None:
        self.core = core
        self.log = log

    def vcpu_threads(self) -> dict[int, int]:
        return {}

    def close(self) -> None:
        # CI once saw a node die of SIGSEGV here: a late request served from RAM just unmapped.
        assert not self.core.running, "guest RAM unmapped while the DSM core still serves from it"
        self.log.append("ram unmapped")


def test_the_dsm_core_stops_before_the_ram_goes(tmp_path: Path) -> None:
    config = loopback_cluster(guest_elf("spin"), 2, 64 << 20, 2, [(1, 2), (3, 4)])
    node = Node(config, 1, b"s" * 32)
    log: list[str] = []
    node.dsm = core = Core(log)           # type: ignore[assignment]
    node.machine = GuestMachine(core, log)  # type: ignore[assignment]
    node._shutdown()
    assert log == ["dsm stopped", "ram unmapped", "dsm stopped", "dsm freed"]
