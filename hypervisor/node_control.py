"""A node's control channels at run time: heartbeats, the receive loops and what each frame does."""
from __future__ import annotations

import socket
import threading
from typing import Callable

from . import control, control_decode
from .clocksync import ClockSync
from .config import ClusterConfig
from .control import Channel, ControlError, Frame, Msg
from .dsm import DsmNode
from .machine import Machine
from .native_consts import HEARTBEAT_MS, PAGE_SIZE, TIMEOUT_MS
from .node_failure import SAID_BY_EVERY_NODE, dsm_failure, waiting_for
from .node_io import ForwardedIo, IoServer
from .node_routes import InterruptRoutes, Parking
from .status import Status
from .watchdog import PageQueries

# The control channel keeps the DSM links' liveness timing (native/runtime.h).
HEARTBEAT_SECONDS = HEARTBEAT_MS / 1000
SILENCE_SECONDS = TIMEOUT_MS / 1000    # a control peer quiet this long is taken for dead
DSM_GRACE_SECONDS = HEARTBEAT_SECONDS * 1.6   # a DSM heartbeat tick and some: see receive_loop


class ControlLinks:
    """Runs every control channel of a node that has joined, and applies each frame (every field checked
    first, control_decode): a bad frame loses its peer with one line."""

    def __init__(self, config: ClusterConfig, node_id: int, channels: dict[int, Channel],
                 closing: threading.Event, machine: Callable[[], Machine | None], dsm: Callable[[], DsmNode | None],
                 forwarded: ForwardedIo, server: IoServer, routes: InterruptRoutes, parking: Parking,
                 lost: Callable[[str, int], None]) -> None:
        self.config = config
        self.id = node_id
        self.channels = channels
        self.closing = closing
        self.machine = machine
        self.dsm = dsm
        self.forwarded = forwarded
        self.server = server
        self.routes = routes
        self.parking = parking
        self.lost = lost
        self.clocks: dict[int, ClockSync] = {}   # per control channel, from its heartbeats
        self.stop_from_node0: tuple[int, str] | None = None
        self.stop_was_failure = False
        self.pages = PageQueries(node_id, config.nnodes, config.mem // PAGE_SIZE, channels, dsm)   # the watchdog's

    def start_clocks(self) -> None:
        self.clocks = {peer: ClockSync() for peer in self.channels}

    def heartbeat(self) -> None:
        while not self.closing.wait(HEARTBEAT_SECONDS):
            for peer, channel in list(self.channels.items()):
                try:
                    channel.send(control.encode(Msg.PING, self.clocks[peer].stamp()))
                except (OSError, ControlError):
                    pass   # the receiving side reports the loss, with more detail

    def receive_loop(self, channel: Channel) -> None:
        try:
            while not self.closing.is_set():
                self.dispatch(channel, channel.receive())
        except socket.timeout:
            # The DSM core times the same peer out with the same bound, checking once a
            # heartbeat; its line names the page that was awaited, so let it speak first.
            dsm = self.dsm()
            if not self.closing.is_set() and dsm is not None and dsm.wait_failed(DSM_GRACE_SECONDS):
                self.lost(*dsm_failure(self.id, dsm))
                return
            self._lost(f"node {self.id}: node {channel.peer} silent for {SILENCE_SECONDS:.1f} s "
                       f"on the control connection, {self._waiting_for()}")
        except (ControlError, OSError) as err:
            if self.closing.is_set() or self.stop_from_node0 is not None:
                return
            reason = str(err) if isinstance(err, ControlError) else \
                f"control connection to node {channel.peer} failed: {err.strerror or err}"
            self._lost(f"node {self.id}: {reason}, {self._waiting_for()}")
        except Exception as err:   # noqa: BLE001 - whatever a frame caused, the peer is lost, not this thread
            if not self.closing.is_set():
                self._lost(f"node {self.id}: a control frame from node {channel.peer} could not be handled "
                           f"({type(err).__name__}: {err}), {self._waiting_for()}")

    def _lost(self, line: str) -> None:
        self.lost(line, Status.CLUSTER)

    def _waiting_for(self) -> str:
        return waiting_for(self.id, self.forwarded.waiting_vcpus())

    def dispatch(self, channel: Channel, frame: Frame) -> None:
        """Apply one frame, every field checked first (control_decode): a bad one loses the peer."""
        machine = self.machine()
        assert machine is not None
        kind, peer = frame.type, channel.peer
        control_decode.check_flags(frame, peer)
        if kind is Msg.PING:
            clock = self.clocks.get(peer)
            if clock is not None:     # None only before the join completed
                clock.received(frame.payload)
            return
        if kind is Msg.IO and self.id == 0:
            self.server.serve(channel, frame)
        elif kind is Msg.IO_DONE and self.id != 0:
            self.forwarded.answered(frame, peer)
        elif kind is Msg.IRQ:
            if self.id == 0:
                target, vector = control_decode.decode_irq(frame, peer, self.config.vcpus, None,
                                                           self.config.nodes[peer].vcpus)
            else:
                target, vector = control_decode.decode_irq(frame, peer, self.config.vcpus,
                                                           self.config.nodes[self.id].vcpus)
            self.routes.raise_interrupt(target, vector)
        elif kind is Msg.PARKED and self.id == 0:
            control_decode.decode_parked(frame, peer, self.config.nodes[peer].vcpus)
            self.parking.node_parked(peer)
        elif kind is Msg.FAILED and self.id == 0:
            status, line = control.decode_status(frame)
            if status in SAID_BY_EVERY_NODE:
                # Node k has said that line itself (see Node._finish); node 0 says its own.
                line = f"node 0: stopped by node {peer}: {line}"
            machine.stop(status, line, error=True)
        elif kind is Msg.STOP and self.id != 0:
            self.stop_was_failure = bool(frame.flags & control.FLAG_FAILURE)
            self.stop_from_node0 = control.decode_status(frame)
            machine.stop(*self.stop_from_node0)
        elif kind is Msg.PAGE_QUERY:
            self.pages.on_query(channel, frame)
        elif kind is Msg.PAGE_STATE:
            self.pages.on_state(frame, peer)
        elif kind is Msg.BYE:
            raise ControlError(f"node {peer} left")
        else:
            raise ControlError(f"node {peer} sent {kind.name}, which node {self.id} never expects")
