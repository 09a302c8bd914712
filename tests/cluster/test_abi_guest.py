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

from hypervisor import run_guest
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
    result = run_guest(abi_guest, vcpus=vcpus, nodes=nodes, timeout=120)
    assert result.console == f"abi counter={vcpus * ROUNDS} ram=64M\n", result.stderr
    assert result.status == 0
