"""``ivyvm run --nodes N --netns``: each node in a network namespace of its own, like separate hosts.

Each node's namespace holds one TAP device, ``eth0``, at 10.97.0.(K+1)/24,
and its loopback. A helper process (``python -m hypervisor.netns``) holds
every TAP and switches frames between them in C (native/netem.c), delaying,
jittering, dropping and rate-limiting each frame once, on its way out of
the node that sent it: ``--delay`` is the one-way delay. That is what
``tc netem`` on each node's egress would do; the kernels ivyvm runs on in CI
lack sch_netem, and TUN/TAP is everywhere.

Cleanup, on every outcome: the helper deletes the namespaces when the
supervisor closes its end of the helper's stdin, which the kernel does for
it however it ends (return, exception, Ctrl-C, SIGTERM, even SIGKILL). Only
if the helper itself is SIGKILLed too can namespaces remain; their names
carry the supervisor's pid (``ivyvm-net-PID-RANDOM-K``), and every
``--netns`` run first deletes those whose supervisor is gone.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import os
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .config import ClusterConfig
from .status import Status

PREFIX = "ivyvm-net-"
SUBNET = "10.97.0"                 # private to each run: every node's namespace is its own world
DSM_PORT, CONTROL_PORT = 7000, 7001
DEVICE = "eth0"
READY = b"ready\n"
READY_SECONDS = 20.0
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI = 0x0002, 0x1000
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[0-9a-f]+-\d+$")

_TIME_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
MAX_DELAY_NS = 10 * 10**9


class NetnsError(Exception):
    """The emulated network cannot be made; `status` is what `ivyvm run` exits with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Shaping:
    delay_ns: int = 0
    jitter_ns: int = 0
    loss_ppb: int = 0          # frames dropped per 10^9
    rate_bps: int = 0          # 0: unlimited

    def arguments(self) -> list[str]:
        return [str(self.delay_ns), str(self.jitter_ns), str(self.loss_ppb), str(self.rate_bps)]


def parse_time(text: str) -> int:
    """Nanoseconds from '100us', '0.5ms', '2s', '250ns' (tc's spelling)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s)\s*", text)
    if not match:
        raise ValueError(f"invalid time {text!r}: use a number with ns, us, ms or s, e.g. 100us")
    value = round(float(match.group(1)) * _TIME_UNITS[match.group(2)])
    if value > MAX_DELAY_NS:
        raise ValueError(f"time {text!r} is more than 10 s")
    return value


def parse_loss(text: str) -> int:
    """Parts per 10^9 from '0.1%' or '1%'."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text)
    if not match or float(match.group(1)) > 100:
        raise ValueError(f"invalid loss {text!r}: use a percentage from 0% to 100%, e.g. 0.1%")
    return round(float(match.group(1)) * 10**7)


def parse_rate(text: str) -> int:
    """Bits per second from '1gbit', '100mbit', '512kbit' (tc's spelling)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)\s*", text.lower())
    if not match:
        raise ValueError(f"invalid rate {text!r}: use a number with bit, kbit, mbit or gbit, e.g. 1gbit")
    value = round(float(match.group(1)) * _RATE_UNITS[match.group(2)])
    if value < 8000:
        raise ValueError(f"rate {text!r} is below 8kbit")
    return value


def check_available() -> None:
    """Root, iproute2 and TUN/TAP, or one line saying which is missing."""
    if os.geteuid() != 0:
        raise NetnsError(Status.USAGE, "--netns needs root (network namespaces and TAP devices)")
    if shutil.which("ip") is None:
        raise NetnsError(Status.USAGE, "--netns needs the ip command (iproute2)")
    if not os.path.exists("/dev/net/tun"):
        raise NetnsError(Status.USAGE, "--netns needs /dev/net/tun (TUN/TAP)")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def namespaces() -> set[str]:
    """Every network namespace ip knows by name."""
    try:
        return {entry.name for entry in NETNS_DIR.iterdir()}
    except OSError:
        return set()


def delete_namespaces(names: Sequence[str]) -> None:
    """Delete each (its TAP or veth ends go with it); those already gone are fine."""
    for name in names:
        if name in namespaces():
            _ip("netns", "delete", name)


def sweep_stale() -> list[str]:
    """Delete namespaces of earlier --netns runs whose supervisor no longer exists."""
    stale = [name for name in namespaces()
             if (match := _NAME.match(name)) and not os.path.exists(f"/proc/{match.group(1)}")]
    delete_namespaces(stale)
    return stale


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class EmulatedNetwork:
    """The namespaces of one run and the helper that links them; a context manager."""

    def __init__(self, nnodes: int, shaping: Shaping) -> None:
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.names = [f"{PREFIX}{tag}-{k}" for k in range(nnodes)]
        self.addresses = [f"{SUBNET}.{k + 1}" for k in range(nnodes)]
        self.shaping = shaping
        self.helper: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "EmulatedNetwork":
        check_available()
        sweep_stale()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        for name in self.names:
            proc = _ip("netns", "add", name)
            if proc.returncode != 0:
                raise NetnsError(Status.HOST, f"--netns: cannot create namespace {name}: {proc.stderr.strip()}")
        # The helper is in a session of its own: Ctrl-C of the user's terminal stops the
        # supervisor, which then closes the helper's stdin; the helper cleans up after that.
        self.helper = subprocess.Popen([sys.executable, "-m", "hypervisor.netns", *self.shaping.arguments(),
                                        *self.names], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True,
                                       env=dict(os.environ, PYTHONPATH=_package_path()))
        assert self.helper.stdout is not None
        os.set_blocking(self.helper.stdout.fileno(), False)
        deadline = time.monotonic() + READY_SECONDS
        said = b""
        while not said.endswith(READY):
            if self.helper.poll() is not None or time.monotonic() > deadline:
                stderr = self.helper.stderr.read().decode(errors="replace").strip() if self.helper.stderr else ""
                raise NetnsError(Status.HOST, f"--netns: the link emulator did not start: "
                                              f"{stderr.splitlines()[-1] if stderr else 'no reason given'}")
            chunk = self.helper.stdout.read(64)
            if chunk:
                said += chunk
            else:
                time.sleep(0.01)

    def enter(self, node: int) -> None:
        """In a child between fork and exec: move into node `node`'s namespace."""
        _setns(str(NETNS_DIR / self.names[node]))

    def place(self, config: ClusterConfig) -> ClusterConfig:
        """The cluster with node K listening at its namespace's address."""
        nodes = tuple(dataclasses.replace(node, host=self.addresses[node.id], port=DSM_PORT,
                                          control_port=CONTROL_PORT) for node in config.nodes)
        return dataclasses.replace(config, nodes=nodes)

    def close(self) -> None:
        """Stop the helper (it deletes the namespaces), then make sure they are gone."""
        helper = self.helper
        if helper is not None:
            if helper.stdin is not None:
                helper.stdin.close()
            try:
                helper.wait(10)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
            for stream in (helper.stdout, helper.stderr):
                if stream is not None:
                    stream.close()
            self.helper = None
        delete_namespaces(self.names)


@dataclass(frozen=True)
class VethPair:
    namespaces: tuple[str, str]
    devices: tuple[str, str]
    addresses: tuple[str, str]


@contextmanager
def veth_pair(subnet: str = "10.98.0") -> Iterator[VethPair]:
    """Two fresh namespaces joined by a bare veth pair (the kernel's own link, no emulator).

    For nodes a test starts by hand in each namespace, as on two hosts. The
    names follow this module's scheme (the sweep covers them); both ends are
    created inside the namespaces, so the host never sees a device.
    """
    check_available()
    sweep_stale()
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    pair = VethPair((f"{PREFIX}{tag}-0", f"{PREFIX}{tag}-1"), (DEVICE, DEVICE), (f"{subnet}.1", f"{subnet}.2"))
    steps = [("netns", "add", pair.namespaces[0]), ("netns", "add", pair.namespaces[1]),
             ("-n", pair.namespaces[0], "link", "add", DEVICE, "type", "veth", "peer", "name", DEVICE,
              "netns", pair.namespaces[1])]
    for name, address in zip(pair.namespaces, pair.addresses):
        steps += [("-n", name, "addr", "add", f"{address}/30", "dev", DEVICE), ("-n", name, "link", "set", DEVICE, "up"),
                  ("-n", name, "link", "set", "lo", "up")]
    try:
        for args in steps:
            proc = _ip(*args)
            if proc.returncode != 0:
                raise NetnsError(Status.HOST, f"ip {' '.join(args)}: {proc.stderr.strip()}")
        yield pair
    finally:
        delete_namespaces(pair.namespaces)


def _package_path() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


# --- the helper process -------------------------------------------------------

def _open_tap(name: str, home: int) -> int:
    """A TAP device called DEVICE inside namespace `name`; the fd keeps it alive (and its end ends it)."""
    _setns(str(NETNS_DIR / name))
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", DEVICE.encode(), _IFF_TAP | _IFF_NO_PI))
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(home, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the helper's own namespace failed")
    return fd


def _serve(shaping: Shaping, names: list[str]) -> int:
    from hypervisor._ivy_netem import ffi, lib   # type: ignore[import-not-found]

    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    taps = []
    try:
        for index, name in enumerate(names):
            taps.append(_open_tap(name, home))
            for args in (("addr", "add", f"{SUBNET}.{index + 1}/24", "dev", DEVICE), ("link", "set", DEVICE, "up"),
                         ("link", "set", "lo", "up")):
                proc = _ip("-n", name, *args)
                if proc.returncode != 0:
                    raise OSError(f"ip -n {name} {' '.join(args)}: {proc.stderr.strip()}")
        os.write(1, READY)
        shape = ffi.new("struct ivy_netem_shape *", {"delay_ns": shaping.delay_ns, "jitter_ns": shaping.jitter_ns,
                                                     "loss_ppb": shaping.loss_ppb, "rate_bps": shaping.rate_bps,
                                                     "seed": int.from_bytes(os.urandom(8), "little") | 1})
        stats = ffi.new("struct ivy_netem_stats *")
        err = ffi.new("char[256]")
        fds = ffi.new("int[]", taps)
        if lib.ivy_netem_run(fds, len(taps), 0, shape, stats, err, 256) != 0:
            raise OSError(ffi.string(err).decode())
        return 0
    finally:
        for fd in taps:
            os.close(fd)
        os.close(home)
        delete_namespaces(names)


def main(argv: list[str]) -> int:
    """``python -m hypervisor.netns DELAY_NS JITTER_NS LOSS_PPB RATE_BPS NAMESPACE...``; ends at EOF on stdin."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(Status.INTERRUPTED)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        delay, jitter, loss, rate = (int(value) for value in argv[:4])
        return _serve(Shaping(delay, jitter, loss, rate), argv[4:])
    except (OSError, ValueError) as err:
        sys.stderr.write(f"ivyvm netns helper: {err}\n")
        return Status.HOST


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
