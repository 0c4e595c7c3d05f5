#!/usr/bin/env python3
"""Tabulates bench/run_baselines.sh results: dchan next to Redis, NATS, etcd
and a raw gRPC relay, with ratios; and the broker's scale figures.

Usage: baselines_table.py RESULTS_DIR

RESULTS_DIR holds, per placement P in (unpinned, pinned):
  baseline_bench.P.json  Google Benchmark JSON (repetitions, aggregates only):
                         redis_echo, relay/grpc, relay_chan/grpc
  remote_bench.P.json    the same for dchan: pingpong/remote,
                         acked_send_alone/remote, acked_send/remote,
                         lock_unlock/remote, oneway*/remote*, roundtrip/grpc
  go.P.jsonl             bench/remote_go output: one JSON object per
                         repetition (nats_rr, nats_pubsub, etcd_put,
                         etcd_lock, etcd_lock_tmpfs, etcdctl_lock,
                         etcdctl_put)
and broker_scale.N.json (bench/broker_scale, one per repetition N).

Prints Markdown: per placement one table whose rows put a dchan figure next
to a baseline measured in the same run; the ratio is always time per op
(per round trip, per lock+unlock, per message), dchan / baseline, so below 1
means dchan is faster. Figures are medians over the repetitions, (±x%) the
coefficient of variation, p50/p99 the medians of the per-repetition
percentiles. Then the scale table. Standard library only.
"""

import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gbench  # noqa: E402  (bench/gbench.py)

PLACEMENTS = [
    ("unpinned", "Unpinned (2 vCPUs; Go clients with GOMAXPROCS=2)"),
    ("pinned", "Pinned to one CPU (`taskset -c 0`: every client and server "
               "on CPU 0; Go clients with GOMAXPROCS=1)"),
]


def load_gbench(path):
    """{name: {"us": median us/op, "cv", "p50", "p99", "n"}} or {}."""
    return gbench.load_gbench(path, unit="us")


def load_go(path):
    """{bench: {"us": median us/op, "cv", "p50", "p99", "n"}} or {}."""
    if not os.path.exists(path):
        return {}
    reps = gbench.read_jsonl(path)
    out = {}
    for name, rs in reps.items():
        if "msgs_per_s" in rs[0]:
            per_op = [1e6 / r["msgs_per_s"] for r in rs]
        else:
            per_op = [r["us_per_op"] for r in rs]
        e = {"us": statistics.median(per_op), "n": len(rs)}
        if len(per_op) > 1:
            e["cv"] = statistics.pstdev(per_op) / statistics.mean(per_op)
        if "p50_us" in rs[0]:
            e["p50"] = statistics.median(r["p50_us"] for r in rs)
            e["p99"] = statistics.median(r["p99_us"] for r in rs)
        out[name] = e
    return out


num = gbench.num


def value(e, unit):
    if unit == "msgs/s":
        return num(1e6 / e["us"])
    if unit == "ms":
        return num(e["us"] / 1e3)
    return num(e["us"])


def cell(e, unit):
    if not e or "us" not in e:
        return "n/a"
    return value(e, unit) + gbench.spread(e)


def pct(e, unit):
    return gbench.percentiles(e, 1e-3 if unit == "ms" else 1.0)


def best_oneway(remote):
    """The fastest one-way dchan row (oneway*/remote/*: most msgs/s) and its
    name, whatever variants (batched, pipelined) remote_bench has; not the
    diagnostic oneway/remote_one_process rows."""
    rows = [(e["us"], name) for name, e in remote.items()
            if re.match(r"oneway[^/]*/remote/", name) and "us" in e]
    if not rows:
        return None, None
    us, name = min(rows)
    return remote[name], name


def difference(a, b):
    """a - b per op (no spread or percentiles: they do not subtract)."""
    if not a or not b or "us" not in a or "us" not in b:
        return None
    return {"us": a["us"] - b["us"], "n": a.get("n", 0)}


def table(results, placement, title):
    base = load_gbench(os.path.join(results,
                                    f"baseline_bench.{placement}.json"))
    remote = load_gbench(os.path.join(results,
                                      f"remote_bench.{placement}.json"))
    go = load_go(os.path.join(results, f"go.{placement}.jsonl"))
    if not (base or remote or go):
        return set()
    oneway, oneway_name = best_oneway(remote)
    ping = remote.get("pingpong/remote")
    acked = remote.get("acked_send_alone/remote")
    acked_busy = remote.get("acked_send/remote")
    lock = remote.get("lock_unlock/remote")
    ctl_lock_over_put = difference(go.get("etcdctl_lock"),
                                   go.get("etcdctl_put"))
    # (dchan label, dchan entry, baseline label, baseline entry, unit, target)
    rows = [
        ("hand-off ping-pong, 2 processes (two broker hops)", ping,
         "raw gRPC relay A→relay→B→relay→A (its floor)",
         base.get("relay/grpc"), "µs", "—"),
        ("hand-off ping-pong, 2 processes (two broker hops)", ping,
         "raw gRPC relay in an unbuffered channel's protocol (8 messages)",
         base.get("relay_chan/grpc"), "µs", "—"),
        ("hand-off ping-pong, 2 processes", ping,
         "NATS request-reply (nats.go)", go.get("nats_rr"), "µs",
         "< 1 (faster)"),
        ("hand-off ping-pong, 2 processes", ping,
         "Redis LPUSH/BRPOP echo (hiredis)", base.get("redis_echo"), "µs",
         "< 1 (faster)"),
        ("acked send, sender alone (one broker round trip)", acked,
         "raw gRPC bidi round trip", remote.get("roundtrip/grpc"), "µs",
         "≤ 1.2"),
        ("acked send, consumer draining", acked_busy,
         "raw gRPC bidi round trip", remote.get("roundtrip/grpc"), "µs",
         "≤ 1.2"),
        ("acked send, sender alone", acked,
         "etcd put (clientv3)", go.get("etcd_put"), "µs", "—"),
        ("lock + unlock, uncontended", lock,
         "etcd lock API: concurrency.Mutex Lock+Unlock", go.get("etcd_lock"),
         "µs", "≤ 0.05 (20× faster)"),
        ("lock + unlock, uncontended", lock,
         "etcd lock API, etcd's data dir on tmpfs (no fsync to disk)",
         go.get("etcd_lock_tmpfs"), "µs", "≤ 0.05"),
        ("lock + unlock, uncontended", lock,
         "`etcdctl lock L true` (process cycle)", go.get("etcdctl_lock"),
         "µs", "≤ 0.05"),
        ("lock + unlock, uncontended", lock,
         "`etcdctl lock` cycle − `etcdctl put` cycle", ctl_lock_over_put,
         "µs", "≤ 0.05"),
        ("one-way throughput, 1 sender thread", remote.get("oneway/remote/1"),
         "NATS pub/sub, 1 publisher → 1 subscriber", go.get("nats_pubsub"),
         "msgs/s", "< 1"),
        (f"one-way throughput, best row (`{oneway_name or 'n/a'}`)", oneway,
         "NATS pub/sub, 1 publisher → 1 subscriber", go.get("nats_pubsub"),
         "msgs/s", "< 1 and ≥ 2M msgs/s"),
    ]
    print(f"### {title}\n")
    print("| dchan | unit | dchan | baseline | baseline figure "
          "| dchan / baseline (time) | dchan p50 / p99 µs "
          "| baseline p50 / p99 µs | target |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    reps = set()
    for dlabel, d, blabel, b, unit, target in rows:
        if d is None and b is None:
            continue
        reps.update(e["n"] for e in (d, b) if e and e.get("n"))
        r = "n/a"
        if d and b and "us" in d and "us" in b and b["us"] > 0:
            x = d["us"] / b["us"]
            r = f"{x:.3f}" if x < 0.1 else f"{x:.2f}"
            if 0 < x < 1:
                f = 1 / x
                r += f" ({f:.0f}× faster)" if f >= 10 else f" ({f:.1f}× faster)"
        shown = "µs/op" if unit == "µs" else unit
        print(f"| {dlabel} | {shown} | {cell(d, unit)} | {blabel} "
              f"| {cell(b, unit)} | {r} | {pct(d, unit)} | {pct(b, unit)} "
              f"| {target} |")
    print()
    extra = []
    for name, label in (("etcdctl_lock", "`etcdctl lock L true`"),
                        ("etcdctl_put", "`etcdctl put K V`")):
        e = go.get(name)
        if e:
            extra.append(f"{label} {num(e['us'] / 1e3)} ms")
    if extra:
        print("Process cycles (start etcdctl, connect, request(s), exit): "
              + "; ".join(extra) + ".\n")
    return reps


def scale(results):
    runs = []
    for name in sorted(os.listdir(results)):
        if name.startswith("broker_scale.") and name.endswith(".json"):
            with open(os.path.join(results, name)) as f:
                runs.append(json.load(f))
    if not runs:
        return
    print("### Broker scale (`bench/broker_scale`, /proc/PID/status of the "
          f"dchan-broker; median of {len(runs)} runs, a fresh broker each)\n")
    print("| broker state | threads | VmRSS (MiB) |")
    print("|---|---:|---:|")
    first = runs[0]
    for i, step in enumerate(first["steps"]):
        threads = statistics.median(r["steps"][i]["threads"] for r in runs)
        rss = statistics.median(r["steps"][i]["rss_kib"] for r in runs)
        if step["what"] == "idle":
            label = "idle, no session"
        elif step["what"] == "sessions":
            n = step["n"]
            label = (f"{n:,} idle session (own connection)" if n == 1 else
                     f"{n:,} idle sessions (own connections)")
        else:
            label = (f"{step['n']:,} blocked remote receivers "
                     f"(from {first['waiter_sessions']:,} of those sessions)")
        print(f"| {label} | {threads:g} | {rss / 1024:,.1f} |")
    print()

    def spread(key):
        v = [r[key] for r in runs]
        return (f"{statistics.median(v):,.0f} bytes (runs: "
                f"{min(v):,.0f}–{max(v):,.0f})")

    print(f"Per idle session (its connection included): "
          f"{spread('bytes_per_session')}; per blocked remote waiter: "
          f"{spread('bytes_per_waiter')}.\n")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    results = sys.argv[1]
    reps = set()
    for placement, title in PLACEMENTS:
        reps |= table(results, placement, title)
    n = "/".join(str(r) for r in sorted(reps)) or "?"
    print(f"Medians of {n} repetitions; (±x%) is the coefficient of variation "
          "over the repetitions; p50/p99 are medians of the per-repetition "
          "percentiles. The ratio is time per op (round trip, lock+unlock, "
          "message), dchan / baseline: below 1 means dchan is faster. The "
          "target column is issue 7's goal for that ratio.\n")
    scale(results)


if __name__ == "__main__":
    main()
