#!/usr/bin/env python3
"""Tabulates bench/run_remote.sh results: medians with ratios.

Usage: remote_table.py RESULTS_DIR

RESULTS_DIR holds, per placement P in (unpinned, pinned):
  remote_bench.P.json  remote_bench --benchmark_format=json with repetitions
                       and --benchmark_report_aggregates_only=true
Prints one Markdown table per placement: for each workload the median over
the repetitions of the broker-backed channel (remote) and of the raw gRPC
baseline, their spread (cv = stddev / mean), the time ratio remote / raw, and
for the round trips the medians of the per-repetition p50 and p99 latencies.
Standard library only.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gbench  # noqa: E402  (bench/gbench.py)

# (label, unit, remote benchmark, raw gRPC benchmark)
#   unit "us": time per op; unit "msgs/s": throughput; "MB/s": bandwidth
#   (10^6 bytes per second)
WORKLOADS = [
    ("unbuffered ping-pong, 2 processes", "us", "pingpong/remote",
     "roundtrip/grpc"),
    ("acked send, consumer draining", "us", "acked_send/remote",
     "roundtrip/grpc"),
    ("acked send, sender alone (diag.)", "us", "acked_send_alone/remote",
     "roundtrip/grpc"),
    ("lock + unlock, uncontended (1 round trip)", "us",
     "lock_unlock/remote", "roundtrip/grpc"),
    ("lock + unlock, kept by the client (MutexOptions::keep)", "us",
     "lock_unlock/remote_keep", "roundtrip/grpc"),
    ("lock hand-off to another process (unlock → its lock returns)", "us",
     "lock_handoff/remote", "roundtrip/grpc"),
    ("one-way, 1 sender", "msgs/s", "oneway/remote/1", "oneway/grpc/1"),
    ("one-way, 4 senders", "msgs/s", "oneway/remote/4", "oneway/grpc/4"),
    ("one-way, 16 senders", "msgs/s", "oneway/remote/16", "oneway/grpc/16"),
    ("one-way, 64 senders", "msgs/s", "oneway/remote/64", "oneway/grpc/64"),
    ("one-way, 16 senders, 1 receiver thread (diag.)", "msgs/s",
     "oneway/remote/16x1", "oneway/grpc/16"),
    # Streaming producer -> consumer (one thread each), raw: one thread.
    ("stream, acked sends, 1 value per recv (unbatched)", "msgs/s",
     "stream/remote/0,1", "stream/grpc/per_write"),
    ("stream, send window 256, recv batch 256", "msgs/s",
     "stream/remote/256,256", "stream/grpc/batched"),
    ("stream, send window 1024, recv batch 1024", "msgs/s",
     "stream/remote/1024,1024", "stream/grpc/batched"),
    ("bandwidth, 64 KiB values (window 16, batch 16)", "MB/s",
     "bandwidth/remote", "bandwidth/grpc"),
    ("bandwidth, 64 KiB values (window 16, batch 4; diag.)", "MB/s",
     "bandwidth/remote/16,4", "bandwidth/grpc"),
    ("bandwidth, 64 KiB values (window 64, batch 16; diag.)", "MB/s",
     "bandwidth/remote/64,16", "bandwidth/grpc"),
]
# Bytes per op of the MB/s rows.
BYTES_PER_OP = {"MB/s": 64 * 1024}
ACKED = "acked_send/remote"

PLACEMENTS = [
    ("unpinned", "Unpinned (2 vCPUs)"),
    ("pinned", "Pinned to one CPU (`taskset -c 0`: bench, broker and "
               "baseline server all on CPU 0)"),
]


def load(path):
    """{benchmark: {"us": median us/op, "cv": .., "p50": .., "p99": ..}}."""
    return gbench.load_gbench(path, unit="us", singles=False)


num = gbench.num


def cell(entry, unit):
    if not entry or "us" not in entry:
        return "n/a"
    if unit == "us":
        value = entry["us"]
    elif unit in BYTES_PER_OP:
        value = BYTES_PER_OP[unit] / entry["us"]  # bytes per us = MB/s
    else:
        value = 1e6 / entry["us"]
    return num(value) + gbench.spread(entry)


pct = gbench.percentiles


def ratio(a, b):
    return gbench.ratio(a, b, "us")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    results = sys.argv[1]
    reps = set()
    for placement, title in PLACEMENTS:
        path = os.path.join(results, f"remote_bench.{placement}.json")
        if not os.path.exists(path):
            continue
        res = load(path)
        acked = res.get(ACKED, {}).get("us")
        print(f"### {title}\n")
        print("| workload | unit | remote | raw gRPC | remote / raw (time) "
              "| remote p50 / p99 µs | raw p50 / p99 µs "
              "| msgs per acked round trip |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for label, unit, remote, raw in WORKLOADS:
            r, g = res.get(remote), res.get(raw)
            if not r:
                continue  # not run (bench/run_remote.sh FILTER)
            reps.update(e["n"] for e in (r, g) if e and "n" in e)
            per_rtt = ""
            if unit == "msgs/s" and r and "us" in r and acked:
                per_rtt = f"{acked / r['us']:.1f}"
            shown_unit = "µs/op" if unit == "us" else unit
            print(f"| {label} | {shown_unit} | {cell(r, unit)} "
                  f"| {cell(g, unit)} | {ratio(r, g)} | {pct(r)} | {pct(g)} "
                  f"| {per_rtt} |")
        print()
    n = "/".join(str(r) for r in sorted(reps)) or "?"
    print(f"Medians of {n} repetitions (p50/p99: medians of the per-repetition "
          "percentiles); (±x%) is the coefficient of variation over the "
          "repetitions. The ratio is always time per op, remote / raw gRPC: "
          "above 1 means the broker-backed channel is slower. \"msgs per "
          "acked round trip\": one-way messages delivered in the time of one "
          "acked send (median).")


if __name__ == "__main__":
    main()
