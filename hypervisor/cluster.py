"""``ivyvm run --nodes N``: N node processes on this machine, one supervisor.

The supervisor owns no guest state. It picks free ports, makes a fresh
random secret, writes the cluster description to a private temporary file,
starts ``ivyvm node`` N times and waits. Node 0 streams the console and
decides the exit status; the supervisor's job is that no process outlives
it, whatever happens: node 0 finishing, a node dying, Ctrl-C, SIGTERM, or
the supervisor itself being killed (children carry PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from . import profile, runlimit, stopsignals
from .base import LISTEN_FDS_ENV, say, write_stderr
from .config import SECRET_ENV, ClusterConfig, ClusterOptions, loopback_cluster
from .handshake import listen
from .netns import CONTROL_PORT, DSM_PORT, EmulatedNetwork, NetnsError, Shaping
from .relay import StderrRelay
from .status import Status
from . import trace

# After node 0 has finished, the others get this long to leave by themselves.
GRACE_SECONDS = 5.0
# Node 0 stops every node at the time limit; past it by this much, the supervisor does.
LIMIT_GRACE_SECONDS = 1.5

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in each child between fork and exec: follow the supervisor's death."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def bind_listeners(count: int, host: str = "127.0.0.1") -> list[tuple[socket.socket, socket.socket]]:
    """Each node's (DSM, control) listening sockets, bound here and inherited by the node.

    Binding in the supervisor, rather than picking free ports for the
    children to bind later, leaves no window in which another process (or
    an outgoing connection's ephemeral port) could take a port meanwhile.
    """
    pairs = []
    try:
        for _ in range(count):
            pairs.append((listen(host, 0), listen(host, 0)))
    except BaseException:
        for pair in pairs:
            for sock in pair:
                sock.close()
        raise
    return pairs


def write_config(config: ClusterConfig, directory: Path) -> Path:
    """The TOML the children read: the same format a multi-host user writes."""
    lines = ["[cluster]", f'image = "{config.image.resolve()}"', f"vcpus = {config.vcpus}",
             f"mem = {config.mem}"] + config.toml_lines()
    for node in config.nodes:
        lines += ["", "[[node]]", f"id = {node.id}", f'address = "{node.host}:{node.port}"',
                  f"control_port = {node.control_address[1]}", f"vcpus = [{', '.join(map(str, node.vcpus))}]"]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def launch_local(image: Path, vcpus: int, mem: int, nnodes: int, options: ClusterOptions, *,
                 verbose: bool = False, stats: bool = False, shaping: Shaping | None = None,
                 trace_file: Path | None = None, stats_json: Path | None = None,
                 started: float | None = None) -> int:
    """`options` go into every node's cluster file; the keywords are this supervisor's own.

    `shaping` given: every node in a namespace of its own (hypervisor.netns), links shaped so.
    """
    deadline = None if options.timeout is None else (started or time.monotonic()) + options.timeout
    with ExitStack() as stack:
        network = None
        if shaping is not None:
            try:
                network = stack.enter_context(EmulatedNetwork(nnodes, shaping))
            except NetnsError as err:
                say(str(err))
                return err.status
        return _launch(image, vcpus, mem, nnodes, options, deadline, network, verbose=verbose, stats=stats,
                       trace_file=trace_file, stats_json=stats_json)


def _launch(image: Path, vcpus: int, mem: int, nnodes: int, options: ClusterOptions, deadline: float | None,
            network: EmulatedNetwork | None, *, verbose: bool, stats: bool, trace_file: Path | None,
            stats_json: Path | None) -> int:
    # On loopback the supervisor binds every node's ports and hands them over; in
    # namespaces each node binds its own address, which no other process shares.
    listeners = bind_listeners(nnodes) if network is None else []
    ports = ([(dsm.getsockname()[1], ctl.getsockname()[1]) for dsm, ctl in listeners] if network is None
             else [(DSM_PORT + 2 * k, CONTROL_PORT + 2 * k) for k in range(nnodes)])
    try:
        config = loopback_cluster(image, vcpus, mem, nnodes, ports, options)
        if network is not None:
            config = network.place(config)
    except BaseException:
        _close_all(listeners)
        raise
    env = dict(os.environ)
    env[SECRET_ENV] = secrets.token_hex(32)
    env[stopsignals.SUPERVISED_ENV] = "1"
    if deadline is not None:
        env[runlimit.DEADLINE_ENV] = repr(deadline)   # the nodes' limit counts from this command's start
    with tempfile.TemporaryDirectory(prefix="ivyvm-") as scratch:
        path = write_config(config, Path(scratch))
        children: list[subprocess.Popen[bytes]] = []
        relays: list[StderrRelay] = []
        try:
            for node in config.nodes:
                argv = [sys.executable, "-m", "hypervisor.cli", "node", "--config", str(path),
                        "--id", str(node.id)] + (["-v"] if verbose else [])
                if stats or stats_json is not None:
                    argv += ["--stats-json", str(_node_stats(Path(scratch), node.id))]
                if trace_file is not None:
                    argv += ["--trace", str(trace.part_path(Path(scratch) / "trace.json", node.id))]
                if network is not None:
                    children.append(subprocess.Popen(
                        argv, env=env, preexec_fn=lambda k=node.id: _into_namespace(network, k),
                        start_new_session=True, stdout=None if node.id == 0 else subprocess.DEVNULL,
                        stderr=None if node.id == 0 else subprocess.PIPE))
                    _relay(children[-1], relays)
                    continue
                dsm, ctl = listeners[node.id]
                fds = (dsm.fileno(), ctl.fileno())
                children.append(subprocess.Popen(
                    argv, env={**env, LISTEN_FDS_ENV: f"{fds[0]},{fds[1]}"}, pass_fds=fds,
                    preexec_fn=_die_with_parent, start_new_session=True,
                    stdout=None if node.id == 0 else subprocess.DEVNULL,
                    stderr=None if node.id == 0 else subprocess.PIPE))
                _relay(children[-1], relays)
                dsm.close()
                ctl.close()
            status = _supervise(children, deadline, options.timeout)
        except KeyboardInterrupt:
            for relay in relays:
                relay.mute()
            say(f"{stopsignals.interrupted_line()}, stopping every node")
            status = Status.INTERRUPTED
        finally:
            _close_all(listeners)
            _reap(children)
            for relay in relays:
                relay.join(1.0)
        if trace_file is not None:
            collect_trace(Path(scratch) / "trace.json", nnodes, trace_file)
        if stats or stats_json is not None:
            _gather_stats(Path(scratch), nnodes, stats, stats_json)
        return status


def _relay(child: subprocess.Popen[bytes], relays: list[StderrRelay]) -> None:
    if child.stderr is not None:
        relays.append(StderrRelay(child.stderr, f"relay-{child.pid}"))


def collect_trace(parts_of: Path, nnodes: int, output: Path) -> None:
    """Merge the nodes' own trace files (written as each stopped) into one, saying what is missing."""
    parts = [trace.part_path(parts_of, k) for k in range(nnodes)]
    present = [p for p in parts if p.exists()]
    missing = [k for k, p in enumerate(parts) if not p.exists()]
    if missing:
        say(f"trace: node{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} wrote no trace "
            f"(stopped before the end?)")
    if not present:
        say(f"trace: no node wrote a trace; {output} not written")
        return
    try:
        merged = trace.merge_files(present, output)
    except (trace.TraceError, OSError) as err:
        say(f"trace: {err}")
        return
    info = merged["otherData"]["ivyvm"]
    say(f"trace: {info['faults']} faults and {info['messages']} messages of {len(present)} nodes written to {output}")


def _into_namespace(network: EmulatedNetwork, node: int) -> None:
    """Between fork and exec: follow the supervisor's death, and live in the node's own namespace."""
    _die_with_parent()
    network.enter(node)


def _node_stats(scratch: Path, node: int) -> Path:
    return scratch / f"stats-{node}.json"


def _gather_stats(scratch: Path, nnodes: int, show: bool, stats_json: Path | None) -> None:
    """Every node wrote its profile when it stopped: print them in node order, join them into one file."""
    reports, missing = [], []
    for node in range(nnodes):
        try:
            reports += profile.load(_node_stats(scratch, node))["nodes"]
        except (OSError, ValueError):
            missing.append(node)
    if show:
        write_stderr(profile.format_table(reports, missing))
    if stats_json is not None:
        note = f"nodes {missing} left no statistics (they did not stop cleanly)" if missing else None
        try:
            profile.write_json(stats_json, profile.document(reports, note))
        except OSError as err:
            say(f"cannot write --stats-json {stats_json}: {err.strerror or err}")


def _close_all(listeners: list[tuple[socket.socket, socket.socket]]) -> None:
    for pair in listeners:
        for sock in pair:
            sock.close()


def _supervise(children: list[subprocess.Popen[bytes]], deadline: float | None = None,
               timeout: float | None = None) -> int:
    """Wait for node 0; if another node dies first, node 0 will notice and report.

    Node 0 must notice within GRACE_SECONDS: a node 0 that is wedged (stopped,
    or cut off from everything) must not keep `ivyvm run` waiting forever.
    Likewise node 0 ends the run at the time limit; if it has not within
    LIMIT_GRACE_SECONDS, the supervisor ends it.
    """
    previous = signal.signal(signal.SIGTERM, stopsignals.interrupt_on_signal)
    try:
        head = children[0]
        failed_at: float | None = None
        while True:
            status = head.poll()
            if status is not None:
                break
            if deadline is not None and time.monotonic() > deadline + LIMIT_GRACE_SECONDS:
                assert timeout is not None
                say(f"{runlimit.timeout_line(timeout, len(children))} (node 0 did not stop by itself)")
                return Status.TIMEOUT
            if failed_at is None:
                failed = next(((i, c.returncode) for i, c in enumerate(children[1:], 1)
                               if c.poll() is not None and c.returncode in _FAILURE_STATUSES), None)
                if failed is not None:
                    failed_at = time.monotonic()
                    lost = failed
            elif time.monotonic() - failed_at > GRACE_SECONDS:
                node, code = lost
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"stopped with status {code}"
                say(f"node {node} {how} and node 0 did not stop within {GRACE_SECONDS:.0f} s; stopping every node")
                return Status.CLUSTER
            time.sleep(0.02)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in children[1:]:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.wait(remaining)
            except subprocess.TimeoutExpired:
                pass
        if status < 0:
            say(f"node 0 was killed by {signal.Signals(-status).name}")
            return Status.CLUSTER
        return status
    finally:
        signal.signal(signal.SIGTERM, previous)


# A node other than node 0 ending this way means the cluster is failing, not finishing.
_FAILURE_STATUSES = frozenset({Status.CLUSTER} | {-int(sig) for sig in signal.Signals})


def _reap(children: list[subprocess.Popen[bytes]]) -> None:
    """Ask politely, then insist: nothing may outlive the supervisor.

    Node 0 goes first: stopping, it tells every other node to stop, so they
    leave quietly instead of each reporting node 0's departure.
    """
    deadline = time.monotonic() + 2.0
    for group in (children[:1], children[1:]):
        for child in group:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                child.send_signal(signal.SIGCONT)   # a stopped node would hold SIGTERM until then
        for child in group:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()
