"""The port-I/O seam of a spanning guest: node k > 0 forwards, node 0 serves on its devices."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from . import control, control_decode
from .config import ClusterConfig
from .control import Channel, Frame, Msg
from .devices import GuestIoError, PortIo, describe_access


@dataclass
class PendingAccess:
    """A forwarded access waiting for node 0's answer."""

    seq: int
    size: int
    event: threading.Event = field(default_factory=threading.Event)
    value: int = 0
    unhandled: bool = False


class ForwardedIo:
    """Node k > 0's devices (PortIo): every access goes to node 0 and waits for its answer there."""

    def __init__(self, channels: dict[int, Channel], stopping: Callable[[], bool]) -> None:
        self.channels = channels          # the node's control channels; node 0's is the one used
        self.stopping = stopping          # the VM is stopping: nobody will use an answer any more
        self.pending: dict[int, PendingAccess] = {}
        self._seq = 0
        self._seq_lock = threading.Lock()

    def io(self, vcpu: int, port: int, size: int, is_write: bool, value: int) -> int | None:
        """Carry a port access to node 0's devices and wait for it to be done there.

        Even console writes wait: a guest that prints under a lock expects its
        line to be out before the lock is released, as on one machine.
        """
        channel = self.channels[0]
        pending: PendingAccess | None = None
        try:
            # Numbered and sent under one lock: node 0 checks that the numbers arrive in order.
            with self._seq_lock:
                self._seq = self._seq % 0xFFFFFFFF + 1
                pending = self.pending[vcpu] = PendingAccess(self._seq, size)
                channel.send(control.encode(Msg.IO, control.IO.pack(self._seq, vcpu, port, size, int(is_write),
                                                                   value if is_write else 0)))
            while not pending.event.wait(0.1):
                if self.stopping():
                    return 0 if not is_write else None   # the VM is stopping; the value is never used
        finally:
            if pending is not None:
                del self.pending[vcpu]
        if pending.unhandled:
            raise GuestIoError(f"unhandled port I/O: {describe_access(port, size, is_write, value)}")
        return None if is_write else pending.value

    def answered(self, frame: Frame, peer: int) -> None:
        """IO_DONE from node 0: checked against the access it answers, then that vCPU goes on."""
        answer = control_decode.decode_io_done(frame)
        pending = self.pending.get(answer.vcpu)
        control_decode.check_answer(answer, peer, None if pending is None else (pending.seq, pending.size))
        assert pending is not None
        pending.value = answer.value
        pending.unhandled = answer.unhandled
        pending.event.set()

    def waiting_vcpus(self) -> list[int]:
        return sorted(self.pending)


class IoServer:
    """Node 0: runs the other nodes' forwarded accesses on the real devices and answers each."""

    def __init__(self, config: ClusterConfig, devices: Callable[[], PortIo]) -> None:
        self.config = config
        self.devices = devices
        self._io_seq: dict[int, control_decode.Sequence] = {}   # each peer's next IO seq

    def serve(self, channel: Channel, frame: Frame) -> None:
        peer = channel.peer
        request = control_decode.decode_io(frame, peer, self.config.nodes[peer].vcpus)
        self._io_seq.setdefault(peer, control_decode.Sequence(peer)).check(request.seq)
        flags, result = 0, 0
        try:
            result = self.devices().io(request.vcpu, request.port, request.size, request.is_write,
                                       request.value) or 0
            result &= (1 << 8 * request.size) - 1     # what the access's width carries, as on one node
        except GuestIoError:
            flags = control.FLAG_UNHANDLED
        channel.send(control.encode(Msg.IO_DONE, control.IO_DONE.pack(request.seq, request.vcpu, result), flags))
