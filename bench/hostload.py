"""Is the host quiet enough for guest-level figures? Load, steal time and a calibration loop.

Guest figures come from vCPUs that share the host's CPUs with everything else:
another busy process, or a hypervisor below this one taking CPU time (steal),
inflates them without the DSM changing at all. `make bench` measures, before
the guest-level figures and after them:
  - the 1-minute load average against the number of CPUs;
  - steal time, from /proc/stat, as a share of all CPU time in between;
  - a fixed calibration loop, timed several times: its spread within one set
    of samples, and how much slower it ran after than before.
and prints one warning line if any of them says the figures are unreliable.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

LOAD_PER_CPU = 0.75        # load average per CPU above which other work competes with the vCPUs
STEAL_SHARE = 0.05         # steal above 5 % of CPU time: the host's hypervisor takes a real share
SPREAD = 1.5               # slowest / fastest calibration sample
DRIFT = 1.3                # calibration after / before


def _cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    # guest and guest_nice (fields 8, 9) are already counted in user and nice.
    return steal, sum(fields[:8])


def _calibrate(samples: int = 15, iterations: int = 200_000) -> list[float]:
    """Milliseconds for a fixed amount of pure-CPU work, `samples` times."""
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        x = 0
        for i in range(iterations):
            x ^= i * 2654435761 & 0xffff
        out.append((time.perf_counter() - t0) * 1000)
    return out


@dataclass
class Snapshot:
    load: float
    steal: int
    total: int
    calibration_ms: list[float]

    @classmethod
    def take(cls) -> "Snapshot":
        steal, total = _cpu_times()
        return cls(os.getloadavg()[0], steal, total, _calibrate())


def verdict(before: Snapshot, after: Snapshot) -> dict[str, object]:
    """The figures and, if any says so, why the guest-level figures are unreliable."""
    cpus = len(os.sched_getaffinity(0))
    d_total = max(1, after.total - before.total)
    steal = (after.steal - before.steal) / d_total
    cal_before, cal_after = statistics.median(before.calibration_ms), statistics.median(after.calibration_ms)
    spread = max(max(s.calibration_ms) / min(s.calibration_ms) for s in (before, after))
    drift = cal_after / cal_before
    reasons = []
    load = max(before.load, after.load)
    if load > LOAD_PER_CPU * cpus:
        reasons.append(f"load average {load:.1f} on {cpus} CPUs (above {LOAD_PER_CPU * cpus:.1f})")
    if steal > STEAL_SHARE:
        reasons.append(f"steal time {100 * steal:.1f} % of CPU time (above {100 * STEAL_SHARE:.0f} %)")
    if spread > SPREAD:
        reasons.append(f"a fixed calibration loop varied {spread:.2f} x between runs (above {SPREAD} x)")
    if drift > DRIFT or drift < 1 / DRIFT:
        reasons.append(f"the calibration loop took {drift:.2f} x as long after as before")
    return {"load_average": load, "cpus": cpus, "steal_share": steal,
            "calibration_ms_before": cal_before, "calibration_ms_after": cal_after,
            "calibration_spread": spread, "unreliable_because": reasons}


def describe(v: dict[str, object]) -> str:
    line = (f"host: load average {v['load_average']:.1f} on {v['cpus']} CPUs, steal {100 * v['steal_share']:.1f} % "
            f"of CPU time, calibration loop {v['calibration_ms_before']:.1f} ms before and "
            f"{v['calibration_ms_after']:.1f} ms after (spread {v['calibration_spread']:.2f} x)")
    reasons = v["unreliable_because"]
    if reasons:
        line += ("\nWARNING: the guest-level figures are unreliable on this run: " + "; ".join(reasons)  # type: ignore
                 + ". Other work shares the CPUs with the vCPUs; rerun on a quieter host.")
    else:
        line += ": quiet enough for guest-level figures"
    return line
