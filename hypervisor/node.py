"""One node of a guest that spans several: ``ivyvm node --config F --id K``.

Every node holds the whole guest RAM (a memfd kept coherent by the DSM core)
and runs its own vCPUs. Node 0 also holds the devices and decides how the
guest ends; node k > 0 forwards its port I/O to node 0 and waits to be told
to stop. Start-up, in this order on every node, so no vCPU can fault before
every DSM server runs:

    RAM (node 0 writes boot tables and image) -> DSM mesh, authenticated
    -> DSM core started -> control channel to node 0, JOIN checked by node 0
    -> GO from node 0 -> vCPUs start

Failure handling: whichever notices first, the DSM core (a peer silent or
gone while a page is awaited) or the control channel (EOF, silence, garbage),
stops the local machine with status 8 and one line naming the lost node.
A guest error on node k is sent to node 0, which reports it once.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import control, control_decode, profile, runlimit, stopsignals, trace
from .base import LISTEN_FDS_ENV, StdoutConsole, say, write_stderr
from .clocksync import ClockSync
from .config import ClusterConfig, ConfigError
from .control import Channel, ControlError, Frame, Msg
from .devices import GuestIoError, describe_access
from .crypto import secret_problem
from .dsm import DsmError, DsmFailure, DsmNode, DsmOptions
from .handshake import ClusterShape, HandshakeError, accept_peers, connect_mesh, connect_peer, listen
from .loader import Image, LoaderError, load_image
from .machine import Machine, MachineError, RunResult
from .nodestats import write_node_stats
from .native_consts import HEARTBEAT_MS, TIMEOUT_MS, FailKind
from .status import Status

# The control channel keeps the DSM links' liveness timing (native/runtime.h).
HEARTBEAT_SECONDS = HEARTBEAT_MS / 1000
SILENCE_SECONDS = TIMEOUT_MS / 1000    # a control peer quiet this long is taken for dead
DSM_GRACE_SECONDS = HEARTBEAT_SECONDS * 1.6   # a DSM heartbeat tick and some: see _receive_loop
STOP_LINGER_SECONDS = 2.0      # node 0 waits this long for peers to leave before closing the DSM

# A traced node's ring (native/trace.h): 64 bytes a record, memory touched only as written.
# A remote fault makes about ten records, so this covers some 100 000 of them.
TRACE_RECORDS = 1 << 20

FLAG_UNHANDLED = control.FLAG_UNHANDLED


class NodeError(Exception):
    """The node cannot join or keep its cluster; the message is the user's one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Pending:
    """A forwarded access waiting for node 0's answer."""

    seq: int
    size: int
    event: threading.Event = field(default_factory=threading.Event)
    value: int = 0
    unhandled: bool = False


class Node:
    def __init__(self, config: ClusterConfig, node_id: int, secret: bytes, verbose: bool = False,
                 stats: bool = False, trace_file: Path | None = None,
                 stats_json: Path | None = None):
        if not 0 <= node_id < config.nnodes:
            raise NodeError(2, f"--id {node_id}: the config has nodes 0..{config.nnodes - 1}")
        self.config = config
        self.id = node_id
        self.spec = config.nodes[node_id]
        self.secret = secret
        self.verbose = verbose
        self.show_stats = stats
        # This node's own trace file: --trace, else [cluster] trace with the node's id in its name.
        self.trace_file = trace_file or (trace.part_path(config.trace, node_id) if config.trace else None)
        self.stats_json = stats_json
        self._sampler: profile.FaultSampler | None = None
        self._run_started = 0.0
        self.options = DsmOptions(read_ownership=config.read_ownership, manager=config.manager,
                                  trace_records=TRACE_RECORDS if self.trace_file else 0, **config.dsm_tuning())
        self.shape = ClusterShape.of(config.nnodes, config.mem, self.options)
        self.channels: dict[int, Channel] = {}
        self._clocks: dict[int, ClockSync] = {}   # per control channel, from its heartbeats
        self.machine: Machine | None = None
        self.dsm: DsmNode | None = None
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._io_seq: dict[int, control_decode.Sequence] = {}   # node 0: each peer's next IO seq
        self._stop_from_node0: tuple[int, str] | None = None
        self._stop_was_failure = False
        self._parked_nodes: set[int] = set()
        self._parked_lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self.deadline = runlimit.deadline_for(config.timeout)
        self._time_limit: runlimit.TimeLimit | None = None

    # --- start-up -----------------------------------------------------------
    def _load(self) -> Image:
        try:
            return load_image(self.config.image, self.config.mem, self.config.vcpus)
        except LoaderError as err:
            raise NodeError(Status.IMAGE, str(err)) from None

    def _create_machine(self, image: Image) -> Machine:
        is_head = self.id == 0
        try:
            return Machine(image, vcpus=self.config.vcpus, mem=self.config.mem, local_vcpus=self.spec.vcpus,
                           write_memory=is_head, io=None if is_head else self, router=self,
                           console=StdoutConsole(), verbose=self.verbose, node=self.id,
                           on_all_parked=self._local_all_parked, on_vcpu_thread=self._vcpu_thread)
        except MachineError as err:
            raise NodeError(Status.HOST, f"node {self.id}: {err}") from None

    def _open_listeners(self) -> tuple[socket.socket, socket.socket | None]:
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

    def _connect_dsm(self, machine: Machine, listener: socket.socket) -> DsmNode:
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

    def _join_progress(self) -> runlimit.JoinProgress:
        others = {n.id: f"{n.host}:{n.port}" for n in self.config.nodes if n.id != self.id}
        return runlimit.JoinProgress(others, say)

    def _start_time_limit(self, machine: Machine) -> None:
        """Node 0 ends the run at the deadline; its STOP carries Status.TIMEOUT to the others."""
        if self.deadline is None:
            return
        assert self.config.timeout is not None
        line = runlimit.timeout_line(self.config.timeout, self.config.nnodes)
        self._time_limit = runlimit.TimeLimit(
            self.deadline, lambda: machine.stop(Status.TIMEOUT, line, error=True)).start()

    def _join_as_head(self, digest: bytes, listener: socket.socket, progress: runlimit.JoinProgress) -> None:
        """Node 0: accept every other node's control connection and check its JOIN."""
        deadline = time.monotonic() + self.config.setup_timeout
        if self.deadline is not None and self.deadline < deadline:
            deadline = self.deadline
        waiting = set(range(1, self.config.nnodes))
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
                self.channels[peer] = channel     # closed by _shutdown whatever happens next
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
                sock.settimeout(SILENCE_SECONDS)
        finally:
            listener.close()

    def _join_as_member(self, digest: bytes) -> None:
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
        frame = channel.receive()
        if frame.type is Msg.STOP:
            status, line = control.decode_status(frame)
            raise NodeError(status, f"node {self.id}: refused by node 0: {line}")
        if frame.type is not Msg.GO:
            raise NodeError(Status.CLUSTER, f"node 0 sent {frame.type.name} instead of GO")
        sock.settimeout(SILENCE_SECONDS)
        self.channels[0] = channel

    # --- running ------------------------------------------------------------
    def run(self) -> int:
        try:
            image = self._load()
            digest = image.digest
            dsm_listener, control_listener = self._open_listeners()
            try:
                self.machine = machine = self._create_machine(image)
            except BaseException:
                dsm_listener.close()
                if control_listener is not None:
                    control_listener.close()
                raise
            try:
                if self.id == 0:
                    assert control_listener is not None
                    with self._join_progress() as progress:
                        self.dsm = self._connect_dsm(machine, dsm_listener)
                        self._join_as_head(digest, control_listener, progress)
                    self._start_time_limit(machine)
                    for channel in self.channels.values():
                        channel.send(control.encode(Msg.GO))
                else:
                    self.dsm = self._connect_dsm(machine, dsm_listener)
                    self._join_as_member(digest)
                self._clocks = {peer: ClockSync() for peer in self.channels}
                self._spawn(self._watch_dsm, "dsm-watch")
                for peer, channel in self.channels.items():
                    self._spawn(lambda c=channel: self._receive_loop(c), f"control-rx-{peer}")
                self._spawn(self._heartbeat, "control-ping")
                if self.show_stats or self.stats_json is not None:
                    self._sampler = profile.FaultSampler(self.dsm).start()
                self._run_started = time.monotonic()
                result = machine.run()
                return self._finish(result)
            finally:
                self._shutdown()
        except (HandshakeError, DsmError, ControlError, ConfigError) as err:
            return _report(Status.CLUSTER, str(err))
        except NodeError as err:
            return _report(err.status, str(err))
        except KeyboardInterrupt:
            self._say_interrupted(f"node {self.id}: {stopsignals.interrupted_line()}")
            return Status.INTERRUPTED

    @staticmethod
    def _say_interrupted(line: str) -> None:
        if not stopsignals.supervised():
            say(line)

    def _finish(self, result: RunResult) -> int:
        """Turn the local machine's end into the cluster's: report once, stop the others."""
        interrupted = result.status == Status.INTERRUPTED and not result.error   # a signal to this node
        if self.id == 0:
            message = stopsignals.interrupted_line() if interrupted else result.message
            for channel in self.channels.values():
                try:
                    channel.send(control.encode_status(Msg.STOP, result.status, message,
                                                       control.FLAG_FAILURE if result.error else 0))
                except (OSError, ControlError):
                    pass
            if result.error:
                _report(result.status, result.message)
            elif interrupted:
                self._say_interrupted(f"node 0: {message}")
            self._linger()
            return result.status
        if self._stop_from_node0 is not None and not result.error:
            status, line = self._stop_from_node0
            # A lost node concerns every host's operator; a guest error is said once, by node 0.
            if status in SAID_BY_EVERY_NODE and self._stop_was_failure:
                _report(status, f"node {self.id}: stopped by node 0: {line}")
            elif status == Status.INTERRUPTED:
                self._say_interrupted(f"node {self.id}: stopped by node 0: {line}")
            return status
        # Node 0 reports guest errors once; a lost node is also said here,
        # since this node's operator may be on another host, and so is a
        # signal to this node (node 0 says it too, for its own operator).
        message = result.message
        if result.status == Status.INTERRUPTED:
            message = f"node {self.id}: {stopsignals.interrupted_line()}"
            self._say_interrupted(message)
        elif result.status in SAID_BY_EVERY_NODE and result.error:
            _report(result.status, message)
        try:
            self.channels[0].send(control.encode_status(Msg.FAILED, result.status, message))
        except (OSError, KeyError):
            if result.status not in (*SAID_BY_EVERY_NODE, Status.INTERRUPTED):
                _report(result.status, message)
        return result.status

    def _linger(self) -> None:
        """Give peers a moment to leave before the DSM says BYE, so none sees its server vanish."""
        deadline = time.monotonic() + STOP_LINGER_SECONDS
        for thread in self._threads:
            if thread.name.startswith("control-rx"):
                thread.join(max(0.0, deadline - time.monotonic()))

    def _shutdown(self) -> None:
        self._closing.set()
        if self._time_limit is not None:
            self._time_limit.cancel()
        for channel in self.channels.values():
            channel.close()
        for thread in self._threads:
            thread.join(1.0)
        vcpu_threads = self.machine.vcpu_threads() if self.machine is not None else {}
        if self.machine is not None:
            self.machine.close()
        if self.dsm is not None:
            figures = self.dsm.stats()
            self._report_profile(self.dsm)
            write_node_stats(self.id, self.spec.vcpus, figures)
            if self.trace_file is not None:
                self._write_trace(vcpu_threads)
            self.dsm.close()

    def _write_trace(self, vcpu_threads: dict[int, int]) -> None:
        """This node's records, its vCPU threads and its clock against node 0's, to its own file."""
        assert self.dsm is not None and self.trace_file is not None
        self.dsm.stop()        # every record is in, none is being written
        clock = self._clocks[0].estimate() if 0 in self._clocks else None
        part = trace.NodeTrace(self.id, self.config.nnodes, self.dsm.trace_records(), vcpu_threads, clock,
                               trace.boot_id(), self.dsm.trace_dropped)
        if part.dropped:
            say(f"node {self.id}: the trace ring was full: {part.dropped} records dropped after the first "
                f"{len(part.records)}")
        try:
            trace.write_node_trace(self.trace_file, part)
        except OSError as err:
            say(f"node {self.id}: cannot write the trace to {self.trace_file}: {err.strerror or err}")

    def _vcpu_thread(self, vcpu: int, thread_id: int) -> None:
        """In each vCPU thread before it runs: its faults are then counted as this vCPU's blocked time."""
        if self.dsm is not None:
            self.dsm.register_vcpu(vcpu, thread_id)

    def _report_profile(self, dsm: DsmNode) -> None:
        if self._sampler is None:
            return
        run_seconds = time.monotonic() - self._run_started
        report = profile.node_report(self.id, self.spec.vcpus, dsm, run_seconds, self._sampler.stop())
        if self.stats_json is not None:
            try:
                profile.write_json(self.stats_json, profile.document([report]))
            except OSError as err:
                say(f"node {self.id}: cannot write --stats-json {self.stats_json}: {err.strerror or err}")
        if self.show_stats:
            write_stderr(profile.format_table([report]))

    def _spawn(self, target, name: str) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _lost(self, line: str, status: int = Status.CLUSTER) -> None:
        assert self.machine is not None
        if not self._closing.is_set():
            self.machine.stop(status, line, error=True)

    def _watch_dsm(self) -> None:
        assert self.dsm is not None
        while not self._closing.is_set():
            # A short wait: _shutdown joins this thread before closing the DSM, and a stop must be quick.
            if self.dsm.wait_failed(0.05):
                self._lost(*self._dsm_failure())
                return

    def _heartbeat(self) -> None:
        while not self._closing.wait(HEARTBEAT_SECONDS):
            for peer, channel in list(self.channels.items()):
                try:
                    channel.send(control.encode(Msg.PING, self._clocks[peer].stamp()))
                except (OSError, ControlError):
                    pass   # the receiving side reports the loss, with more detail

    def _receive_loop(self, channel: Channel) -> None:
        try:
            while not self._closing.is_set():
                self._dispatch(channel, channel.receive())
        except socket.timeout:
            # The DSM core times the same peer out with the same bound, checking once a
            # heartbeat; its line names the page that was awaited, so let it speak first.
            if not self._closing.is_set() and self.dsm is not None and self.dsm.wait_failed(DSM_GRACE_SECONDS):
                self._lost(*self._dsm_failure())
                return
            self._lost(f"node {self.id}: node {channel.peer} silent for {SILENCE_SECONDS:.1f} s "
                       f"on the control connection, {self._waiting_for()}")
        except (ControlError, OSError) as err:
            if self._closing.is_set() or self._stop_from_node0 is not None:
                return
            reason = str(err) if isinstance(err, ControlError) else \
                f"control connection to node {channel.peer} failed: {err.strerror or err}"
            self._lost(f"node {self.id}: {reason}, {self._waiting_for()}")
        except Exception as err:   # noqa: BLE001 - whatever a frame caused, the peer is lost, not this thread
            if not self._closing.is_set():
                self._lost(f"node {self.id}: a control frame from node {channel.peer} could not be handled "
                           f"({type(err).__name__}: {err}), {self._waiting_for()}")

    def _dsm_failure(self) -> tuple[str, int]:
        """The DSM core's line (it names the page it awaited) and the status its kind of failure means."""
        assert self.dsm is not None
        failure = self.dsm.failure
        if failure is None:
            return f"node {self.id}: the DSM core stopped", Status.CLUSTER
        return dsm_failure_line(failure), DSM_FAILURE_STATUS[failure.kind]

    def _waiting_for(self) -> str:
        """What this node was waiting for from the lost peer, for the user's one line."""
        pending = sorted(self._pending)
        if pending:
            who = f"vCPU {pending[0]} was" if len(pending) == 1 else f"vCPUs {', '.join(map(str, pending))} were"
            return f"while {who} waiting for forwarded I/O"
        if self.id == 0:
            return "while waiting for its heartbeat, forwarded I/O and interrupts"
        return "while waiting for node 0's heartbeat, I/O results and interrupts"

    def _dispatch(self, channel: Channel, frame: Frame) -> None:
        """Apply one frame, every field checked first (control_decode): a bad one loses the peer."""
        assert self.machine is not None
        kind, peer = frame.type, channel.peer
        control_decode.check_flags(frame, peer)
        if kind is Msg.PING:
            clock = self._clocks.get(peer)
            if clock is not None:     # None only before the join completed
                clock.received(frame.payload)
            return
        if kind is Msg.IO and self.id == 0:
            self._serve_io(channel, frame)
        elif kind is Msg.IO_DONE and self.id != 0:
            answer = control_decode.decode_io_done(frame)
            pending = self._pending.get(answer.vcpu)
            control_decode.check_answer(answer, peer, None if pending is None else (pending.seq, pending.size))
            assert pending is not None
            pending.value = answer.value
            pending.unhandled = answer.unhandled
            pending.event.set()
        elif kind is Msg.IRQ:
            if self.id == 0:
                target, vector = control_decode.decode_irq(frame, peer, self.config.vcpus, None,
                                                           self.config.nodes[peer].vcpus)
            else:
                target, vector = control_decode.decode_irq(frame, peer, self.config.vcpus, self.spec.vcpus)
            self.raise_interrupt(target, vector)
        elif kind is Msg.PARKED and self.id == 0:
            control_decode.decode_parked(frame, peer, self.config.nodes[peer].vcpus)
            self._node_parked(peer)
        elif kind is Msg.FAILED and self.id == 0:
            status, line = control.decode_status(frame)
            if status in SAID_BY_EVERY_NODE:
                # Node k has said that line itself (see _finish); node 0 says its own.
                line = f"node 0: stopped by node {peer}: {line}"
            self.machine.stop(status, line, error=True)
        elif kind is Msg.STOP and self.id != 0:
            self._stop_was_failure = bool(frame.flags & control.FLAG_FAILURE)
            self._stop_from_node0 = control.decode_status(frame)
            self.machine.stop(*self._stop_from_node0)
        elif kind is Msg.BYE:
            raise ControlError(f"node {peer} left")
        else:
            raise ControlError(f"node {peer} sent {kind.name}, which node {self.id} never expects")

    # --- devices seam (PortIo) on node k > 0 ----------------------------------
    def io(self, vcpu: int, port: int, size: int, is_write: bool, value: int) -> int | None:
        """Carry a port access to node 0's devices and wait for it to be done there.

        Even console writes wait: a guest that prints under a lock expects its
        line to be out before the lock is released, as on one machine.
        """
        channel = self.channels[0]
        pending: _Pending | None = None
        try:
            # Numbered and sent under one lock: node 0 checks that the numbers arrive in order.
            with self._seq_lock:
                self._seq = self._seq % 0xFFFFFFFF + 1
                pending = self._pending[vcpu] = _Pending(self._seq, size)
                channel.send(control.encode(Msg.IO, control.IO.pack(self._seq, vcpu, port, size, int(is_write),
                                                                   value if is_write else 0)))
            while not pending.event.wait(0.1):
                if self._closing.is_set() or (self.machine and self.machine.result is not None):
                    return 0 if not is_write else None   # the VM is stopping; the value is never used
        finally:
            if pending is not None:
                del self._pending[vcpu]
        if pending.unhandled:
            raise GuestIoError(f"unhandled port I/O: {describe_access(port, size, is_write, value)}")
        return None if is_write else pending.value

    def _serve_io(self, channel: Channel, frame: Frame) -> None:
        """Node 0: run a forwarded access on the real devices and answer it."""
        assert self.machine is not None
        peer = channel.peer
        request = control_decode.decode_io(frame, peer, self.config.nodes[peer].vcpus)
        self._io_seq.setdefault(peer, control_decode.Sequence(peer)).check(request.seq)
        flags, result = 0, 0
        try:
            result = self.machine.io.io(request.vcpu, request.port, request.size, request.is_write,
                                        request.value) or 0
            result &= (1 << 8 * request.size) - 1     # what the access's width carries, as on one node
        except GuestIoError:
            flags = FLAG_UNHANDLED
        channel.send(control.encode(Msg.IO_DONE, control.IO_DONE.pack(request.seq, request.vcpu, result), flags))

    # --- interrupts (InterruptRouter) -----------------------------------------
    def raise_interrupt(self, target_vcpu: int, vector: int) -> None:
        """Deliver locally, or send towards the node running the target (via node 0)."""
        assert self.machine is not None
        if target_vcpu in self.spec.vcpus:
            self.machine.inject(target_vcpu, vector)
            return
        owner = self.config.node_of_vcpu(target_vcpu)
        via = owner if self.id == 0 else 0
        self.channels[via].send(control.encode(Msg.IRQ, control.IRQ.pack(target_vcpu, vector)))

    # --- parking --------------------------------------------------------------
    def _local_all_parked(self) -> None:
        if self.id == 0:
            self._node_parked(0)
        else:
            self.channels[0].send(control.encode(Msg.PARKED, control.PARKED.pack(len(self.spec.vcpus))))

    def _node_parked(self, node: int) -> None:
        assert self.machine is not None
        with self._parked_lock:
            self._parked_nodes.add(node)
            everyone = len(self._parked_nodes) == self.config.nnodes
        if everyone:
            self.machine.stop(0, "every vCPU parked")


# How each kind of DSM core failure ends the run (native/runtime.h, enum ivy_rt_fail_kind).
DSM_FAILURE_STATUS = {
    FailKind.PEER_LOST: Status.CLUSTER,
    FailKind.PEER_LEFT: Status.CLUSTER,
    FailKind.PEER_GARBAGE: Status.CLUSTER,
    FailKind.PROTOCOL: Status.INTERNAL,
    FailKind.ENGINE: Status.INTERNAL,
    FailKind.HOST: Status.HOST,
}
# Failures every node's operator must hear of on their own host, not only node 0's.
SAID_BY_EVERY_NODE = (Status.CLUSTER, Status.INTERNAL)


def dsm_failure_line(failure: DsmFailure) -> str:
    """The user's line for a DSM core failure: an ivyvm bug is called one, naming the transition that refused."""
    if failure.internal:
        return (f"node {failure.node}: internal error (a bug in ivyvm, not a fault of the cluster): {failure.text}; "
                f"refused by the transition {failure.what}")
    return failure.line


def _report(status: int, line: str) -> int:
    say(line)
    return status


def run_node(config: ClusterConfig, node_id: int, verbose: bool = False, stats: bool = False,
             trace_file: Path | None = None, stats_json: Path | None = None) -> int:
    """Entry point of ``ivyvm node``: SIGINT and SIGTERM stop the node (one line, status 130)."""
    stopsignals.install()
    try:
        secret = config.read_secret()
    except ConfigError as err:
        return _report(2, str(err))
    problem = secret_problem(secret)     # every path, IVYVM_SECRET too: the handshake needs 16 bytes
    if problem:
        return _report(Status.USAGE, problem)
    return Node(config, node_id, secret, verbose, stats, trace_file, stats_json).run()
