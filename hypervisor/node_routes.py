"""Where a spanning guest's interrupts go, and when all of its vCPUs have parked."""
from __future__ import annotations

import threading
from typing import Callable

from . import control
from .config import ClusterConfig, NodeSpec
from .control import Channel, Msg
from .machine import Machine


class InterruptRoutes:
    """The node's InterruptRouter: deliver locally, or send towards the node running the target (via node 0)."""

    def __init__(self, config: ClusterConfig, node_id: int, channels: dict[int, Channel],
                 machine: Callable[[], Machine | None]) -> None:
        self.config = config
        self.id = node_id
        self.spec: NodeSpec = config.nodes[node_id]
        self.channels = channels
        self.machine = machine

    def raise_interrupt(self, target_vcpu: int, vector: int) -> None:
        machine = self.machine()
        assert machine is not None
        if target_vcpu in self.spec.vcpus:
            machine.inject(target_vcpu, vector)
            return
        owner = self.config.node_of_vcpu(target_vcpu)
        via = owner if self.id == 0 else 0
        self.channels[via].send(control.encode(Msg.IRQ, control.IRQ.pack(target_vcpu, vector)))


class Parking:
    """Every vCPU of every node parked ends the run (status 0); node 0 counts the nodes."""

    def __init__(self, config: ClusterConfig, node_id: int, channels: dict[int, Channel],
                 machine: Callable[[], Machine | None]) -> None:
        self.config = config
        self.id = node_id
        self.channels = channels
        self.machine = machine
        self._parked_nodes: set[int] = set()
        self._lock = threading.Lock()

    def local_all_parked(self) -> None:
        """Every vCPU of this node parked (the machine's callback)."""
        if self.id == 0:
            self.node_parked(0)
        else:
            vcpus = len(self.config.nodes[self.id].vcpus)
            self.channels[0].send(control.encode(Msg.PARKED, control.PARKED.pack(vcpus)))

    def node_parked(self, node: int) -> None:
        machine = self.machine()
        assert machine is not None
        with self._lock:
            self._parked_nodes.add(node)
            everyone = len(self._parked_nodes) == self.config.nnodes
        if everyone:
            machine.stop(0, "every vCPU parked")
