"""One node of a guest that spans several: ``ivyvm node --config F --id K``.

Every node holds the whole guest RAM (a memfd kept coherent by the DSM core)
and runs its own vCPUs. Node 0 also holds the devices and decides how the
guest ends; node k > 0 forwards its port I/O to node 0 and waits to be told
to stop. Start-up, in this order on every node, so no vCPU can fault before
every DSM server runs:

    RAM (node 0 writes boot tables and image) -> DSM mesh, authenticated
    -> DSM core started -> control channel to node 0, JOIN checked by node 0
    -> clock probes (host TSC against node 0's) -> GO from node 0 (with its
    guest-TSC offset) -> vCPUs start

Failure handling: whichever notices first, the DSM core (a peer silent or
gone while a page is awaited) or the control channel (EOF, silence, garbage),
stops the local machine with status 8 and one line naming the lost node.
A guest error on node k is sent to node 0, which reports it once.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from . import control, profile, stopsignals, trace, tscsync, watchdog
from .base import StdoutConsole, say, write_stderr
from .config import ClusterConfig, ConfigError
from .control import Channel, ControlError, Msg
from .crypto import secret_problem
from .dsm import DsmError, DsmNode, DsmOptions
from .handshake import ClusterShape, HandshakeError
from .loader import Image
from .machine import Machine, MachineError, RunResult
from .node_control import ControlLinks
from .node_failure import SAID_BY_EVERY_NODE, NodeError, StoppedWhileJoining, dsm_failure, report
from .node_io import ForwardedIo, IoServer
from .node_join import Joiner
from .node_routes import InterruptRoutes, Parking
from .nodestats import write_node_stats
from .runlimit import TimeLimit, deadline_for
from .status import Status

STOP_LINGER_SECONDS = 2.0      # node 0 waits this long for peers to leave before closing the DSM

# A traced node's ring (native/trace.h): 64 bytes a record, memory touched only as written.
# A remote fault makes about ten records, so this covers some 100 000 of them.
TRACE_RECORDS = 1 << 20


class Node:
    """One node's run: joins (node_join), then its machine runs while its control links
    (node_control) carry forwarded I/O (node_io), interrupts and parking (node_routes);
    how it ends is said here, worded by node_failure."""

    def __init__(self, config: ClusterConfig, node_id: int, secret: bytes, verbose: bool = False,
                 stats: bool = False, trace_file: Path | None = None,
                 stats_json: Path | None = None):
        if not 0 <= node_id < config.nnodes:
            raise NodeError(2, f"--id {node_id}: the config has nodes 0..{config.nnodes - 1}")
        self.config = config
        self.id = node_id
        self.spec = config.nodes[node_id]
        self.verbose = verbose
        self.show_stats = stats
        # This node's own trace file: --trace, else [cluster] trace with the node's id in its name.
        self.trace_file = trace_file or (trace.part_path(config.trace, node_id) if config.trace else None)
        self.stats_json = stats_json
        self._sampler: profile.FaultSampler | None = None
        self._run_started = 0.0
        self.options = DsmOptions(read_ownership=config.read_ownership, manager=config.manager,
                                  migratory=config.migratory, first_touch=config.first_touch,
                                  prefetch=config.prefetch, map_owned=config.map_owned, batch=config.batch,
                                  trace_records=TRACE_RECORDS if self.trace_file else 0, **config.dsm_tuning())
        self.shape = ClusterShape.of(config.nnodes, config.mem, self.options)
        self.channels: dict[int, Channel] = {}
        self.machine: Machine | None = None
        self.dsm: DsmNode | None = None
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self.deadline = deadline_for(config.timeout)
        self._time_limit: TimeLimit | None = None
        self._watchdog: watchdog.Watchdog | None = None
        self.joiner = Joiner(config, node_id, secret, self.shape, self.options, self.deadline)
        machine = lambda: self.machine  # noqa: E731
        self.forwarded = ForwardedIo(self.channels, self._stopping)
        self.routes = InterruptRoutes(config, node_id, self.channels, machine)
        self.parking = Parking(config, node_id, self.channels, machine)
        self.control = ControlLinks(config, node_id, self.channels, self._closing, machine, lambda: self.dsm,
                                    self.forwarded, IoServer(config, lambda: self._devices()), self.routes,
                                    self.parking, self._lost)

    def _stopping(self) -> bool:
        return self._closing.is_set() or (self.machine is not None and self.machine.result is not None)

    def _devices(self):  # type: ignore[no-untyped-def]
        assert self.machine is not None
        return self.machine.io

    def _create_machine(self, image: Image) -> Machine:
        is_head = self.id == 0
        try:
            return Machine(image, vcpus=self.config.vcpus, mem=self.config.mem, local_vcpus=self.spec.vcpus,
                           write_memory=is_head, io=None if is_head else self.forwarded, router=self.routes,
                           console=StdoutConsole(), verbose=self.verbose, node=self.id,
                           on_all_parked=self.parking.local_all_parked, on_vcpu_thread=self._vcpu_thread)
        except MachineError as err:
            raise NodeError(Status.HOST, f"node {self.id}: {err}") from None

    # --- running ------------------------------------------------------------
    def run(self) -> int:
        try:
            image = self.joiner.load()
            digest = image.digest
            dsm_listener, control_listener = self.joiner.open_listeners()
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
                    with self.joiner.progress() as progress:
                        self.dsm = self.joiner.connect_dsm(machine, dsm_listener)
                        self.joiner.as_head(digest, control_listener, progress, self.channels)
                    self._time_limit = self.joiner.time_limit(machine)
                    # One guest clock: node 0's offset on every vCPU of every node.
                    offset = machine.tsc_offset()
                    machine.align_tsc(offset)
                    for channel in self.channels.values():
                        channel.send(control.encode(Msg.GO, control.GO.pack(offset)))
                else:
                    self.dsm = self.joiner.connect_dsm(machine, dsm_listener)
                    node0_offset = self.joiner.as_member(digest, self.channels)
                    self._align_to_node0(machine, node0_offset)
                self.control.start_clocks()
                self._spawn(self._watch_dsm, "dsm-watch")
                for peer, channel in self.channels.items():
                    self._spawn(lambda c=channel: self.control.receive_loop(c), f"control-rx-{peer}")
                self._spawn(self.control.heartbeat, "control-ping")
                if self.show_stats or self.stats_json is not None:
                    self._sampler = profile.FaultSampler(self.dsm).start()
                self._run_started = time.monotonic()
                self._watchdog = self.control.pages.watchdog = watchdog.Watchdog(
                    self.id, self.config.nnodes, self.dsm, self.config.stall_warn, self.control.pages.ask, say,
                    quiet=lambda: self._closing.is_set() or machine.result is not None
                    or (self.dsm is not None and self.dsm.error is not None)).start()
                result = machine.run()
                return self._finish(result)
            except KeyboardInterrupt:
                if self.id == 0:
                    self._stop_joined_nodes()
                raise
            finally:
                self._shutdown()
        except (HandshakeError, DsmError, ControlError, ConfigError) as err:
            return report(Status.CLUSTER, str(err))
        except StoppedWhileJoining as err:
            self._say_interrupted(str(err))
            return Status.INTERRUPTED
        except NodeError as err:
            return report(err.status, str(err))
        except KeyboardInterrupt:
            self._say_interrupted(f"node {self.id}: {stopsignals.interrupted_line()}")
            return Status.INTERRUPTED

    def _stop_joined_nodes(self) -> None:
        """Node 0 signalled while nodes join: those it has met hear why, rather than see it vanish."""
        for channel in self.channels.values():
            try:
                channel.send(control.encode_status(Msg.STOP, Status.INTERRUPTED, stopsignals.interrupted_line()))
            except (OSError, ControlError):
                pass        # gone already, or its link broke: it reports that itself

    @staticmethod
    def _say_interrupted(line: str) -> None:
        if not stopsignals.supervised():
            say(line)

    def _finish(self, result: RunResult) -> int:
        """Turn the local machine's end into the cluster's: report once, stop the others."""
        result = self._blame_the_dsm(result)
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
                report(result.status, result.message)
            elif interrupted:
                self._say_interrupted(f"node 0: {message}")
            self._linger()
            return result.status
        if self.control.stop_from_node0 is not None and not result.error:
            status, line = self.control.stop_from_node0
            # A lost node concerns every host's operator; a guest error is said once, by node 0.
            if status in SAID_BY_EVERY_NODE and self.control.stop_was_failure:
                report(status, f"node {self.id}: stopped by node 0: {line}")
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
            report(result.status, message)
        try:
            self.channels[0].send(control.encode_status(Msg.FAILED, result.status, message))
        except (OSError, KeyError):
            if result.status not in (*SAID_BY_EVERY_NODE, Status.INTERRUPTED):
                report(result.status, message)
        return result.status

    def _blame_the_dsm(self, result: RunResult) -> RunResult:
        """A guest that faults after its node's DSM core failed ran on pages nobody served any more:
        the failure is the DSM's (a lost peer, a refused frame), not the guest's."""
        guest_faults = (Status.GUEST_IO, Status.TRIPLE_FAULT, Status.ENTRY_FAILURE)
        if result.status in guest_faults and self.dsm is not None and self.dsm.failure is not None:
            line, status = dsm_failure(self.id, self.dsm)
            return RunResult(status, line, error=True)
        return result

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
        if self._watchdog is not None:
            self._watchdog.stop()
        for channel in self.channels.values():
            channel.close()
        for thread in self._threads:
            thread.join(1.0)
        vcpu_threads = self.machine.vcpu_threads() if self.machine is not None else {}
        if self.dsm is not None:
            # Its thread serves peers from guest RAM and writes their replies into it until it
            # stops: unmapping the RAM first let a late request crash the node (CI: SIGSEGV).
            self.dsm.stop()
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
        assert self.dsm is not None and self.trace_file is not None   # stopped: every record is in
        clock = self.control.clocks[0].estimate() if 0 in self.control.clocks else None
        part = trace.NodeTrace(self.id, self.config.nnodes, self.dsm.trace_records(), vcpu_threads, clock,
                               trace.boot_id(), self.dsm.trace_dropped)
        if part.dropped:
            say(f"node {self.id}: the trace ring was full: {part.dropped} records dropped after the first "
                f"{len(part.records)}")
        try:
            trace.write_node_trace(self.trace_file, part)
        except OSError as err:
            say(f"node {self.id}: cannot write the trace to {self.trace_file}: {err.strerror or err}")

    def _align_to_node0(self, machine: Machine, node0_offset: int) -> None:
        """Node k: node 0's vCPU offset, plus the hosts' TSC offset where it is measurably not 0."""
        found = self.joiner.tsc_estimate
        assert found is not None
        asked = found.vcpu_offset(node0_offset)
        machine.align_tsc(asked)
        if self.show_stats or self.verbose or not found.same_clock:
            say(tscsync.describe(self.id, found, asked))

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
                self._lost(*dsm_failure(self.id, self.dsm))
                return


def run_node(config: ClusterConfig, node_id: int, verbose: bool = False, stats: bool = False,
             trace_file: Path | None = None, stats_json: Path | None = None) -> int:
    """Entry point of ``ivyvm node``: SIGINT and SIGTERM stop the node (one line, status 130)."""
    stopsignals.install()
    try:
        secret = config.read_secret()
    except ConfigError as err:
        return report(2, str(err))
    problem = secret_problem(secret)     # every path, IVYVM_SECRET too: the handshake needs 16 bytes
    if problem:
        return report(Status.USAGE, problem)
    return Node(config, node_id, secret, verbose, stats, trace_file, stats_json).run()
