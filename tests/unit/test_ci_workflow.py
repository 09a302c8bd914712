"""The CI workflow runs exactly the README's two commands (and passes actionlint where it is installed)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def readme_commands() -> list[str]:
    block = re.search(r"## Two commands\n+```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md lost its 'Two commands' block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def workflow_commands() -> list[str]:
    """The `make` commands the workflow runs, without sudo and environment assignments."""
    found = []
    for line in WORKFLOW.read_text().splitlines():
        match = re.match(r"\s*run:\s*(.+)$", line)
        if match and match.group(1).strip() != "|":
            words = [w for w in match.group(1).split() if w != "sudo" and not re.match(r"^[A-Z_]+=", w)]
            found.append(" ".join(words))
    return found


def test_workflow_runs_the_readme_commands_in_order() -> None:
    assert readme_commands() == ["make demo", "make test"]
    assert workflow_commands() == readme_commands()


def test_workflow_grants_kvm_and_requires_the_kvm_tests() -> None:
    text = WORKFLOW.read_text()
    assert 'KERNEL=="kvm"' in text and "udevadm trigger" in text
    assert "IVYVM_REQUIRE_KVM=1" in text


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint is not installed (docs/ci.md)")
def test_actionlint_accepts_the_workflow() -> None:
    proc = subprocess.run(["actionlint", str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
