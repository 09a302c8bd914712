"""A node's start-up: its image, its listening sockets, the DSM mesh and the join at node 0.

In this order on every node, so no vCPU can fault before every DSM server runs:
RAM (node 0 writes boot tables and image) -> DSM mesh, authenticated -> DSM
core started -> control channel to node 0, JOIN checked by node 0 -> clock
probes (tscsync: node k's host TSC against node 0's) -> GO.
"""
from __future__ import annotations

import os
import socket
import time

from . import control, runlimit, tscsync
from .base import LISTEN_FDS_ENV, say
from .config import ClusterConfig
from .control import Channel, ControlError, Msg
from .dsm import DsmNode, DsmOptions
from .handshake import ClusterShape, HandshakeError, accept_peers, connect_mesh, connect_peer, listen
from .loader import Image, LoaderError, load_image
from .machine import Machine
from .node_control import SILENCE_SECONDS
from .node_failure import NodeError, StoppedWhileJoining
from .status import Status


class Joiner:
    """Everything node `node_id` does before its vCPUs may start; each step returns what it made."""

    def __init__(self, config: ClusterConfig, node_id: int, secret: bytes, shape: ClusterShape,
                 options: DsmOptions, deadline: float | None) -> None:
        self.config = config
        self.id = node_id
        self.spec = config.nodes[node_id]
        self.secret = secret
        self.shape = shape
        self.options = options
        self.deadline = deadline      # the run's time limit (CLOCK_MONOTONIC), if any
        self.tsc_estimate: tscsync.Estimate | None = None    # node k > 0, after as_member

    def _tsc_reader(self):  # type: ignore[no-untyped-def]
        try:
            return tscsync.host_tsc_reader(self.id)
        except ValueError as err:
            raise NodeError(Status.USAGE, f"node {self.id}: {err}") from None

    def load(self) -> Image:
        try:
            return load_image(self.config.image, self.config.mem, self.config.vcpus)
        except LoaderError as err:
            raise NodeError(Status.IMAGE, str(err)) from None

    def open_listeners(self) -> tuple[socket.socket, socket.socket | None]:
        """Bound before anything else, so peers can already queue connections."""
        inherited = os.environ.pop(LISTEN_FDS_ENV, "")
        if inherited:
            dsm_fd, control_fd = (int(fd) for fd in inherited.split(","))
            dsm, ctl = socket.socket(fileno=dsm_fd), socket.socket(fileno=control_fd)
            if self.id != 0:
                ctl.close()
                return dsm, None
            return dsm, ctl
        dsm = listen(self.spec.host, self.spec.port)
        try:
            return dsm, listen(*self.spec.control_address) if self.id == 0 else None
        except BaseException:
            dsm.close()
            raise

    def connect_dsm(self, machine: Machine, listener: socket.socket) -> DsmNode:
        timeout = self.config.setup_timeout
        if self.deadline is not None:
            timeout = min(timeout, max(0.05, self.deadline - time.monotonic()))
        try:
            peers = connect_mesh(self.id, [n.address for n in self.config.nodes], self.secret, self.shape,
                                 listener=listener, timeout=timeout)
        except HandshakeError as err:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise NodeError(Status.TIMEOUT, f"node {self.id}: time limit of {self.config.timeout:g} s "
                                                f"reached while nodes were joining ({err})") from None
            raise
        finally:
            listener.close()
        assert machine.ram is not None
        dsm = DsmNode(self.id, self.config.nnodes, machine.ram, peers, self.options)
        dsm.mark_loaded(machine.written_pages)
        dsm.start()
        return dsm

    def progress(self) -> runlimit.JoinProgress:
        others = {n.id: f"{n.host}:{n.port}" for n in self.config.nodes if n.id != self.id}
        return runlimit.JoinProgress(others, say)

    def time_limit(self, machine: Machine) -> runlimit.TimeLimit | None:
        """Node 0 ends the run at the deadline; its STOP carries Status.TIMEOUT to the others."""
        if self.deadline is None:
            return None
        assert self.config.timeout is not None
        line = runlimit.timeout_line(self.config.timeout, self.config.nnodes)
        return runlimit.TimeLimit(self.deadline, lambda: machine.stop(Status.TIMEOUT, line, error=True)).start()

    def as_head(self, digest: bytes, listener: socket.socket, progress: runlimit.JoinProgress,
                channels: dict[int, Channel]) -> None:
        """Node 0: accept every other node's control connection and check its JOIN, into `channels`."""
        deadline = time.monotonic() + self.config.setup_timeout
        if self.deadline is not None and self.deadline < deadline:
            deadline = self.deadline
        waiting = set(range(1, self.config.nnodes))
        read_tsc = self._tsc_reader()
        try:
            # Concurrent handshakes: strangers on this port cannot hold up the real nodes.
            links = accept_peers(listener, self_id=0, expected=waiting, shape=self.shape, secret=self.secret,
                                 deadline=deadline, purpose=b"control", on_proven=progress.joined)
            missing = sorted(waiting - set(links))
            if missing:
                for link in links.values():
                    link.close()
                if deadline == self.deadline:
                    assert self.config.timeout is not None
                    raise NodeError(Status.TIMEOUT, f"node 0: time limit of {self.config.timeout:g} s "
                                                    f"reached while nodes {missing} were joining")
                raise NodeError(Status.CLUSTER, f"node 0: nodes {missing} never opened "
                                                f"their control connection")
            for peer, link in sorted(links.items()):
                sock = link.sock
                channel = Channel(sock, peer, link.keys)
                channels[peer] = channel     # closed by Node._shutdown whatever happens next
                sock.settimeout(self.config.setup_timeout)
                frame = channel.receive()
                if frame.type is not Msg.JOIN:
                    raise NodeError(Status.CLUSTER, f"node {peer} sent {frame.type.name} instead of JOIN")
                their_digest, vcpus, mem = control.JOIN.unpack(frame.payload)
                if their_digest != digest:
                    line = (f"node {peer} runs a different guest image (sha256 {their_digest.hex()[:16]}..., "
                            f"node 0 has {digest.hex()[:16]}...)")
                    channel.send(control.encode_status(Msg.STOP, Status.CLUSTER, line))
                    raise NodeError(Status.CLUSTER, line)
                if (vcpus, mem) != (self.config.vcpus, self.config.mem):
                    line = (f"node {peer} has {vcpus} vCPUs and {mem} bytes of RAM, node 0 has "
                            f"{self.config.vcpus} and {self.config.mem}")
                    channel.send(control.encode_status(Msg.STOP, Status.CLUSTER, line))
                    raise NodeError(Status.CLUSTER, line)
                try:
                    tscsync.answer(channel, read_tsc)
                except (socket.timeout, OSError) as err:
                    raise NodeError(Status.CLUSTER, f"node 0: node {peer} stopped answering during the clock "
                                                    f"probes ({err.strerror or 'timed out'})") from None
                except ControlError as err:     # a node that cannot count probes is refused, and told
                    try:
                        channel.send(control.encode_status(Msg.STOP, Status.CLUSTER, str(err)))
                    except OSError:
                        pass        # gone already: the line below is said here anyway
                    raise NodeError(Status.CLUSTER, f"node 0: {err}") from None
                sock.settimeout(SILENCE_SECONDS)
        finally:
            listener.close()

    def as_member(self, digest: bytes, channels: dict[int, Channel]) -> int:
        """Node k > 0: connect to node 0's control port, JOIN and wait for GO, into `channels`.

        Returns GO's guest-TSC offset (node 0's vCPUs'); the host-TSC estimate is left in
        self.tsc_estimate, and together they give this node's vCPUs' offset (hypervisor/tscsync.py)."""
        read_tsc = self._tsc_reader()
        host, port = self.config.nodes[0].control_address
        deadline = time.monotonic() + self.config.setup_timeout
        try:
            link = connect_peer((host, port), deadline, self_id=self.id, peer=0, shape=self.shape,
                                secret=self.secret, purpose=b"control", who=f"node 0 at {host}:{port}")
        except HandshakeError as err:
            if "nobody listening" in str(err) or "cannot connect" in str(err):
                raise NodeError(Status.CLUSTER, f"node {self.id}: cannot reach node 0's control port: {err}") from None
            raise
        sock = link.sock
        channel = Channel(sock, 0, link.keys)
        channel.send(control.encode(Msg.JOIN, control.JOIN.pack(digest, self.config.vcpus, self.config.mem)))
        sock.settimeout(self.config.setup_timeout)
        try:
            self.tsc_estimate = tscsync.measure(channel, read_tsc)
            frame = channel.receive()
        except tscsync.StoppedByHead as stopped:
            frame = stopped.frame
        except ControlError as err:
            raise NodeError(Status.CLUSTER, f"node {self.id}: {err}") from None
        except (socket.timeout, OSError) as err:
            raise NodeError(Status.CLUSTER, f"node {self.id}: node 0 stopped answering during the clock "
                                            f"probes ({err.strerror or 'timed out'})") from None
        if frame.type is Msg.STOP:
            status, line = control.decode_status(frame)
            if status == Status.INTERRUPTED:
                raise StoppedWhileJoining(f"node {self.id}: stopped by node 0: {line}")
            raise NodeError(status, f"node {self.id}: refused by node 0: {line}")
        if frame.type is not Msg.GO:
            raise NodeError(Status.CLUSTER, f"node 0 sent {frame.type.name} instead of GO")
        (offset,) = control.GO.unpack(frame.payload)
        sock.settimeout(SILENCE_SECONDS)
        channels[0] = channel
        return offset
