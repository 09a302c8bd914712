"""A simulation whose model disagrees with the engine on one field of one reply.

Tests of the simulator's comparison use it to show the comparison is live and
that a failure report names only the field that differs.
"""
from __future__ import annotations

from tests.dsm.engine_ffi import MSG_REPLY, Action
from tests.dsm.model import ModelNode
from tests.dsm.sim import Simulation


class OffByOneHop(ModelNode):
    """Counts one forward too many on every reply it sends."""

    def _send(self, out: list[Action], to: int, kind: int, page: int, requester: int,
              version: int, copyset: int = 0, txid: int = 0, flags: int = 0,
              hops: int = 0) -> None:
        super()._send(out, to, kind, page, requester, version, copyset, txid, flags,
                      hops + (kind == MSG_REPLY))


def simulation_with_a_model_off_by_one_hop() -> Simulation:
    """Seed 1, 3 nodes, GiantVM reads with the dynamic manager, models replaced."""
    sim = Simulation(1, 3, "giantvm,dynamic", map_owned=False)
    sim.models = [OffByOneHop(n, 3, sim.npages) for n in range(3)]
    for page in range(sim.npages):
        if sim.engines[0].page(page).version:
            sim.models[0].set_version(page, 1)
    return sim
