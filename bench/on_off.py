"""One `ivyvm run` option off against on, in the same run: the rows and the table.

bench/migratory.py, bench/prefetch.py and bench/batch.py measure an option this way: runs
without and with its flag, alternating (the host is noisy, so both ways see
the same load), each figure the median of the runs' medians. Their JSON
rows and printed tables are built here so that they keep one shape.
"""
from __future__ import annotations

import statistics
import sys
from typing import Any, Callable, Iterable

from bench.guests import alternating_runs, build_bench_guests, tsc_hz

Samples = dict[str, list[float]]   # "off" and "on": one figure per run
Ways = tuple[tuple[str, tuple[str, ...]], ...]

# How a figure is printed, by the unit its row's keys name (off_us, off_mib_s, off_mincr_s, off_ms).
UNIT_FORMATS = {"us": "{:7.1f} us", "mib_s": "{:5.1f} MiB/s", "mincr_s": "{:5.2f} M incr/s", "ms": "{:7.1f} ms"}


def ways(flag: str, base: tuple[str, ...] = ()) -> Ways:
    """Each way's extra `ivyvm run` arguments, off first: `base`, then `base` with `flag`."""
    return (("off", base), ("on", base + (flag,)))


def no_samples(figures: Iterable[str]) -> dict[str, Samples]:
    return {figure: {"off": [], "on": []} for figure in figures}


def row(label: str, samples: Samples, unit: str = "us", better: str = "lower",
        against: dict[str, float] | None = None) -> dict[str, Any]:
    """One figure: its median each way, on / off, each way against every baseline of the same run in
    `against` (off_vs_NAME, on_vs_NAME), and every run's figure."""
    off, on = statistics.median(samples["off"]), statistics.median(samples["on"])
    out: dict[str, Any] = {"label": label, f"off_{unit}": off, f"on_{unit}": on, "on_vs_off": on / off,
                           "better": better}
    for name, baseline in (against or {}).items():
        out[f"off_vs_{name}"], out[f"on_vs_{name}"] = off / baseline, on / baseline
    out["all_runs"] = samples
    return out


def print_table(what: str, runs: int, label_width: int, rows: list[tuple[dict[str, Any], str]],
                against_heading: str = "") -> None:
    """`rows` are (row, a note ending its line); a row's baselines (`against`) follow on / off as
    'off, on' ratios, under `against_heading`."""
    print(f"\n== {what}, on against off, median of {runs} alternating run(s)")
    print(f"{'access':{label_width}s} {'off':>10s} {'on':>10s} {'on / off':>26s}"
          + (f" {against_heading:>32s}" if against_heading else ""))
    for r, note in rows:
        unit = next(u for u in UNIT_FORMATS if f"off_{u}" in r)
        shown = UNIT_FORMATS[unit]
        baselines = "".join(f" {r[key]:8.2f} x, {r['on' + key[3:]]:5.2f} x" for key in r
                            if key.startswith("off_vs_"))
        print(f"{r['label']:{label_width}s} {shown.format(r[f'off_{unit}'])} {shown.format(r[f'on_{unit}'])} "
              f"{r['on_vs_off']:8.2f} x ({r['better']} is better){baselines}{note}")


def run_alone(measure: Callable[[str, float, int], dict[str, Any]],
              show: Callable[[dict[str, Any]], None]) -> int:
    """`python -m bench.<option> [--quick]`: build the bench guests, measure, print (make bench runs all)."""
    quick = "--quick" in sys.argv[1:]
    show(measure(build_bench_guests(quick), tsc_hz(), alternating_runs(quick)))
    return 0
