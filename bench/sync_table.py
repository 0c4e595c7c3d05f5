#!/usr/bin/env python3
"""Tabulates bench/run_sync.sh results: medians with ratios.

Usage: sync_table.py RESULTS_DIR

RESULTS_DIR holds, per placement P in (unpinned, pinned):
  sync_bench.P.json  sync_bench --benchmark_format=json with repetitions and
                     --benchmark_report_aggregates_only=true
  go.P.txt           `go test -bench Sync -count N ./sync` output
Prints one Markdown table per placement: per workload the median time per
operation of dchan, of each C++ baseline (with the ratio dchan / baseline)
and of Go (with dchan / Go). Standard library only.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gbench  # noqa: E402  (bench/gbench.py)

# workload -> Go benchmark name
WORKLOADS = [
    ("mutex_uncontended", "SyncMutexUncontended"),
    ("mutex_contended_2", "SyncMutexContended2"),
    ("mutex_contended_4", "SyncMutexContended4"),
    ("wait_group_add_done", "SyncWaitGroupAddDone"),
    ("wait_group_wake", "SyncWaitGroupWake"),
    ("go_spawn_wait", "SyncGoSpawnWait"),
    ("go_spawn64_wait", "SyncGoSpawn64Wait"),
    ("go_launch", "SyncGoLaunch"),
    ("atomic_value_load", "SyncAtomicValueLoad"),
    ("atomic_value_store", "SyncAtomicValueStore"),
    ("atomic_value_load_wide", "SyncAtomicValueLoadWide"),
    ("atomic_value_store_wide", "SyncAtomicValueStoreWide"),
    ("atomic_value_load_2readers", "SyncAtomicValueLoad2Readers"),
    ("atomic_value_load_2readers_wide", "SyncAtomicValueLoad2ReadersWide"),
]

PLACEMENTS = [
    ("unpinned", "Unpinned (2 vCPUs; Go with GOMAXPROCS=2)"),
    ("pinned", "Pinned to one CPU (`taskset -c 0`; Go then picks GOMAXPROCS=1)"),
]



def load_gbench(path):
    """{(workload, variant): (median_ns, cv)} from a Google Benchmark JSON."""
    return {k: (e["ns"], e.get("cv"))
            for k, e in gbench.by_variant(gbench.load_gbench(
                path, singles=False)).items()}


def load_go(path):
    """{name: median_ns} from `go test -bench` output."""
    return {k: e["ns"] for k, e in gbench.load_go(path).items()}


def fmt_ns(ns):
    if ns is None:
        return "–"
    if ns >= 1e4:
        return f"{ns / 1e3:.1f} µs"
    if ns >= 100:
        return f"{ns:.0f} ns"
    return f"{ns:.1f} ns"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"


def table(results_dir, placement):
    cpp = load_gbench(os.path.join(results_dir, f"sync_bench.{placement}.json"))
    go = load_go(os.path.join(results_dir, f"go.{placement}.txt"))
    lines = [
        "| workload | dchan (cv) | C++ baselines: time, dchan / baseline "
        "| Go | dchan / Go |",
        "|---|---|---|---|---|",
    ]
    for workload, go_name in WORKLOADS:
        dchan, cv = cpp.get((workload, "dchan"), (None, None))
        bases = []
        for (w, variant), (ns, _) in sorted(cpp.items()):
            if w == workload and variant != "dchan":
                bases.append(f"{variant} {fmt_ns(ns)}, {ratio(dchan, ns)}")
        go_ns = go.get(go_name)
        cv_text = f" ({cv * 100:.0f}%)" if cv is not None else ""
        lines.append(
            f"| {workload} | {fmt_ns(dchan)}{cv_text} | "
            f"{'; '.join(bases) or '–'} | {fmt_ns(go_ns)} | "
            f"{ratio(dchan, go_ns)} |")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for placement, title in PLACEMENTS:
        if not os.path.exists(
                os.path.join(sys.argv[1], f"sync_bench.{placement}.json")):
            continue
        print(f"#### {title}\n")
        print(table(sys.argv[1], placement))
        print()


if __name__ == "__main__":
    main()
