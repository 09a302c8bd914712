"""Running guests from Python, for test suites: ``hypervisor.run_guest``.

    from hypervisor import run_guest, GuestError

    result = run_guest("guest.elf", vcpus=2, nodes=2, timeout=60)
    assert result.status == 0
    assert "PASS" in result.console

It is ``ivyvm run`` without the shell: the keyword arguments are the
command line's options, parsed by the CLI's own parser, and the run takes
the CLI's own code path (hypervisor.cli.execute_run). One node runs in this
process; several run as ``ivyvm run --nodes N`` does, under the same
supervisor, in a child process whose console and lines are captured.

A status the guest wrote itself (port 0xf4, or 0 when every vCPU parked) is
returned in ``GuestResult.status``; a failure ivyvm detected raises one
exception per class below, carrying the status and the very lines ``ivyvm
run`` would have printed on stderr (``str(err)``). docs/api.md has the
details and a pytest example.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from . import cli
from .base import STATS_DIR_ENV
from .nodestats import collect_node_stats
from .status import Status

# `ivyvm run --timeout` stops every node itself; should the supervisor still
# run this long past the limit, it is stopped (SIGTERM, then SIGKILL).
BACKSTOP_SECONDS = 15.0


class RunError(Exception):
    """A run ivyvm ended with a failure; ``str(err)`` is what ``ivyvm run`` prints on stderr."""

    def __init__(self, status: int, message: str, console: str = "") -> None:
        super().__init__(message)
        self.status = status          # what `ivyvm run` would exit with
        self.message = message        # its stderr lines, "ivyvm: " prefixes included
        self.console = console        # the console output up to the failure


class UsageError(RunError, ValueError):
    """Bad arguments: what `ivyvm run` refuses with status 2."""


class ImageRefused(RunError):
    """The guest image is not a valid guest ABI v1 image (status 3)."""


class GuestError(RunError):
    """The guest did something the VMM cannot serve: port I/O, MMIO, triple fault, entry failure (4-6)."""


class HostError(RunError):
    """This host cannot run the VM: /dev/kvm missing or refusing, out of resources (7)."""


class ClusterError(RunError):
    """A node died, was cut off or refused the handshake (8)."""


class GuestTimeout(RunError, TimeoutError):
    """The guest was still running when `timeout` seconds were up; every node was stopped."""


class InternalError(RunError):
    """A bug in ivyvm itself: its DSM engine refused a node's message; the line names the transition (10)."""


class Interrupted(RunError):
    """The run was interrupted (Ctrl-C or SIGTERM of the supervisor, 130)."""


_CLASSES: dict[int, type[RunError]] = {
    Status.USAGE: UsageError, Status.IMAGE: ImageRefused, Status.GUEST_IO: GuestError,
    Status.TRIPLE_FAULT: GuestError, Status.ENTRY_FAILURE: GuestError, Status.HOST: HostError,
    Status.CLUSTER: ClusterError, Status.TIMEOUT: GuestTimeout, Status.INTERNAL: InternalError,
    Status.INTERRUPTED: Interrupted,
}


@dataclass(frozen=True)
class GuestResult:
    """A run that ended the way the guest chose."""

    status: int                    # the guest's exit status (0-255)
    console: str                   # everything the guest wrote to port 0x3f8, as text
    stats: list[dict[str, Any]]    # per node: {"node", "vcpus", "dsm"}; "dsm" is None on one node
    seconds: float                 # wall time of the whole run
    stderr: str = field(default="", repr=False)   # other lines ivyvm said (several nodes only)
    supervisor_pid: int | None = None   # the `ivyvm run` process of several nodes (names its --netns namespaces)

    @property
    def lines(self) -> list[str]:
        return self.console.splitlines()

    @property
    def verdict(self) -> str | None:
        """The last console line starting with PASS or FAIL (the guest programs' convention)."""
        found = [line for line in self.lines if line.startswith(("PASS", "FAIL"))]
        return found[-1] if found else None


class _RaisingParser(cli._Parser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(Status.USAGE, f"ivyvm: error: {message}")


def command_line(image: str | os.PathLike[str], vcpus: int, nodes: int, mem: str | int,
                 options: dict[str, Any]) -> list[str]:
    """The `ivyvm run` arguments these keywords stand for: hold_us=0 -> --hold-us 0, verbose=True -> -v."""
    argv = ["run", os.fspath(Path(image).absolute()), "--vcpus", str(vcpus), "--nodes", str(nodes),
            "--mem", str(mem)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


def run_guest(image: str | os.PathLike[str], vcpus: int = 1, nodes: int = 1, mem: str | int = "64M",
              timeout: float | None = None, **options: Any) -> GuestResult:
    """Boot `image` as ``ivyvm run`` would and return how the guest ended.

    `options` are the other options of ``ivyvm run`` with underscores for
    dashes (read_ownership="ivy", manager="central", poll_us=20, hold_us=0,
    verbose=True, ...). `timeout` is ``--timeout``: the whole run's limit in
    seconds, after which every node is stopped. Raises
    UsageError, ImageRefused, GuestError, HostError, ClusterError,
    GuestTimeout, InternalError or Interrupted; each carries the status and the lines
    ``ivyvm run`` would print.
    """
    argv = command_line(image, vcpus, nodes, mem, dict(options, timeout=timeout))
    args = cli.build_parser(_RaisingParser).parse_args(argv)
    if args.nodes > 1:
        return _run_supervised(argv, timeout)
    return _run_here(args)


def _run_here(args: argparse.Namespace) -> GuestResult:
    """One node, in this process, through the CLI's own path."""
    console = bytearray()
    started = time.monotonic()
    outcome = cli.execute_run(args, console.extend)
    text = console.decode("utf-8", "replace")
    if outcome.error or outcome.status == Status.INTERRUPTED:
        raise _CLASSES.get(outcome.status, RunError)(outcome.status, f"ivyvm: {outcome.message}", text)
    stats = [{"node": 0, "vcpus": list(range(args.vcpus)), "dsm": None}]
    return GuestResult(outcome.status, text, stats, time.monotonic() - started)


def _run_supervised(argv: list[str], timeout: float | None) -> GuestResult:
    """Several nodes: `ivyvm run --nodes N` in a child, its console and lines captured."""
    package_root = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="ivyvm-api-") as scratch:
        env = dict(os.environ, **{STATS_DIR_ENV: scratch})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "hypervisor.cli", *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        backstop = None if timeout is None else timeout + BACKSTOP_SECONDS
        timed_out = False
        try:
            out, err = proc.communicate(timeout=backstop)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGTERM)      # the supervisor stops and reaps every node
            try:
                out, err = proc.communicate(timeout=BACKSTOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.monotonic() - started
        stats = collect_node_stats(Path(scratch))
    console, said = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    status = proc.returncode
    if timed_out:
        assert timeout is not None
        raise GuestTimeout(Status.TIMEOUT, "\n".join(filter(None, [
            said.rstrip(), f"ivyvm: the supervisor was still running {BACKSTOP_SECONDS:g} s past the time "
                           f"limit of {timeout:g} s and was stopped"])), console)
    lines = [line for line in said.splitlines() if line.startswith("ivyvm: ")]
    if status < 0:
        raise Interrupted(Status.INTERRUPTED, f"ivyvm: the supervisor was killed by "
                                              f"{signal.Signals(-status).name}", console)
    if status in _CLASSES and lines:
        raise _CLASSES[status](status, said.rstrip(), console)
    return GuestResult(status, console, stats, seconds, said, proc.pid)
