"""The time limit and the stall warning as options and config keys (issue 8, section 4)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor import cli
from hypervisor.config import DEFAULT_STALL_WARN, ClusterOptions, ConfigError, load_config, loopback_cluster
from hypervisor.runlimit import JoinProgress, TimeLimit, deadline_for, DEADLINE_ENV

BODY = '[cluster]\nimage = "g"\nvcpus = 2\n{}\n[[node]]\naddress = "127.0.0.1:7000"\n[[node]]\naddress = "127.0.0.1:7002"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_defaults_no_limit_and_a_two_second_stall_warning(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BODY.format("")))
    assert (config.timeout, config.stall_warn) == (None, DEFAULT_STALL_WARN) == (None, 2.0)
    args = cli.build_parser().parse_args(["run", "g.elf"])
    assert (args.timeout, args.stall_warn) == (None, 2.0)


def test_config_and_cli_set_both(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BODY.format("timeout = 30\nstall_warn = 0.5")))
    assert (config.timeout, config.stall_warn) == (30.0, 0.5)
    args = cli.build_parser().parse_args(["run", "g.elf", "--timeout", "2.5", "--stall-warn", "1"])
    assert (args.timeout, args.stall_warn) == (2.5, 1.0)


@pytest.mark.parametrize("line, message", [
    ("timeout = 0", "timeout 0: must be above 0 and at most 86400 seconds"),
    ("timeout = -3", "timeout -3: must be above 0"),
    ('timeout = "5"', "timeout must be a number of seconds, not '5'"),
    ("stall_warn = true", "stall_warn must be a number of seconds, not True"),
    ("stall_warn = 1e9", "stall_warn 1e\\+09: must be above 0 and at most 86400"),
    ("timeout = nan", "timeout must be a number of seconds, not nan"),
])
def test_bad_values_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BODY.format(line)))


@pytest.mark.parametrize("argv, needle", [
    (["--timeout", "0"], "time 0: must be above 0"),
    (["--timeout", "soon"], "invalid seconds 'soon'"),
    (["--stall-warn", "-1"], "time -1: must be above 0"),
])
def test_bad_options_are_one_line_and_status_2(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "g.elf", *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_the_file_ivyvm_run_writes_carries_both(tmp_path: Path) -> None:
    from hypervisor.cluster import write_config
    config = loopback_cluster(tmp_path / "g.elf", 2, 64 << 20, 2, [(7000, 7001), (7002, 7003)],
                              ClusterOptions(timeout=12.5, stall_warn=0.75))
    again = load_config(write_config(config, tmp_path))
    assert (again.timeout, again.stall_warn) == (12.5, 0.75)
    plain = load_config(write_config(loopback_cluster(tmp_path / "g.elf", 2, 64 << 20, 2,
                                                      [(7000, 7001), (7002, 7003)]), tmp_path))
    assert (plain.timeout, plain.stall_warn) == (None, 2.0)


def test_an_inherited_deadline_wins_over_the_own_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEADLINE_ENV, "1234.5")
    assert deadline_for(10.0, started=100.0) == 1234.5
    assert deadline_for(10.0, started=100.0) == 110.0      # read once: a child of this node counts anew
    assert deadline_for(None) is None


def test_time_limit_fires_once_and_not_after_cancel() -> None:
    import threading
    import time
    fired = threading.Event()
    TimeLimit(time.monotonic() + 0.05, fired.set).start()
    assert fired.wait(2.0)
    never = threading.Event()
    limit = TimeLimit(time.monotonic() + 0.2, never.set).start()
    limit.cancel()
    assert not never.wait(0.4)


def test_join_progress_names_the_nodes_still_missing() -> None:
    lines: list[str] = []
    progress = JoinProgress({2: "10.0.0.2:7000", 1: "10.0.0.1:7000"}, lines.append, period=0.05)
    assert progress.line() == "node 0: waiting for node 1 at 10.0.0.1:7000, node 2 at 10.0.0.2:7000"
    progress.joined(1)
    assert progress.line() == "node 0: waiting for node 2 at 10.0.0.2:7000"
    progress.joined(2)
    assert progress.line() is None
    with JoinProgress({1: "a:1"}, lines.append, period=0.05):
        import time
        time.sleep(0.18)
    assert lines and set(lines) == {"node 0: waiting for node 1 at a:1"}
