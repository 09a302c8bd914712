"""Issue 8, section 3: `ivyvm report` draws a real run's --stats-json (and --trace) as valid, non-empty PNGs."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.common import IVYVM, guest_elf, run_cli
from tests.conftest import ROOT, requires_kvm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("latency.png", "timeline.png", "pages.png")


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])          # the IHDR chunk comes first
    assert data[12:16] == b"IHDR" and width >= 100 and height >= 100, (path, width, height)
    assert b"IEND" in data[-12:] and len(data) > 5000, f"{path}: {len(data)} bytes"


@requires_kvm
def test_report_draws_stats_and_trace(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="make setup installs ivyvm[plot]")
    stats, trace = tmp_path / "stats.json", tmp_path / "trace.json"
    out = run_cli("run", str(guest_elf("spanning_counter")), "--vcpus", "2", "--nodes", "2",
                  "--stats-json", str(stats), "--trace", str(trace))
    assert out.status == 0, out.stderr
    drawn = run_cli("report", str(stats))
    assert drawn.status == 0, drawn.stderr
    assert drawn.stdout.splitlines() == [str(tmp_path / name) for name in FIGURES]
    with_trace = run_cli("report", str(stats), str(trace), "-o", str(tmp_path / "traced"))
    assert with_trace.status == 0, with_trace.stderr
    for path in [tmp_path / n for n in FIGURES] + [tmp_path / "traced" / n for n in FIGURES]:
        assert_png(path)


def test_report_refuses_what_is_not_a_stats_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "ivyvm-stats/1", "nodes": [{"node": 0}]}')
    out = run_cli("report", str(bad))
    assert out.status == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "is not an ivyvm --stats-json file" in out.stderr
    empty = tmp_path / "empty.json"
    empty.write_text('{"schema": "ivyvm-stats/1", "nodes": [], "note": "one node"}')
    out = run_cli("report", str(empty))
    assert out.status == 2 and "holds no node's statistics (one node)" in out.stderr


def test_report_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    from hypervisor import profile, report
    doc = tmp_path / "stats.json"
    from tests.unit.test_profile_format import sample_node
    profile.write_json(doc, profile.document([sample_node(0)]))
    # A matplotlib that cannot be imported, as on a machine without the extra.
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('not installed')\n")
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "from hypervisor.cli import main; sys.exit(main(sys.argv[2:]))",
                           str(blocker), "report", str(doc)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr == f"ivyvm: {report.MISSING_PLOT}\n"
    assert not list(tmp_path.glob("*.png"))
