"""A guest written from docs/guest-abi.md alone, with no ivyvm runtime, across nodes.

It stays at CPL0 (emulated on these hosts, so every access of the emulator
to guest memory also goes through the DSM), polls the UART's line status
before each byte, parks with hlt and IF=0, and exits through 0xf4: the
contract as an outside author would use it.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cluster.common import run_cli
from tests.conftest import requires_kvm

SOURCE = Path(__file__).parent / "abi" / "cpl0_counter.c"
ROUNDS = 300


@pytest.fixture(scope="module")
def abi_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    elf = tmp_path_factory.mktemp("abi") / "cpl0_counter.elf"
    subprocess.run(["gcc", f"-DROUNDS={ROUNDS}", "-O2", "-ffreestanding", "-fno-pic", "-no-pie", "-nostdlib",
                    "-static", "-mno-red-zone", "-fno-stack-protector", "-Wl,-Ttext=0x200000", "-Wl,-e,_start",
                    "-Wl,--build-id=none", "-o", str(elf), str(SOURCE)], check=True)
    return elf


@requires_kvm
@pytest.mark.parametrize("vcpus, nodes", [(1, 1), (2, 2), (3, 3)])
def test_independent_cpl0_guest(abi_guest: Path, vcpus: int, nodes: int) -> None:
    out = run_cli("run", str(abi_guest), "--vcpus", str(vcpus), "--nodes", str(nodes))
    assert out.stdout == f"abi counter={vcpus * ROUNDS} ram=64M\n", out.stderr
    assert out.status == 0
