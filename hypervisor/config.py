"""Cluster configuration: which node runs which vCPUs, where each listens.

One file describes a whole cluster and every host is given the same file
(``ivyvm node --config cluster.toml --id K``). ``ivyvm run --nodes N`` builds
the same structure in memory for N processes on loopback.

The secret never appears in the file or on a command line: it is read from
``secret_file`` or from the environment variable IVYVM_SECRET.
"""
from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .files import InputFileError, read_regular
from hypervisor.base import SECRET_ENV
from hypervisor.native_consts import FIRST_TOUCH, MANAGERS, MAX_NODES, READ_OWNERSHIP

MAX_VCPUS = 64
MIB = 1 << 20
MIN_MEM, MAX_MEM, MEM_ALIGN = 4 * MIB, 4 << 30, 2 * MIB
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Every node must have joined within this many seconds of starting; on real
# hosts started by hand, raise it with `setup_timeout` in [cluster].
DEFAULT_SETUP_TIMEOUT = 20.0
MAX_SETUP_TIMEOUT = 3600.0
# DSM timing a host may tune (hypervisor.dsm.DsmOptions has the defaults and
# why; docs/dsm.md the measurements). Node-local: peers need not agree.
DSM_TUNING = ("poll_us", "hold_us")
MAX_TUNING_US = 1_000_000
# A page fault outstanding this long is named on stderr (hypervisor.watchdog).
DEFAULT_STALL_WARN = 2.0
# The longest run a time limit or a stall warning may name: a day.
MAX_SECONDS = 86400.0
# Every key a config may hold; anything else is refused with its name (a typo
# such as `memory = "128M"` must not leave RAM at its default unnoticed).
CLUSTER_KEYS = ("image", "vcpus", "mem", "read_ownership", "manager", "migratory", "first_touch", "prefetch", "map_owned", "batch", "secret_file", "setup_timeout",
                "timeout", "stall_warn", "trace") + DSM_TUNING
NODE_KEYS = ("id", "address", "vcpus", "control_port")
MAX_CONFIG_BYTES = 1 << 20     # a 64-node config is a few KiB
MAX_SECRET_BYTES = 4096
MIN_SECRET_BYTES = 16
MAX_HOST_CHARS = 253           # the DNS limit


class ConfigError(Exception):
    """A cluster description that cannot be used; the message says why."""


@dataclass(frozen=True)
class NodeSpec:
    id: int
    host: str
    port: int
    vcpus: tuple[int, ...]
    # The control channel (forwarded I/O, interrupts, stop); by default next
    # to the DSM port so a config names one port per node.
    control_port: int = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def control_address(self) -> tuple[str, int]:
        return (self.host, self.control_port or self.port + 1)


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """The cluster-wide choices `ivyvm run` takes from its command line to the cluster file.

    One object rather than a parameter each, so that a new option is one field
    here (plus an `ivyvm run` flag of the same name, and its check and use):
    the CLI fills it by field name (taken_from), write_config writes it field
    by field (toml_lines) and ClusterConfig inherits it. Keyword-only, so that
    ClusterConfig's own fields can stay positional ahead of these.
    """

    # Written in this order; None is left out of the file (the reader's default).
    read_ownership: str = "giantvm"
    manager: str = "dynamic"
    migratory: bool = False      # migratory pages (hypervisor.dsm.DsmOptions); every node must agree
    first_touch: str = "read"    # what node 0's first read of an untouched page gets (node-local)
    prefetch: bool = False       # sequential read faults ask for the following pages ahead (node-local)
    map_owned: bool = True       # node 0 maps the pages it owns at start, so its first touches never fault (node-local)
    batch: bool = True           # a peer's frames of one event-loop pass leave in one send() (node-local)
    poll_us: int | None = None   # None: the DSM's default
    hold_us: int | None = None
    stall_warn: float = DEFAULT_STALL_WARN  # seconds a fault may wait before it is named
    timeout: float | None = None           # seconds the run may take; None: no limit

    @classmethod
    def taken_from(cls, source: object) -> ClusterOptions:
        """The options `source` (parsed `ivyvm run` arguments, a ClusterConfig) holds under their own names."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(ClusterOptions)})

    def as_keywords(self) -> dict[str, Any]:
        """These options alone (not a ClusterConfig's other fields), as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(ClusterOptions)}

    def toml_lines(self) -> list[str]:
        """These options as [cluster] lines load_config reads back to the same values."""
        return [f"{key} = {_toml_value(value)}" for key, value in self.as_keywords().items() if value is not None]

    def unmet_requirement(self, spell: Callable[[str, object], str], show: Callable[[object], str]) -> str | None:
        """The first of REQUIREMENTS these options break, worded by `spell` (an option set to a
        value, as a config key or a command-line flag) and `show` (the value found instead)."""
        for option, value, needed, needed_value, why in REQUIREMENTS:
            found = getattr(self, needed)
            if getattr(self, option) == value and found != needed_value:
                instead = "" if isinstance(needed_value, bool) else f", not {show(found)}"
                return f"{spell(option, value)} needs {spell(needed, needed_value)} ({why}){instead}"
        return None


# Options that only work together: (option, value, the option it needs, set to this, why).
# The config file and `ivyvm run` word them their own way (unmet_requirement).
REQUIREMENTS: tuple[tuple[str, object, str, object, str], ...] = (
    ("first_touch", "write", "map_owned", False,
     "with node 0's pages mapped at start, its guest never faults on an untouched page"),
    ("prefetch", True, "read_ownership", "ivy", "a read copy that leaves ownership in place"),
    ("migratory", True, "read_ownership", "giantvm", "a read that moves ownership"),
)


def as_config_line(option: str, value: object) -> str:
    return f"{option} = {_toml_value(value)}"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'    # the option strings are names from a fixed list: nothing to escape
    return repr(value)


@dataclass(frozen=True)
class ClusterConfig(ClusterOptions):
    image: Path
    vcpus: int
    mem: int
    nodes: tuple[NodeSpec, ...]
    secret_file: Path | None = field(default=None)
    setup_timeout: float = DEFAULT_SETUP_TIMEOUT
    trace: Path | None = None    # each node writes its DSM trace to this path with .nodeK before the suffix

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    def dsm_tuning(self) -> dict[str, int]:
        """The DSM timing this config sets, as DsmOptions keywords."""
        return {key: getattr(self, key) for key in DSM_TUNING if getattr(self, key) is not None}

    def node_of_vcpu(self, vcpu: int) -> int:
        for node in self.nodes:
            if vcpu in node.vcpus:
                return node.id
        raise ConfigError(f"vCPU {vcpu} is placed on no node")

    def read_secret(self) -> bytes:
        """The cluster secret, from the environment or from secret_file (see read_secret_file)."""
        env = os.environb.get(SECRET_ENV.encode())   # bytes: any value, UTF-8 or not
        if env:
            secret = env
            if len(secret) < MIN_SECRET_BYTES:
                raise ConfigError(f"{SECRET_ENV} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed")
            return secret
        if self.secret_file is None:
            raise ConfigError(f"no cluster secret: set {SECRET_ENV} or secret_file in the config")
        return read_secret_file(self.secret_file)


def read_secret_file(path: Path) -> bytes:
    """A secret file's bytes (surrounding whitespace stripped), refused unless only its owner can use it.

    Refused rather than warned about, as ssh does for private keys: anyone who
    can read the secret can join the cluster, read guest memory and forge I/O.
    """
    try:
        data, info = read_regular(path, MAX_SECRET_BYTES, "the secret file")
    except InputFileError as err:
        raise ConfigError(f"secret_file {path}: {err}") from None
    if info.st_mode & 0o077:
        raise ConfigError(f"secret_file {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
                          f"run chmod 600 {path}")
    secret = bytes(data.strip())
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"secret in {path} is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed")
    return secret


def contiguous_placement(vcpus: int, nnodes: int) -> list[tuple[int, ...]]:
    """vCPU i runs on node floor(i * N / vcpus): contiguous, balanced ranges."""
    placement: list[list[int]] = [[] for _ in range(nnodes)]
    for vcpu in range(vcpus):
        placement[vcpu * nnodes // vcpus].append(vcpu)
    return [tuple(p) for p in placement]


def parse_size(text: str | int) -> int:
    """Bytes from '64M', '1G', '512K', '64MiB' or a plain byte count."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]{1,12})\s*([KkMmGg]?)(?:i?B)?\s*", text)
    if not match:
        raise ConfigError(f"invalid size {text!r}: use bytes or a number with K, M or G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def check_mem(size: int) -> int:
    """Guest RAM size rule of the guest ABI (section 2)."""
    if size % MEM_ALIGN or not MIN_MEM <= size <= MAX_MEM:
        raise ConfigError(f"memory size {size} bytes must be a multiple of 2 MiB between 4M and 4G")
    return size


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not re.fullmatch("[0-9]{1,5}", port) or not 0 < int(port) < 65535:
        raise ConfigError(f"bad address {text!r}: expected HOST:PORT with PORT in 1..65534")
    return host.strip("[]"), int(port)


def loopback_cluster(image: Path, vcpus: int, mem: int, nnodes: int, ports: list[tuple[int, int]],
                     options: ClusterOptions = ClusterOptions()) -> ClusterConfig:
    """The embedded cluster of ``ivyvm run --nodes N``: N processes on 127.0.0.1.

    `ports` holds each node's (DSM port, control port).
    """
    if not 1 <= nnodes <= min(MAX_NODES, vcpus):
        raise ConfigError(f"--nodes {nnodes}: must be between 1 and the vCPU count ({vcpus})")
    placement = contiguous_placement(vcpus, nnodes)
    nodes = tuple(NodeSpec(i, "127.0.0.1", ports[i][0], placement[i], ports[i][1]) for i in range(nnodes))
    return _checked(ClusterConfig(image, vcpus, mem, nodes, **options.as_keywords()))


def check_seconds(what: str, value: object) -> float:
    """A positive number of seconds up to a day (--timeout, --stall-warn and their config keys)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{what} must be a number of seconds, not {value!r}")
    if not 0 < value <= MAX_SECONDS:
        raise ConfigError(f"{what} {value:g}: must be above 0 and at most {MAX_SECONDS:g} seconds")
    return float(value)


def _microseconds(cluster: dict, key: str, path: Path) -> int | None:
    value = cluster.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: [cluster] {key} must be a whole number of microseconds, not {value!r}")
    return value


def _trace_path(cluster: dict, path: Path) -> Path | None:  # type: ignore[type-arg]
    value = cluster.get("trace")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: [cluster] trace must be a file name, not {_shown(value)}")
    return base_path(path, _text(value, f"{path}: [cluster] trace"))


def _seconds(path: Path, key: str, value: object) -> float:
    try:
        return check_seconds(key, value)
    except ConfigError as err:
        raise ConfigError(f"{path}: [cluster] {err}") from None


def _whole(value: object, what: str, low: int, high: int) -> int:
    """A TOML integer in low..high; booleans, floats and strings are refused, not converted."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, not {_shown(value)}")
    if not low <= value <= high:
        raise ConfigError(f"{what} {value}: must be between {low} and {high}")
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, not {_shown(value)}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, not {_shown(value)}")
    if "\0" in value:
        raise ConfigError(f"{what} contains a NUL character")
    return value


def _shown(value: object) -> str:
    """A value for an error line: its type when its text would be long."""
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__} ({text[:30]}...)"


def _refuse_unknown(table: dict, allowed: tuple[str, ...], where: str) -> None:  # type: ignore[type-arg]
    unknown = [key for key in table if key not in allowed]
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r} (known: {', '.join(allowed)})")


def check_host(host: str, what: str) -> str:
    """A host name or address the resolver can take: printable, without spaces, of DNS length."""
    if not host or len(host) > MAX_HOST_CHARS or not all(c.isascii() and c.isprintable() and not c.isspace()
                                                          for c in host):
        raise ConfigError(f"{what}: bad host {host[:40]!r}")
    if ":" not in host and any(not 0 < len(label) <= 63 for label in host.rstrip(".").split(".")):
        raise ConfigError(f"{what}: bad host {host[:40]!r} (each dot-separated label has 1..63 characters)")
    return host


def read_config_text(path: Path) -> str:
    try:
        data, _ = read_regular(path, MAX_CONFIG_BYTES, "the config")
    except InputFileError as err:
        raise ConfigError(f"{path}: {err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start} is {data[err.start]:#04x})") from None


def load_config(path: Path) -> ClusterConfig:
    """Parse and check a cluster file; every field's type and range before anything is computed from it."""
    text = read_config_text(path)
    try:
        data = tomllib.loads(text)
    except ValueError as err:    # TOMLDecodeError, or an integer of thousands of digits
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    _refuse_unknown(data, ("cluster", "node"), f"{path}")
    cluster = data.get("cluster")
    raw_nodes = data.get("node")
    if not isinstance(cluster, dict) or not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError(f"{path}: needs a [cluster] table and at least one [[node]]")
    _refuse_unknown(cluster, CLUSTER_KEYS, f"{path}: [cluster]")
    where = f"{path}: [cluster]"
    for key in ("image", "vcpus"):
        if key not in cluster:
            raise ConfigError(f"{where} lacks {key!r}")
    image = base_path(path, _text(cluster["image"], f"{where} image"))
    vcpus = _whole(cluster["vcpus"], f"{where} vcpus", 1, MAX_VCPUS)
    mem_value = cluster.get("mem", "64M")
    if isinstance(mem_value, bool) or not isinstance(mem_value, (int, str)):
        raise ConfigError(f"{where} mem must be a size such as \"64M\" or a byte count, not {_shown(mem_value)}")
    mem = check_mem(parse_size(mem_value))
    setup_timeout = cluster.get("setup_timeout", DEFAULT_SETUP_TIMEOUT)
    if isinstance(setup_timeout, bool) or not isinstance(setup_timeout, (int, float)) \
            or not math.isfinite(setup_timeout):
        raise ConfigError(f"{where} setup_timeout must be a number of seconds, not {_shown(setup_timeout)}")
    secret_file = cluster.get("secret_file")
    if secret_file is not None and not _text(secret_file, f"{where} secret_file"):
        raise ConfigError(f"{where} secret_file is empty")
    if len(raw_nodes) > MAX_NODES:
        raise ConfigError(f"{path}: {len(raw_nodes)} nodes: must be between 1 and {MAX_NODES}")
    nnodes = len(raw_nodes)
    default_placement = contiguous_placement(vcpus, nnodes) if nnodes <= vcpus else []
    nodes = []
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict) or "address" not in raw:
            raise ConfigError(f"{path}: [[node]] number {index} lacks an address")
        node_where = f"{path}: [[node]] number {index}"
        _refuse_unknown(raw, NODE_KEYS, node_where)
        node_id = _whole(raw.get("id", index), f"{node_where} id", 0, MAX_NODES - 1)
        host, port = parse_address(_text(raw["address"], f"{node_where} address"))
        check_host(host, f"{node_where} address")
        if "vcpus" in raw:
            listed = raw["vcpus"]
            if not isinstance(listed, list):
                raise ConfigError(f"{node_where} vcpus must be a list of vCPU numbers such as [0, 1], "
                                  f"not {_shown(listed)}")
            if len(listed) > vcpus:
                raise ConfigError(f"{node_where} lists {len(listed)} vCPUs; the cluster has {vcpus}")
            placed = tuple(_whole(v, f"{node_where} vcpus entry", 0, vcpus - 1) for v in listed)
        elif default_placement:
            placed = default_placement[node_id] if node_id < nnodes else ()
        else:
            placed = ()
        control_port = _whole(raw.get("control_port", port + 1), f"{node_where} control_port", 1, 65535)
        nodes.append(NodeSpec(node_id, host, port, placed, control_port))
    config = ClusterConfig(
        image=image, vcpus=vcpus, mem=mem, nodes=tuple(sorted(nodes, key=lambda n: n.id)),
        read_ownership=_text(cluster.get("read_ownership", "giantvm"), f"{where} read_ownership"),
        manager=_text(cluster.get("manager", "dynamic"), f"{where} manager"),
        migratory=_flag(cluster.get("migratory", False), f"{where} migratory"),
        first_touch=_text(cluster.get("first_touch", "read"), f"{where} first_touch"),
        prefetch=_flag(cluster.get("prefetch", False), f"{where} prefetch"),
        map_owned=_flag(cluster.get("map_owned", True), f"{where} map_owned"),
        batch=_flag(cluster.get("batch", ClusterOptions.batch), f"{where} batch"),
        secret_file=base_path(path, secret_file) if secret_file else None,
        setup_timeout=float(setup_timeout),
        poll_us=_microseconds(cluster, "poll_us", path),
        hold_us=_microseconds(cluster, "hold_us", path),
        timeout=None if cluster.get("timeout") is None else
        _seconds(path, "timeout", cluster["timeout"]),
        stall_warn=_seconds(path, "stall_warn", cluster.get("stall_warn", DEFAULT_STALL_WARN)),
        trace=_trace_path(cluster, path),
    )
    return _checked(config)


def base_path(config_path: Path, name: str) -> Path:
    """A path named in the config, relative to the config's directory."""
    return config_path.parent / name


def _checked(config: ClusterConfig) -> ClusterConfig:
    if not 1 <= config.vcpus <= MAX_VCPUS:
        raise ConfigError(f"vcpus {config.vcpus}: must be between 1 and {MAX_VCPUS}")
    if not 1 <= config.nnodes <= MAX_NODES:
        raise ConfigError(f"{config.nnodes} nodes: must be between 1 and {MAX_NODES}")
    ids = [n.id for n in config.nodes]
    if ids != list(range(config.nnodes)):
        raise ConfigError(f"node ids {ids}: must be 0..{config.nnodes - 1}, each once")
    placed = sorted(v for n in config.nodes for v in n.vcpus)
    if placed != list(range(config.vcpus)):
        raise ConfigError(f"vCPU placement {placed}: every vCPU 0..{config.vcpus - 1} must be on exactly one node")
    if any(not n.vcpus for n in config.nodes):
        empty = [n.id for n in config.nodes if not n.vcpus]
        raise ConfigError(f"nodes {empty} run no vCPU")
    if not 0 < config.setup_timeout <= MAX_SETUP_TIMEOUT:
        raise ConfigError(f"setup_timeout {config.setup_timeout:g}: must be above 0 and at most "
                          f"{MAX_SETUP_TIMEOUT:g} seconds")
    for key, value in config.dsm_tuning().items():
        if not 0 <= value <= MAX_TUNING_US:
            raise ConfigError(f"{key} {value}: must be between 0 and {MAX_TUNING_US} microseconds")
    if config.read_ownership not in READ_OWNERSHIP:
        raise ConfigError(f"read_ownership {config.read_ownership!r}: expected one of {', '.join(READ_OWNERSHIP)}")
    if config.manager not in MANAGERS:
        raise ConfigError(f"manager {config.manager!r}: expected one of {', '.join(MANAGERS)}")
    if config.first_touch not in FIRST_TOUCH:
        raise ConfigError(f"first_touch {config.first_touch!r}: expected one of {', '.join(FIRST_TOUCH)}")
    problem = config.unmet_requirement(as_config_line, repr)
    if problem:
        raise ConfigError(problem)
    addresses = [a for n in config.nodes for a in (n.address, n.control_address)]
    if len(set(addresses)) != len(addresses):
        raise ConfigError("two nodes share a port (each node uses its PORT and its control_port, "
                          "by default PORT+1)")
    return config
