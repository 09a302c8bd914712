"""The starter guest as a new user gets it: copied out of the tree, built by its own Makefile alone."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import hypervisor
from tests.cluster.common import run_cli
from tests.conftest import ROOT, requires_kvm

STARTER = ROOT / "guest" / "starter"


@pytest.fixture(scope="module")
def starter_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory copied as the README says (sources only), then `make` run in the copy."""
    copy = tmp_path_factory.mktemp("user") / "myguest"
    shutil.copytree(STARTER, copy, ignore=shutil.ignore_patterns("*.o", "*.elf"))
    proc = subprocess.run(["make", "-C", str(copy)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Built from the copy's own files: nothing from the tree took part.
    assert str(ROOT) not in proc.stdout
    return copy / "starter.elf"


def test_starter_is_self_contained() -> None:
    """Its sources name no file outside the directory (no include of the runtime, no ../)."""
    for source in STARTER.iterdir():
        if source.suffix in (".c", ".S", ".h") or source.name == "Makefile":
            text = source.read_text()
            assert "../" not in text and "runtime/" not in text and "#include" not in text, source


@requires_kvm
@pytest.mark.parametrize("vcpus, nodes", [(1, 1), (2, 1), (2, 2), (3, 2)])
def test_copied_starter_runs_at_cpl3(starter_copy: Path, vcpus: int, nodes: int) -> None:
    result = hypervisor.run_guest(starter_copy, vcpus=vcpus, nodes=nodes, timeout=120)
    assert result.status == 0, result.stderr
    lines = result.lines
    assert sorted(lines[:-1]) == [f"hello from vCPU {i} of {vcpus} at CPL3" for i in range(vcpus)], lines
    assert lines[-1] == f"PASS starter: {vcpus} vCPUs, 64 MiB"


@requires_kvm
def test_starter_refuses_more_vcpus_than_its_tables(starter_copy: Path) -> None:
    out = run_cli("run", str(starter_copy), "--vcpus", "17")
    assert (out.status, out.stdout) == (1, "starter: more vCPUs than MAX_CPUS in start.S\n"), out.stderr
