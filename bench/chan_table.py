#!/usr/bin/env python3
"""Tabulates bench/run_chan.sh results: medians with ratios.

Usage: chan_table.py RESULTS_DIR

RESULTS_DIR holds, per placement P in (unpinned, pinned):
  chan_bench.P.json  chan_bench --benchmark_format=json with 5 repetitions
                     and --benchmark_report_aggregates_only=true
  go.P.txt           `go test -bench ... -count 5` output
Prints one Markdown table per placement: the median of each workload for
dchan, the mutex+condvar baseline, moodycamel's queue (where it has an
equivalent) and Go, the spread (cv = stddev / mean over the repetitions) and
the ratios dchan / baseline; then the hand-off floors of the same run.
Standard library only.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gbench  # noqa: E402  (bench/gbench.py)

# workload -> (unit, Go benchmark name)
WORKLOADS = [
    ("pingpong", "ns/round trip", "ChanPingPong"),
    ("unbuffered_1p1c", "ns/item", "ChanUnbuffered1P1C"),
    ("buffered_1p1c", "ns/item", "ChanBuffered1P1C"),
    ("buffered_2p2c", "ns/item", "ChanBuffered2P2C"),
    ("select4_fanin", "ns/item", "ChanSelect4FanIn"),
    ("select_pingpong", "ns/round trip", "ChanSelectPingPong"),
    ("select_nonblock_empty", "ns/select", "ChanSelectNonblockEmpty"),
    ("select_nonblock_ready", "ns/(send+recv)", "ChanSelectNonblockReady"),
]

# The hand-off floors (chan_bench floor_*/raw): (floor, what it is, the
# dchan workload it bounds, its unit).
FLOORS = [
    ("floor_futex_pingpong", "futex wait/wake hand-off, no spin",
     "pingpong", "ns/round trip"),
    ("floor_yield_pingpong", "sched_yield polling hand-off",
     "pingpong", "ns/round trip"),
    ("floor_spin_pingpong", "pure spin hand-off (two atomics)",
     "pingpong", "ns/round trip"),
    ("floor_rendezvous_pingpong",
     "spin rendezvous: announce a mailbox, sender fills it",
     "pingpong", "ns/round trip"),
    ("floor_spsc_ring", "one producer, one consumer, a bare spinning ring",
     "buffered_1p1c", "ns/item"),
]

PLACEMENTS = [
    ("unpinned", "Unpinned (2 vCPUs; Go with GOMAXPROCS=2)"),
    ("pinned", "Pinned to one CPU (`taskset -c 0`; Go then picks GOMAXPROCS=1)"),
]



def load_gbench(path):
    """{(workload, impl): {"median": ns, "cv": fraction, "n"}} from gbench
    JSON."""
    return {k: median(e)
            for k, e in gbench.by_variant(gbench.load_gbench(
                path, singles=False)).items()}


def load_go(path):
    """{GoName: {"median": ns, "cv": fraction, "n"}} from `go test -bench`
    text (cv 0 for a single run)."""
    return {k: median(e, 0.0) for k, e in gbench.load_go(path).items()}


def median(entry, cv=None):
    """A gbench entry with its "ns" as "median" (and `cv` if it has none)."""
    out = {"median": entry["ns"], "n": entry["n"]}
    if entry.get("cv") is not None:
        out["cv"] = entry["cv"]
    elif cv is not None:
        out["cv"] = cv
    return out


def cell(entry):
    if not entry or "median" not in entry:
        return "n/a"
    m = entry["median"]
    text = f"{m:,.0f}" if m >= 100 else f"{m:.1f}"
    return text + gbench.spread(entry)


def ratio(a, b):
    return gbench.ratio(a, b, "median")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    results = sys.argv[1]
    reps = set()
    for placement, title in PLACEMENTS:
        cpp_path = os.path.join(results, f"chan_bench.{placement}.json")
        go_path = os.path.join(results, f"go.{placement}.txt")
        if not os.path.exists(cpp_path):
            continue
        cpp = load_gbench(cpp_path)
        go = load_go(go_path) if os.path.exists(go_path) else {}
        print(f"### {title}\n")
        print("| workload | unit | dchan | mutex+condvar | moodycamel | Go "
              "| dchan / mutex+condvar | dchan / moodycamel | dchan / Go |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for workload, unit, go_name in WORKLOADS:
            d = cpp.get((workload, "dchan"))
            m = cpp.get((workload, "mutex_cv"))
            mc = cpp.get((workload, "moodycamel"))
            g = go.get(go_name)
            reps.update(e["n"] for e in (d, m, mc, g) if e and "n" in e)
            print(f"| {workload} | {unit} | {cell(d)} | {cell(m)} "
                  f"| {cell(mc)} | {cell(g)} | {ratio(d, m)} "
                  f"| {ratio(d, mc)} | {ratio(d, g)} |")
        print()
        floors = [(w, what, bounds, unit, cpp.get((w, "raw")))
                  for w, what, bounds, unit in FLOORS]
        if any(e for *_, e in floors):
            print("| floor (same run) | unit | floor | dchan workload "
                  "| dchan / floor |")
            print("|---|---|---:|---|---:|")
            for w, what, bounds, unit, e in floors:
                d = cpp.get((bounds, "dchan"))
                shown = cell(e) if e else "n/a (needs 2 CPUs)"
                print(f"| {w}: {what} | {unit} | {shown} | {bounds} "
                      f"| {ratio(d, e)} |")
            print()
    n = "/".join(str(r) for r in sorted(reps)) or "?"
    print(f"Medians of {n} repetitions, wall time; (±x%) is the coefficient "
          "of variation over the repetitions. Ratios below 1 mean dchan is "
          "faster.")


if __name__ == "__main__":
    main()
