"""Hypothesis fuzzing of cluster.toml and ELF images, run as a child process under a memory limit.

``python -m tests.unit.hostile_fuzz config|elf`` exits 0 when every example
either parses or is refused with the module's own error (ConfigError,
LoaderError: the one line a user sees). Anything else raised, including a
MemoryError under the RLIMIT_AS its parent sets, an example running longer
than EXAMPLE_SECONDS, or a parse of an image allocating more than the file's
size, fails: hypothesis shrinks it and the falsifying example is printed.
The profile is derandomized, so a run is reproducible and of fixed length.
"""
from __future__ import annotations

import json
import math
import resource
import signal
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypervisor.config import CLUSTER_KEYS, NODE_KEYS, ConfigError, load_config
from hypervisor.loader import EHDR, PHDR, LoaderError, load_image, parse_image

EXAMPLE_SECONDS = 5
PROFILE = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                   suppress_health_check=list(HealthCheck))
MIB = 1 << 20


class Hang(Exception):
    """An example ran longer than EXAMPLE_SECONDS."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang(f"example still running after {EXAMPLE_SECONDS} s")


def bounded(fn):  # type: ignore[no-untyped-def]
    def run(*args):  # type: ignore[no-untyped-def]
        signal.setitimer(signal.ITIMER_REAL, EXAMPLE_SECONDS)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return run


# --- cluster.toml ------------------------------------------------------------
def toml_value(value: object) -> str:
    """TOML text for a value (no stdlib writer exists); strings as JSON, which TOML mostly shares."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


SCALARS = st.one_of(
    st.integers(), st.integers(-3, 70), st.sampled_from([2 ** 63 - 1, -2 ** 63, 10 ** 18, 65535, 65536, 70000]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=12), st.sampled_from(["64M", "1.5G", "0", "4096K", "g.elf", "127.0.0.1:7000", "x:70000",
                                           ":1", "a" * 80 + ":1", "ivy", "fixed", "/dev/zero", "secret"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=12)
GOOD_CLUSTER = {"image": "g.elf", "vcpus": 2, "mem": "64M"}
GOOD_NODES = [{"address": "127.0.0.1:7000"}, {"address": "127.0.0.1:7002"}]


def cluster_text(cluster: dict, nodes: list[dict]) -> str:  # type: ignore[type-arg]
    lines = ["[cluster]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in cluster.items()]
    for node in nodes:
        lines += ["[[node]]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in node.items()]
    return "\n".join(lines) + "\n"


KEYS = st.one_of(st.sampled_from(CLUSTER_KEYS + NODE_KEYS), st.text(max_size=8))
CONFIGS = st.builds(
    lambda over, drop, nodes_over, count: (
        {**{k: v for k, v in GOOD_CLUSTER.items() if k not in drop}, **over},
        [{**GOOD_NODES[i % 2], **nodes_over.get(i, {})} for i in range(count)]),
    st.dictionaries(KEYS, VALUES, max_size=4), st.sets(st.sampled_from(list(GOOD_CLUSTER)), max_size=1),
    st.dictionaries(st.integers(0, 3), st.dictionaries(KEYS, VALUES, max_size=3), max_size=3),
    st.integers(0, 4))


def check_config(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "cluster.toml"
        path.write_bytes(text)
        try:
            config = load_config(path)
        except ConfigError as err:
            line = str(err)
            assert line and "\n" not in line, f"not one line: {line!r}"
            return
        from hypervisor.node import Node
        for node in range(config.nnodes):     # everything a node computes from the config before it runs
            Node(config, node, b"s" * 32)


@settings(PROFILE, max_examples=500)
@given(CONFIGS)
def fuzz_config_values(parts) -> None:  # type: ignore[no-untyped-def]
    bounded(check_config)(cluster_text(*parts).encode("utf-8", "surrogatepass"))


@PROFILE
@given(st.binary(max_size=8), st.integers(0, 200), st.integers(0, 4))
def fuzz_config_bytes(insert: bytes, position: int, cut: int) -> None:
    """Raw edits of a good file: invalid UTF-8, broken TOML, truncation."""
    text = cluster_text(GOOD_CLUSTER, GOOD_NODES).encode()
    position = min(position, len(text))
    bounded(check_config)(text[:position] + insert + text[position + cut:])


# --- ELF images ---------------------------------------------------------------
RAM = 64 * MIB
U64 = st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from([0, 1, 2 ** 63, 2 ** 64 - 1]))


@st.composite
def segment(draw, file_size: int) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    """A program header: mostly a PT_LOAD inside the file and RAM, so the segment rules are reached."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 7), U64, U64, U64, U64, U64, U64))
    offset = draw(st.integers(0, file_size))
    filesz = draw(st.one_of(st.integers(0, file_size - offset), st.sampled_from([file_size - offset]), U64))
    paddr = draw(st.integers(0, 9).flatmap(lambda roll: st.integers(1, 59).map(lambda mib: mib * MIB) if roll
                                           else st.one_of(st.integers(0, RAM), U64)))
    memsz = filesz + draw(st.one_of(st.just(0), st.integers(0, 2 * MIB), U64))
    kind = draw(st.sampled_from([1, 1, 1, 1, 0, 4, 0x6474e551]))
    return (kind, 5, offset, paddr, paddr, filesz, min(memsz, 2 ** 64 - 1), 0x1000)


@st.composite
def elf_image(draw) -> bytes:  # type: ignore[no-untyped-def]
    """An ELF image, well-formed but for what the draws change; a header may repeat up to 1500 times."""
    body = draw(st.sampled_from([0, 100, 0x1000, MIB + 7, 2 * MIB]))
    repeat = st.integers(0, 19).map(lambda roll: {0: 1500, 1: 64, 2: 2}.get(roll, 1))
    runs = draw(st.lists(st.tuples(segment(EHDR.size + body), repeat), min_size=1, max_size=5))
    phdrs = [phdr for phdr, times in runs for _ in range(times)]
    fields = {"class": 2, "data": 1, "type": 2, "machine": 62, "phoff": EHDR.size, "phentsize": PHDR.size,
              "phnum": len(phdrs), "entry": draw(st.sampled_from([p[3] for p in phdrs]))}
    if draw(st.integers(0, 4)) == 0:
        name = draw(st.sampled_from(sorted(fields)))
        fields[name] = draw(st.integers(0, 255) if name in ("class", "data") else
                            st.integers(0, 0xFFFF) if name in ("type", "machine", "phentsize", "phnum") else U64)
    ident = b"\x7fELF" + bytes([fields["class"], fields["data"], 1]) + bytes(9)
    header = EHDR.pack(ident, fields["type"], fields["machine"], 1, fields["entry"], fields["phoff"], 0, 0,
                       EHDR.size, fields["phentsize"], fields["phnum"], 64, 0, 0)
    # The table sits after the body, so segment offsets (drawn within header + body) stay meaningful.
    table = b"".join(PHDR.pack(*p) for p in phdrs)
    if fields["phoff"] == EHDR.size:
        header = EHDR.pack(ident, fields["type"], fields["machine"], 1, fields["entry"], EHDR.size + body, 0, 0,
                           EHDR.size, fields["phentsize"], fields["phnum"], 64, 0, 0)
    return header + bytes(body) + table


ELFS = elf_image()


def check_elf(data: bytes) -> None:
    tracemalloc.start()
    try:
        parse_image(data, RAM, 2)
    except LoaderError as err:
        assert str(err) and "\n" not in str(err), f"not one line: {err!r}"
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # Segments are views of the file: parsing may not allocate anything like the file's size again.
    assert peak < MIB, f"parsing a {len(data)}-byte image allocated {peak} bytes"


@PROFILE
@given(ELFS)
def fuzz_elf_headers(data: bytes) -> None:
    bounded(check_elf)(data)


@settings(PROFILE, max_examples=40)
@given(ELFS)
def fuzz_elf_files(data: bytes) -> None:
    """The same through load_image (stat, size cap, one read, digest)."""
    def load() -> None:
        with tempfile.NamedTemporaryFile(suffix=".elf") as file:
            file.write(data)
            file.flush()
            try:
                load_image(file.name, RAM, 2)
            except LoaderError as err:
                assert "\n" not in str(err)
    bounded(load)()


TARGETS = {"config": (fuzz_config_values, fuzz_config_bytes), "elf": (fuzz_elf_headers, fuzz_elf_files)}
MEMORY_LIMIT = 512 * MIB      # address space of the fuzzing process: Python and hypothesis need ~40 MiB
FUZZ_TIMEOUT = 120.0          # the whole run; under ten seconds on an idle development machine


def run_fuzz(target: str) -> subprocess.CompletedProcess[str]:
    """Fuzz `target` in a child process under MEMORY_LIMIT and FUZZ_TIMEOUT."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "tests.unit.hostile_fuzz", target], cwd=root, text=True,
                          capture_output=True, timeout=FUZZ_TIMEOUT, preexec_fn=limit)

if __name__ == "__main__":
    signal.signal(signal.SIGALRM, _alarm)
    for fuzz in TARGETS[sys.argv[1]]:
        fuzz()
    print(f"fuzzed {sys.argv[1]}: every example parsed or was refused in one line")
