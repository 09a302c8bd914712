"""Migratory pages on and off in one run: what a read-modify-write of a page
handed between two nodes costs a guest, each way, and what the option costs
elsewhere (docs/protocol.md, "Migratory pages").

Three guests, each run on 2 nodes with ``--migratory`` and without,
alternating: pagecost, whose (d) read-modify-writes pages only the other
node wrote, each once (the write-soon predictor's case: no page is seen
twice, so only a node-level prediction can help) beside (a)-(c), which the
option must not slow; the `migratory` guest, in which the nodes take turns
to increment every page (the per-page mark's case); and spanning_counter, a
contended counter. Each figure is the median of the runs' per-access
medians (spanning_counter: of its rates); the ratio is on / off, lower is
better for an access, higher for spanning_counter; (d) / (b) is each way's
issue 10 target (at most 1.2), the median of each run's own ratio.
"""
from __future__ import annotations

import statistics
from typing import Any

from bench.guests import page_costs, run_guest
from bench.on_off import no_samples, print_table, row, run_alone, ways

PAGECOST = {
    "read_seq": "(a) sequential remote read (pagecost)",
    "read_rand": "(b) random-order remote read (pagecost)",
    "write_inval": "(c) write that invalidates one copy (pagecost)",
    "rmw": "(d) read-modify-write of a page the other node wrote (pagecost)",
}
FIGURES = {**{f"pagecost_{phase}": label for phase, label in PAGECOST.items()},
           "turns_rmw": "read-modify-write, the nodes taking turns on every page (migratory)"}
SPANNING = "contended counter, 2 vCPUs on 2 nodes (spanning_counter)"


def bench_migratory(build: str, hz: float, repeat: int) -> dict[str, Any]:
    samples = no_samples([*FIGURES, "spanning"])
    for _ in range(repeat):
        for way, extra in ways("--migratory"):
            pc = page_costs(run_guest(build, "pagecost", 2, 2, extra=extra), hz)
            for phase in PAGECOST:
                samples[f"pagecost_{phase}"][way].append(pc[phase]["median_us"])
            turns = run_guest(build, "migratory", 2, 2, extra=extra)
            samples["turns_rmw"][way].append(turns.medians["rmw"] / hz * 1e6)
            span = run_guest(build, "spanning_counter", 2, 2, extra=extra)
            samples["spanning"][way].append(span.fields["ops"] / (span.fields["cycles"] / hz) / 1e6)
    out: dict[str, Any] = {"runs": repeat}
    for f, label in FIGURES.items():
        out[f] = row(label, samples[f])
    out["spanning_counter"] = row(SPANNING, samples["spanning"], unit="mincr_s", better="higher")
    # Each pagecost run's own (d) / (b): both phases of one run see the same host, so the ratio is
    # steadier than one of medians taken over runs.
    out["rmw_vs_read_rand"] = {way: statistics.median(d / b for d, b in zip(samples["pagecost_rmw"][way],
                                                                         samples["pagecost_read_rand"][way]))
                               for way in ("off", "on")}
    return out


def print_migratory(r: dict[str, Any]) -> None:
    rows = [(r[f], "") for f in FIGURES] + [(r["spanning_counter"], "")]
    print_table("migratory pages: 2 nodes", r["runs"], 72, rows)
    t = r["rmw_vs_read_rand"]
    print(f"(d) / (b), median of each run's: {t['off']:.2f} x off, {t['on']:.2f} x on "
          "(issue 10 target: <= 1.2; lower is better)")


if __name__ == "__main__":
    raise SystemExit(run_alone(bench_migratory, print_migratory))
