"""Hostile cluster.toml and secret files (issue 11, "Input"): one line and status 2, never a traceback or hang.

Each finding of the issue is a case here, checked on load_config (the line)
and, for the ones that used to hang or blow up, through the CLI a user runs
(the status, the single line, no traceback, within a timeout).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypervisor.config import MAX_CONFIG_BYTES, ConfigError, load_config, read_secret_file
from tests.conftest import ROOT
from tests.unit.hostile_fuzz import run_fuzz

GOOD = {"image": '"g.elf"', "vcpus": "2", "mem": '"64M"'}
NODES = '[[node]]\naddress = "127.0.0.1:7000"\n[[node]]\naddress = "127.0.0.1:7002"\n'
CLI_SECONDS = 30.0


def config_text(cluster: dict[str, str] | None = None, nodes: str = NODES) -> str:
    fields = {**GOOD, **(cluster or {})}
    return "[cluster]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None) + nodes


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def ivyvm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hypervisor.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=CLI_SECONDS, env=env)


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, needle: str) -> None:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ivyvm: "), result.stderr
    assert needle in result.stderr


@pytest.mark.parametrize("cluster, nodes, message", [
    ({"mem": "1.5"}, NODES, "mem must be a size"),
    ({"mem": "[64]"}, NODES, "mem must be a size"),
    ({"mem": "true"}, NODES, "mem must be a size"),
    ({"mem": '"99999999999999999999G"'}, NODES, "invalid size"),
    ({"vcpus": "inf"}, NODES, "vcpus must be a whole number, not inf"),
    ({"vcpus": "nan"}, NODES, "vcpus must be a whole number, not nan"),
    ({"vcpus": "1.5"}, NODES, "vcpus must be a whole number, not 1.5"),
    ({"vcpus": "true"}, NODES, "vcpus must be a whole number, not True"),
    ({"vcpus": '"2"'}, NODES, "vcpus must be a whole number, not '2'"),
    ({"vcpus": "1000000000000000"}, NODES, "vcpus 1000000000000000: must be between 1 and 64"),
    ({"vcpus": "0"}, NODES, "vcpus 0: must be between 1 and 64"),
    ({}, '[[node]]\naddress = "127.0.0.1:7000"\nid = "x"\n', "id must be a whole number, not 'x'"),
    ({}, '[[node]]\naddress = "127.0.0.1:7000"\nid = 1.0\n', "id must be a whole number, not 1.0"),
    ({}, '[[node]]\naddress = "127.0.0.1:7000"\ncontrol_port = 70000\n', "control_port 70000: must be between 1"),
    ({}, '[[node]]\naddress = "127.0.0.1:7000"\ncontrol_port = "7001"\n', "control_port must be a whole number"),
    ({}, '[[node]]\naddress = "127.0.0.1:70000"\n', "bad address"),
    ({}, '[[node]]\naddress = "127.0.0.1:\u00b2"\n', "bad address"),
    ({}, '[[node]]\naddress = 7000\n', "address must be a string"),
    ({}, f'[[node]]\naddress = "{"a" * 70}:7000"\n', "bad host"),
    ({}, '[[node]]\naddress = "my host:7000"\n', "bad host"),
    ({"vcpus": "1"}, '[[node]]\naddress = "127.0.0.1:7000"\nvcpus = "0"\n', "vcpus must be a list of vCPU numbers"),
    ({"vcpus": "1"}, '[[node]]\naddress = "127.0.0.1:7000"\nvcpus = [true]\n', "vcpus entry must be a whole number"),
    ({"vcpus": "1"}, '[[node]]\naddress = "127.0.0.1:7000"\nvcpus = [5]\n', "vcpus entry 5: must be between 0 and 0"),
    ({"vcpus": "1"}, '[[node]]\naddress = "127.0.0.1:7000"\nvcpus = [' + "0, " * 100 + ']\n', "lists 100 vCPUs"),
    ({"secret_file": "5"}, NODES, "secret_file must be a string, not 5"),
    ({"secret_file": '""'}, NODES, "secret_file is empty"),
    ({"image": "5"}, NODES, "image must be a string, not 5"),
    ({"image": '"g\\u0000.elf"'}, NODES, "image contains a NUL character"),
    ({"manager": "1"}, NODES, "manager must be a string, not 1"),
    ({"setup_timeout": "inf"}, NODES, "setup_timeout must be a number of seconds, not inf"),
    ({"setup_timeout": "nan"}, NODES, "setup_timeout must be a number of seconds, not nan"),
    ({"memory": '"128M"'}, NODES, "[cluster] has unknown key 'memory'"),
    ({}, '[[node]]\naddress = "127.0.0.1:7000"\nport = 7001\n', "[[node]] number 0 has unknown key 'port'"),
    ({}, NODES + "[extra]\nx = 1\n", "has unknown key 'extra'"),
    ({}, "[[node]]\n" * 65, "65 nodes: must be between 1 and 64"),
])
def test_each_bad_field_is_refused_with_its_name(tmp_path: Path, cluster: dict[str, str], nodes: str,
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, config_text(cluster, nodes)))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("text, message", [
    ("x = " + "[" * 5000, "nested too deeply"),
    ("x = " + "9" * 5000, "not valid TOML"),
])
def test_pathological_toml_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_non_utf8_config_names_the_byte(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 10 is 0xff\)"):
        load_config(write(tmp_path, b"[cluster]\n\xff\n"))


def test_oversized_config_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    with open(path, "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)      # sparse: costs no disk
    with pytest.raises(ConfigError, match=f"the config is {MAX_CONFIG_BYTES + 1} bytes, more than"):
        load_config(path)


@pytest.mark.timeout(60)
def test_a_fifo_or_dev_zero_as_config_is_one_line_and_status_2(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert_one_line(ivyvm("node", "--config", str(fifo), "--id", "0"), 2, "not a regular file (it is a FIFO)")
    assert_one_line(ivyvm("node", "--config", "/dev/zero", "--id", "0"), 2,
                    "not a regular file (it is a character device)")
    assert_one_line(ivyvm("node", "--config", str(tmp_path), "--id", "0"), 2,
                    "not a regular file (it is a directory)")


def test_huge_vcpus_is_refused_before_any_placement_through_the_cli(tmp_path: Path) -> None:
    path = write(tmp_path, config_text({"vcpus": "9223372036854775807"}))
    assert_one_line(ivyvm("node", "--config", str(path), "--id", "0"), 2, "must be between 1 and 64")


def test_typo_memory_is_refused_through_the_cli(tmp_path: Path) -> None:
    path = write(tmp_path, config_text({"memory": '"128M"'}))
    assert_one_line(ivyvm("node", "--config", str(path), "--id", "0"), 2, "unknown key 'memory'")


# --- secrets ------------------------------------------------------------------
def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_secret_file_must_be_private(tmp_path: Path) -> None:
    secret = private(tmp_path / "secret", "x" * 32)
    assert read_secret_file(secret) == b"x" * 32
    for mode in (0o640, 0o604, 0o620):
        secret.chmod(mode)
        with pytest.raises(ConfigError, match=f"open to group or others \\(mode 0{mode:o}\\): run chmod 600"):
            read_secret_file(secret)


@pytest.mark.parametrize("make, message", [
    (lambda p: os.mkfifo(p), "not a regular file (it is a FIFO)"),
    (lambda p: os.symlink("/dev/zero", p), "not a regular file (it is a character device)"),
    (lambda p: os.mkdir(p), "not a regular file (it is a directory)"),
    (lambda p: private(p, "x" * 5000), "the secret file is 5000 bytes, more than the 4096 allowed"),
    (lambda p: private(p, " short \n"), "is 5 bytes; at least 16 are needed"),
    (lambda p: None, "cannot read: No such file or directory"),
])
@pytest.mark.timeout(30)
def test_bad_secret_files_are_refused_without_blocking(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret"
    make(secret)
    with pytest.raises(ConfigError) as refused:
        read_secret_file(secret)
    assert message in str(refused.value)


def secret_config(tmp_path: Path, secret: Path) -> Path:
    return write(tmp_path, config_text({"secret_file": f'"{secret}"'}))


@pytest.mark.timeout(60)
def test_fifo_and_dev_zero_secret_files_through_the_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IVYVM_SECRET"}
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    assert_one_line(ivyvm("node", "--config", str(secret_config(tmp_path, fifo)), "--id", "0", env=env), 2,
                    "(it is a FIFO)")
    assert_one_line(ivyvm("node", "--config", str(secret_config(tmp_path, Path("/dev/zero"))), "--id", "0",
                          env=env), 2, "(it is a character device)")


def test_short_environment_secret_is_refused(tmp_path: Path) -> None:
    env = dict(os.environ, IVYVM_SECRET="x")
    path = write(tmp_path, config_text())
    assert_one_line(ivyvm("node", "--config", str(path), "--id", "0", env=env), 2,
                    "IVYVM_SECRET is 1 bytes; at least 16 are needed")


def test_a_non_utf8_environment_secret_is_taken_as_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = b"\xff\xfe" + b"k" * 20
    monkeypatch.setitem(os.environb, b"IVYVM_SECRET", secret)
    assert load_config(write(tmp_path, config_text())).read_secret() == secret


def test_fuzzed_configs_never_escape_as_tracebacks_hangs_or_memory_blow_ups() -> None:
    result = run_fuzz("config")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "every example parsed or was refused" in result.stdout
