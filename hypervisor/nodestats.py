"""Each node's statistics, handed from the node processes to hypervisor.api.run_guest through files.

run_guest names a directory in STATS_DIR_ENV; every node writes DIR/node-K.json
at its end, whole or not at all, and run_guest collects what is there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .base import STATS_DIR_ENV


def collect_node_stats(directory: Path) -> list[dict[str, Any]]:
    """Every node's figures a run left in `directory`, by node id."""
    found = []
    for path in sorted(directory.glob("node-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue       # a node killed mid-write: its figures are simply absent
    return found


def write_node_stats(node: int, vcpus: tuple[int, ...], dsm_stats: dict[str, Any]) -> None:
    """Called by each node at its end: its figures for run_guest, when run_guest started it."""
    directory = os.environ.get(STATS_DIR_ENV)
    if not directory:
        return
    path = Path(directory) / f"node-{node}.json"
    temporary = path.with_suffix(".part")
    try:
        temporary.write_text(json.dumps({"node": node, "vcpus": list(vcpus), "dsm": dsm_stats}))
        temporary.replace(path)       # whole or absent, never half
    except OSError:
        pass                          # the figures are a courtesy; the run's outcome stands
