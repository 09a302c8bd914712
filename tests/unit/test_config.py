"""Cluster configuration: placement, parsing and the errors a user sees."""
from __future__ import annotations

from pathlib import Path

import pytest

from hypervisor.config import (ClusterOptions, ConfigError, contiguous_placement, load_config,
                               loopback_cluster, parse_size)


def test_contiguous_placement_follows_floor_formula() -> None:
    assert contiguous_placement(4, 2) == [(0, 1), (2, 3)]
    assert contiguous_placement(3, 3) == [(0,), (1,), (2,)]
    assert contiguous_placement(5, 2) == [(0, 1, 2), (3, 4)]
    for vcpus in range(1, 9):
        for nodes in range(1, vcpus + 1):
            placement = contiguous_placement(vcpus, nodes)
            for node, placed in enumerate(placement):
                assert all(v * nodes // vcpus == node for v in placed)


def test_parse_size_units() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("1G") == 1 << 30
    assert parse_size("4096") == 4096
    assert parse_size("2MiB") == 2 << 20
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size("lots")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_load_config_defaults_and_explicit_placement(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[cluster]
image = "guest.elf"
vcpus = 3
mem = "32M"
manager = "fixed"
[[node]]
address = "10.1.0.1:7000"
vcpus = [0, 2]
[[node]]
address = "10.1.0.2:7000"
vcpus = [1]
"""))
    assert config.mem == 32 << 20
    assert config.image == tmp_path / "guest.elf"
    assert config.nodes[0].vcpus == (0, 2)
    assert config.node_of_vcpu(1) == 1
    assert config.nodes[1].control_address == ("10.1.0.2", 7001)
    assert config.manager == "fixed"


@pytest.mark.parametrize("body, message", [
    ('[cluster]\nimage="g"\nvcpus=2\n', "at least one"),
    ('[cluster]\nimage="g"\nvcpus=2\n[[node]]\naddress="h"\n', "bad address"),
    ('[cluster]\nimage="g"\nvcpus=2\n[[node]]\naddress="h:1"\nvcpus=[0]\n', "exactly one node"),
    ('[cluster]\nimage="g"\nvcpus=2\nmanager="x"\n[[node]]\naddress="h:1"\n', "manager"),
    ('[cluster]\nvcpus=2\n[[node]]\naddress="h:1"\n', "lacks 'image'"),
    ('[cluster\n', "not valid TOML"),
])
def test_bad_configs_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, body))


def test_secret_comes_from_environment_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IVYVM_SECRET", raising=False)
    secret = tmp_path / "secret"
    secret.write_text("s" * 32 + "\n")
    secret.chmod(0o600)
    config = load_config(write(tmp_path, f"""
[cluster]
image = "g"
vcpus = 1
secret_file = "{secret.name}"
[[node]]
address = "127.0.0.1:7000"
"""))
    assert config.read_secret() == b"s" * 32
    monkeypatch.setenv("IVYVM_SECRET", "from-environment-0123")
    assert config.read_secret() == b"from-environment-0123"
    secret.write_text("short")
    monkeypatch.delenv("IVYVM_SECRET")
    with pytest.raises(ConfigError, match="at least 16"):
        config.read_secret()


def test_loopback_cluster_rejects_more_nodes_than_vcpus() -> None:
    with pytest.raises(ConfigError, match="--nodes 3"):
        loopback_cluster(Path("g"), vcpus=2, mem=64 << 20, nnodes=3, ports=[(1000, 1001), (1002, 1003), (1004, 1005)])
    config = loopback_cluster(Path("g"), vcpus=4, mem=64 << 20, nnodes=2, ports=[(1000, 2000), (1002, 2002)])
    assert [n.vcpus for n in config.nodes] == [(0, 1), (2, 3)]
    assert config.nodes[1].control_address == ("127.0.0.1", 2002)


def test_config_ram_size_follows_the_abi_rule(tmp_path: Path) -> None:
    body = '[cluster]\nimage = "g"\nvcpus = 1\nmem = "{}"\n[[node]]\naddress = "127.0.0.1:7000"\n'
    with pytest.raises(ConfigError, match="multiple of 2 MiB"):
        load_config(write(tmp_path, body.format("65M")))
    assert load_config(write(tmp_path, body.format("4M"))).mem == 4 << 20


TUNED = '[cluster]\nimage = "g"\nvcpus = 2\n{}\n[[node]]\naddress = "127.0.0.1:7000"\n[[node]]\naddress = "127.0.0.1:7002"\n'


def test_dsm_timing_is_the_dsm_default_unless_the_config_sets_it(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, TUNED.format(""))).dsm_tuning() == {}
    config = load_config(write(tmp_path, TUNED.format("poll_us = 40\nhold_us = 0")))
    assert config.dsm_tuning() == {"poll_us": 40, "hold_us": 0}


@pytest.mark.parametrize("line, message", [
    ("poll_us = -1", "poll_us -1: must be between 0 and 1000000"),
    ("hold_us = 1000001", "hold_us 1000001: must be between 0 and 1000000"),
    ('poll_us = "50"', "poll_us must be a whole number of microseconds, not '50'"),
    ("hold_us = 2.5", "hold_us must be a whole number of microseconds, not 2.5"),
    ("poll_us = true", "poll_us must be a whole number of microseconds, not True"),
])
def test_bad_dsm_timing_names_the_key_and_value(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, TUNED.format(line)))


def test_the_file_ivyvm_run_writes_for_its_nodes_carries_the_timing(tmp_path: Path) -> None:
    from hypervisor.cluster import write_config
    config = loopback_cluster(tmp_path / "g.elf", vcpus=2, mem=64 << 20, nnodes=2,
                              ports=[(7000, 7001), (7002, 7003)], options=ClusterOptions(poll_us=25, hold_us=0))
    again = load_config(write_config(config, tmp_path))
    assert again.dsm_tuning() == {"poll_us": 25, "hold_us": 0}
    assert load_config(write_config(loopback_cluster(tmp_path / "g.elf", 2, 64 << 20, 2,
                                                     [(7000, 7001), (7002, 7003)]), tmp_path)).dsm_tuning() == {}


def test_ivyvm_run_fills_every_cluster_option_and_the_file_carries_them_back(tmp_path: Path) -> None:
    from hypervisor import cli
    from hypervisor.cluster import write_config
    args = cli.build_parser().parse_args([
        "run", "g.elf", "--vcpus", "2", "--nodes", "2", "--read-ownership", "ivy", "--manager", "central",
        "--first-touch", "write", "--no-map-owned", "--prefetch", "--no-batch", "--poll-us", "25", "--hold-us", "0", "--stall-warn", "0.75",
        "--timeout", "12.5"])
    options = ClusterOptions.taken_from(args)
    assert options == ClusterOptions(read_ownership="ivy", manager="central", first_touch="write", prefetch=True,
                                     map_owned=False, batch=False, poll_us=25, hold_us=0, stall_warn=0.75,
                                     timeout=12.5)
    written = loopback_cluster(tmp_path / "g.elf", 2, 64 << 20, 2, [(7000, 7001), (7002, 7003)], options)
    assert ClusterOptions.taken_from(load_config(write_config(written, tmp_path))) == options


def test_a_node_runs_its_dsm_with_the_configured_timing(tmp_path: Path) -> None:
    from hypervisor.dsm import DsmOptions
    from hypervisor.node import Node
    tuned = load_config(write(tmp_path, TUNED.format('poll_us = 40\nhold_us = 0\nmanager = "fixed"')))
    assert Node(tuned, 1, b"s" * 32).options == DsmOptions(manager="fixed", poll_us=40, hold_us=0)
    plain = load_config(write(tmp_path, TUNED.format("")))
    assert Node(plain, 1, b"s" * 32).options == DsmOptions()


def test_migratory_pages_are_a_cluster_option_every_node_gets(tmp_path: Path) -> None:
    from hypervisor.cluster import write_config
    from hypervisor.dsm import DsmOptions
    from hypervisor.handshake import ClusterShape
    from hypervisor.node import Node
    assert load_config(write(tmp_path, TUNED.format(""))).migratory is False
    config = load_config(write(tmp_path, TUNED.format("migratory = true")))
    assert config.migratory is True
    node = Node(config, 1, b"s" * 32)
    assert node.options == DsmOptions(migratory=True)
    assert node.shape == ClusterShape(2, config.mem, migratory=1)   # the handshake makes peers agree
    written = loopback_cluster(tmp_path / "g.elf", 2, 64 << 20, 2, [(7000, 7001), (7002, 7003)],
                               ClusterOptions(migratory=True))
    assert load_config(write_config(written, tmp_path)).migratory is True


@pytest.mark.parametrize("line, message", [
    ('migratory = "yes"', "migratory must be true or false, not 'yes'"),
    ("migratory = 1", "migratory must be true or false, not 1"),
    ('migratory = true\nread_ownership = "ivy"', 'migratory = true needs read_ownership = "giantvm"'),
])
def test_bad_migratory_option_is_named(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, TUNED.format(line)))


def test_first_touch_is_read_from_the_file_and_written_back(tmp_path: Path) -> None:
    from hypervisor.cluster import write_config
    from hypervisor.dsm import DsmOptions
    from hypervisor.node import Node
    assert load_config(write(tmp_path, TUNED.format(""))).first_touch == "read"
    config = load_config(write(tmp_path, TUNED.format('first_touch = "write"\nmap_owned = false')))
    assert config.first_touch == "write"
    assert Node(config, 1, b"s" * 32).options == DsmOptions(first_touch="write", map_owned=False)
    written = loopback_cluster(tmp_path / "g.elf", 2, 64 << 20, 2, [(7000, 7001), (7002, 7003)],
                               ClusterOptions(first_touch="write", map_owned=False))
    again = load_config(write_config(written, tmp_path))
    assert (again.first_touch, again.map_owned) == ("write", False)


def test_map_owned_is_on_unless_the_file_says_false(tmp_path: Path) -> None:
    from hypervisor.dsm import DsmOptions
    from hypervisor.node import Node
    assert load_config(write(tmp_path, TUNED.format(""))).map_owned is True
    config = load_config(write(tmp_path, TUNED.format("map_owned = false")))
    assert Node(config, 0, b"s" * 32).options == DsmOptions(map_owned=False)


def test_batch_is_on_unless_the_file_or_the_command_line_says_false(tmp_path: Path) -> None:
    from hypervisor import cli
    from hypervisor.dsm import DsmOptions
    from hypervisor.node import Node
    assert load_config(write(tmp_path, TUNED.format(""))).batch is True
    config = load_config(write(tmp_path, TUNED.format("batch = false")))
    assert Node(config, 1, b"s" * 32).options == DsmOptions(batch=False)
    parse = cli.build_parser().parse_args
    assert parse(["run", "g.elf", "--nodes", "2"]).batch is True
    assert parse(["run", "g.elf", "--nodes", "2", "--no-batch"]).batch is False
    with pytest.raises(ConfigError, match="batch must be true or false, not 'yes'"):
        load_config(write(tmp_path, TUNED.format('batch = "yes"')))


@pytest.mark.parametrize("line, message", [
    ('first_touch = "always"', "first_touch 'always': expected one of read, write"),
    ("first_touch = 1", "first_touch must be a string, not 1"),
    ('first_touch = "write"', 'first_touch = "write" needs map_owned = false'),
    ('map_owned = "no"', "map_owned must be true or false, not 'no'"),
])
def test_bad_first_touch_is_named(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, TUNED.format(line)))


def test_prefetch_is_read_from_the_file_and_written_back(tmp_path: Path) -> None:
    from hypervisor.cluster import write_config
    from hypervisor.dsm import DsmOptions
    from hypervisor.node import Node
    assert load_config(write(tmp_path, TUNED.format(""))).prefetch is False
    config = load_config(write(tmp_path, TUNED.format('prefetch = true\nread_ownership = "ivy"')))
    assert config.prefetch is True
    assert Node(config, 1, b"s" * 32).options == DsmOptions(read_ownership="ivy", prefetch=True)
    written = loopback_cluster(tmp_path / "g.elf", 2, 64 << 20, 2, [(7000, 7001), (7002, 7003)],
                               ClusterOptions(read_ownership="ivy", prefetch=True))
    assert load_config(write_config(written, tmp_path)).prefetch is True


@pytest.mark.parametrize("line, message", [
    ('prefetch = "yes"', "prefetch must be true or false, not 'yes'"),
    ("prefetch = true", 'prefetch = true needs read_ownership = "ivy"'),
])
def test_bad_prefetch_option_is_named(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, TUNED.format(line)))
