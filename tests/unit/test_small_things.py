"""What a user expects of any tool: --version, an example config, paths relative to the config."""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from hypervisor import cli, config
from hypervisor.example_config import EXAMPLE_CONFIG

IVYVM = [sys.executable, "-m", "hypervisor.cli"]


def test_version_comes_from_the_package_metadata() -> None:
    proc = subprocess.run(IVYVM + ["--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ivyvm {metadata.version('ivyvm')}\n"


def test_example_config_is_printed_and_the_loader_accepts_it(tmp_path: Path) -> None:
    proc = subprocess.run(IVYVM + ["node", "--example-config"], capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == EXAMPLE_CONFIG
    assert sum(line.lstrip().startswith("#") for line in proc.stdout.splitlines()) > 10, "it should be commented"
    path = tmp_path / "cluster.toml"
    path.write_text(proc.stdout)
    loaded = config.load_config(path)
    assert (loaded.vcpus, loaded.mem, loaded.nnodes) == (2, 64 << 20, 2)
    assert [n.address for n in loaded.nodes] == [("192.0.2.10", 7000), ("192.0.2.11", 7000)]
    assert [n.control_address[1] for n in loaded.nodes] == [7001, 7001]
    assert [n.vcpus for n in loaded.nodes] == [(0,), (1,)]


def test_every_commented_option_of_the_example_is_accepted(tmp_path: Path) -> None:
    """Uncommenting the optional settings (with their defaults) still loads."""
    text = "\n".join(line[2:] if line.startswith("# ") and " = " in line.split("#")[1] else line
                     for line in EXAMPLE_CONFIG.splitlines())
    assert "\nmanager = " in text and "\nhold_us = " in text and "\ncontrol_port = " in text
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    loaded = config.load_config(path)
    assert (loaded.manager, loaded.read_ownership, loaded.poll_us, loaded.hold_us) == ("dynamic", "giantvm", 0, 50)


@pytest.mark.parametrize("argv", [["node"], ["node", "--config", "c.toml"], ["node", "--id", "0"]])
def test_node_without_config_or_id_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required" in err and "--example-config" in err, err


def test_image_and_secret_file_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wherever the user stands, image = "guest.elf" means the file beside cluster.toml."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "cluster.toml").write_text(EXAMPLE_CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = config.load_config(Path("../site/cluster.toml"))
    assert loaded.image.resolve() == (site / "guest.elf").resolve()
    assert loaded.secret_file is not None and loaded.secret_file.resolve() == (site / "secret").resolve()
    monkeypatch.chdir(site)
    assert config.load_config(Path("cluster.toml")).image.resolve() == (site / "guest.elf").resolve()
