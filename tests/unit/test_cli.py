"""Command-line parsing and errors: a bad command line is one line on stderr and status 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from hypervisor import cli, entry


@pytest.mark.parametrize("text, size", [
    ("64M", 64 << 20), ("64m", 64 << 20), ("1G", 1 << 30), ("4096K", 4 << 20), ("67108864", 64 << 20),
    ("64MiB", 64 << 20), ("2GB", 2 << 30),
])
def test_parse_size(text: str, size: int) -> None:
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "64X", "-4M", "1.5G", "64 M B"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


def test_defaults_and_options() -> None:
    args = cli.build_parser().parse_args(["run", "g.elf"])
    assert (args.guest, args.vcpus, args.mem, args.verbose) == ("g.elf", 1, 64 << 20, False)
    args = cli.build_parser().parse_args(["run", "g.elf", "--vcpus", "64", "--mem", "4G", "-v"])
    assert (args.vcpus, args.mem, args.verbose) == (64, 4 << 30, True)
    assert cli.build_parser().parse_args(["run", "--mem=4M", "g.elf"]).mem == 4 << 20


@pytest.mark.parametrize("argv, needle", [
    ([], "COMMAND"),
    (["boot", "g.elf"], "invalid choice"),
    (["run"], "GUEST.elf"),
    (["run", "g.elf", "--vcpus", "0"], "--vcpus"),
    (["run", "g.elf", "--vcpus", "65"], "outside 1..64"),
    (["run", "g.elf", "--vcpus", "two"], "invalid vCPU count"),
    (["run", "g.elf", "--mem", "2M"], "--mem"),
    (["run", "g.elf", "--mem", "65M"], "multiple of 2 MiB"),
    (["run", "g.elf", "--mem", "6G"], "between 4M and 4G"),
    (["run", "g.elf", "--mem", "lots"], "invalid size"),
    (["run", "g.elf", "--frobnicate"], "unrecognized arguments"),
    (["run", "g.elf", "--nodes", "0"], "node count 0 outside 1..64"),
    (["run", "g.elf", "--manager", "anarchy"], "invalid choice"),
    (["run", "g.elf", "--read-ownership", "mine"], "invalid choice"),
    (["node", "--id", "0"], "--config"),
    (["node", "--config", "c.toml"], "--id"),
])
def test_bad_command_lines(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_no_room_beside_the_stacks_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "g.elf", "--mem", "4M", "--vcpus", "64"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["node", "--help"]])
def test_help_documents_options_and_statuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    for status in ("0-255", "2 ", "3 ", "4 ", "5 ", "6 ", "7 ", "8 ", "130"):
        assert status in out
    if argv[0] == "run":
        for option in ("--vcpus", "--mem", "-v", "GUEST.elf", "--nodes", "--manager", "--read-ownership",
                       "--stats"):
            assert option in out


def test_more_nodes_than_vcpus_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "g.elf", "--vcpus", "2", "--nodes", "3"]) == 2
    err = capsys.readouterr().err
    assert "--nodes 3 is more than --vcpus 2" in err and err.count("\n") == 1


def test_node_with_a_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text("[cluster\n")
    assert cli.main(["node", "--config", str(config), "--id", "0"]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and err.count("\n") == 1
    config.write_text('[cluster]\nimage = "g.elf"\nvcpus = 1\n[[node]]\naddress = "127.0.0.1:7000"\n')
    assert cli.main(["node", "--config", str(config), "--id", "3"]) == 2
    assert "describes nodes 0..0" in capsys.readouterr().err


def test_refused_image_is_status_3_before_kvm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.elf"
    bogus.write_bytes(b"#!/bin/sh\n")
    assert cli.main(["run", str(bogus)]) == 3
    err = capsys.readouterr().err
    assert "bogus.elf: not an ELF file" in err and err.count("\n") == 1
    assert cli.main(["run", str(tmp_path / "absent.elf")]) == 3
    assert "cannot read" in capsys.readouterr().err


class _InterruptingFinder:
    """Raises KeyboardInterrupt while `name` is being imported, as a Ctrl-C during start-up does."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname == self.name:
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_the_cli_is_still_importing_is_one_line_and_status_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delitem(sys.modules, "hypervisor.cli")
    monkeypatch.setattr(sys, "meta_path", [_InterruptingFinder("hypervisor.cli"), *sys.meta_path])
    assert entry.main() == 130
    assert capsys.readouterr().err == "ivyvm: interrupted\n"


def test_the_console_script_runs_the_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["ivyvm", "run", "g.elf", "--vcpus", "0"])
    with pytest.raises(SystemExit) as stop:
        entry.main()
    assert stop.value.code == 2
    assert "--vcpus" in capsys.readouterr().err


def test_dsm_timing_options() -> None:
    args = cli.build_parser().parse_args(["run", "g.elf", "--vcpus", "2", "--nodes", "2"])
    assert (args.poll_us, args.hold_us) == (None, None)  # the DSM's defaults
    args = cli.build_parser().parse_args(["run", "g.elf", "--nodes", "2", "--poll-us", "30", "--hold-us", "0"])
    assert (args.poll_us, args.hold_us) == (30, 0)


@pytest.mark.parametrize("argv, needle", [
    (["--poll-us", "-5"], "-5 us outside 0..1000000"),
    (["--hold-us", "1000001"], "1000001 us outside 0..1000000"),
    (["--poll-us", "ten"], "invalid microseconds 'ten'"),
])
def test_bad_dsm_timing_is_one_line_and_status_2(argv: list[str], needle: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "g.elf", "--vcpus", "2", "--nodes", "2", *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
