"""`make bench`'s guest-level part keeps working: a quick run reports every figure, readably.

Harness only, as test_bench_harness.py: no figure is held to a target (speed
goals live in `make bench`). What is checked: every access kind, workload and
issue-10 target is there with a unit and a direction, the guests passed
their own data checks (run_guest raises otherwise), node 0 faulted once per
page and access step, the printed tables name no
temporary path and no JSON key, the host-load verdict is complete, and the
plots are drawn or their absence is said in one line.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import guests, hostload, plots
from tests.conftest import requires_kvm

CORE_READ_US = 50.0  # stands in for the DSM core's figure, which test_bench_harness.py covers


@pytest.fixture(scope="module")
def results() -> dict:
    before = hostload.Snapshot.take()
    r = guests.bench_guests(CORE_READ_US, "stand-in placement", quick=True)
    r["host"] = hostload.verdict(before, hostload.Snapshot.take())
    return r


@requires_kvm
def test_every_access_kind_has_a_cost_and_a_rate(results: dict) -> None:
    costs = results["page_costs"]
    assert costs["pages"] == 256 and costs["runs"] == 1
    for where in ("one_node", "two_nodes"):
        assert list(costs[where]) == list(guests.PHASES)
        for phase, c in costs[where].items():
            assert c["median_us"] >= 0 and c["mean_us"] > 0 and c["mib_per_s"] > 0, (where, phase)
    floor = results["floor_e"]
    assert floor["us"] == floor["first_touch_one_node_us"] + CORE_READ_US
    # Both nodes report their DSM counters. Node 0 took a remote fault per page for each read
    # step (sequential, random, the rmw's read) and a local one per page for each write step
    # (write_inval, the rmw's write); none for its first touches (map_owned, on by default,
    # maps node 0's pages up front).
    stats = costs["node_stats_two_nodes"][0]
    pages = costs["pages"]
    assert [s["node"] for s in stats] == [0, 1]
    assert stats[0]["remote_faults"] >= 3 * pages
    assert stats[0]["local_faults"] >= 2 * pages


@requires_kvm
def test_workloads_and_targets_say_which_direction_is_better(results: dict) -> None:
    w = results["workloads"]
    assert set(w) == {"spanning_counter", "pagewalk", "ipi_pingpong", "disjoint", "mp_litmus_4"}
    for name, row in w.items():
        assert row["one_node"] > 0 and row["many_nodes"] > 0, name
        assert row["better"] in ("lower", "higher") and row["unit"], name
    assert w["mp_litmus_4"]["nodes"] == 4
    # pagewalk's time, from its nodes' counters: every page faults at least twice (moved there and back).
    share = w["pagewalk"]["faults"]
    assert share["remote_per_page"] >= 2 and share["faults_per_page"] >= share["remote_per_page"]
    assert 0 < share["blocked_share"] and share["us_per_vcpu_fault"] > 0
    # What the host's CPUs allow: the faults the run took, at the CPU time each cost beyond start-up.
    floor = w["mp_litmus_4"]["cpu_floor"]
    assert floor["remote_faults"] > 0 and floor["cpus"] >= 1 and floor["cpu_us_per_remote_fault"] >= 0
    assert floor["all_cpus_busy_ms"] == pytest.approx(
        floor["cpu_us_per_remote_fault"] * floor["remote_faults"] / floor["cpus"] / 1e3)
    assert floor["floor_vs_1"] == pytest.approx(floor["all_cpus_busy_ms"] / w["mp_litmus_4"]["one_node"])
    keys = [t["key"] for t in results["targets"]]
    # The quick run has no 8-node message passing; everything else is judged.
    assert keys == [k for k, *_ in guests.TARGETS if k != "mp8_vs_1"]
    for t in results["targets"]:
        assert t["ratio"] > 0 and t["better"] in ("lower", "higher")
        assert t["met"] == (t["ratio"] <= t["target"] if t["better"] == "lower" else t["ratio"] >= t["target"])
    # The rows for an option built for a target are that option's own figures from this run.
    ratio = {t["key"]: t["ratio"] for t in results["targets"]}
    assert ratio["read_seq_vs_first_touch_prefetch"] == results["prefetch"]["read_seq"]["on_vs_first_touch"]
    assert ratio["pagewalk_2_vs_1_prefetch"] == results["prefetch"]["pagewalk"]["on_vs_one_node"]
    assert ratio["rmw_vs_read_rand_migratory"] == results["migratory"]["rmw_vs_read_rand"]["on"]


@requires_kvm
def test_migratory_pages_are_measured_on_and_off(results: dict) -> None:
    from bench.migratory import FIGURES
    m = results["migratory"]
    assert m["runs"] == 1
    for f in FIGURES:
        row = m[f]
        assert row["off_us"] > 0 and row["on_us"] > 0 and row["better"] == "lower", f
        assert row["on_vs_off"] == row["on_us"] / row["off_us"]
    span = m["spanning_counter"]
    assert span["better"] == "higher" and span["on_vs_off"] == span["on_mincr_s"] / span["off_mincr_s"]
    for way in ("off", "on"):
        assert m["rmw_vs_read_rand"][way] == pytest.approx(m["pagecost_rmw"][f"{way}_us"]
                                                           / m["pagecost_read_rand"][f"{way}_us"])  # one run


@requires_kvm
def test_prefetch_is_measured_on_and_off(results: dict) -> None:
    from bench.prefetch import ACCESSES
    p = results["prefetch"]
    assert p["runs"] == 1 and p["first_touch_one_node_us"] > 0 and p["pagewalk_one_node_mib_s"] > 0
    for a in ACCESSES:
        row = p[a]
        assert row["off_us"] > 0 and row["on_us"] > 0 and row["better"] == "lower", a
        assert row["on_vs_off"] == row["on_us"] / row["off_us"]
        assert row["on_vs_first_touch"] == row["on_us"] / p["first_touch_one_node_us"]
    w = p["pagewalk"]
    assert w["better"] == "higher" and w["on_vs_one_node"] == w["on_mib_s"] / p["pagewalk_one_node_mib_s"]


@requires_kvm
def test_batching_is_measured_on_and_off(results: dict) -> None:
    from bench.batch import ACCESSES, CORE
    b = results["batch"]
    assert b["runs"] == 1 and b["core"]
    rows = [b["core"][where][f] for where in b["core"] for f in CORE] + [
        b[kind][a] for kind in ("giantvm", "prefetch") for a in ACCESSES]
    for row in rows:
        assert row["off_us"] > 0 and row["on_us"] > 0 and row["better"] == "lower", row["label"]
        assert row["on_vs_off"] == row["on_us"] / row["off_us"]
    assert b["pagewalk"]["better"] == "higher" and b["mp4"]["better"] == "lower" and b["mp4"]["off_ms"] > 0
    # Prefetch windows are bursts: with batching pagewalk's frames took fewer sends, without one each
    # (or more, where a full socket needed flushes).
    sends = b["sends_per_frame"]["pagewalk"]
    assert sends["on"] < 1 <= sends["off"], sends


@requires_kvm
def test_tables_are_words_with_units(results: dict, capsys: pytest.CaptureFixture[str]) -> None:
    guests.print_guest_tables(results)
    print(hostload.describe(results["host"]))
    out = capsys.readouterr().out
    assert "/tmp" not in out and "ivyvm-" not in out
    for key in ("read_rand", "write_inval", "first_touch", "mp_litmus_4", "median_us", "mib_per_s"):
        assert key not in out, key
    for label in guests.PHASES.values():
        assert label in out
    assert out.count(" us ") >= 6 and "MiB/s" in out
    assert out.count("is better") >= len(results["workloads"])
    assert out.count(" met") + out.count("missed") >= len(results["targets"])
    assert out.startswith("\n== guest-level page costs")
    assert "== migratory pages: 2 nodes, on against off" in out
    assert "== prefetch: 2 nodes, ivy reads, on against off" in out
    assert "== batching, on against off" in out
    assert "host: load average" in out


def test_host_load_verdict_names_its_reasons() -> None:
    quiet = hostload.Snapshot(0.1, 0, 1000, [10.0, 10.1, 10.2])
    loaded = hostload.Snapshot(99.0, 200, 2000, [10.0, 30.0, 31.0])  # medians 10.1 and 30: 2.97 x
    assert hostload.verdict(quiet, quiet)["unreliable_because"] == []
    v = hostload.verdict(quiet, loaded)
    reasons = " ".join(v["unreliable_because"])
    assert "load average 99.0" in reasons and "steal time 20.0 %" in reasons and "varied" in reasons
    assert "took 2.97 x as long after" in reasons
    assert hostload.describe(v).splitlines()[1].startswith("WARNING: the guest-level figures are unreliable")


@requires_kvm
def test_plots_are_drawn_or_their_absence_said(results: dict, tmp_path: Path) -> None:
    missing = plots.matplotlib_missing()
    if missing:
        assert "\n" not in missing and "matplotlib" in missing
        return
    written = plots.guest_page_costs(results, tmp_path)
    assert [p.name for p in written] == ["guest-page-costs.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in written)
