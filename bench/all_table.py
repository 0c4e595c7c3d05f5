#!/usr/bin/env python3
"""The one table of bench/run_all.sh: every dchan figure next to its
baselines from the same run, unpinned and pinned, as ratios.

Usage: all_table.py RESULTS_DIR [--doc DOC.md]

RESULTS_DIR is run_all.sh's output directory:
  run.txt                    the run's header lines (date, machine, commit,
                             command, ...), printed as they are
  chan/  chan_bench.{unpinned,pinned}.json, go.{unpinned,pinned}.txt
  sync/  sync_bench.{unpinned,pinned}.json, go.{unpinned,pinned}.txt
  remote/  remote_bench.{unpinned,pinned}.json
  baselines/  (bench/run_baselines.sh, if present) *.unpinned.jsonl and
             *.pinned.jsonl: one JSON object per repetition,
             {"bench": NAME, "rep": N, "ops": N, "us_per_op": X,
              "p50_us": X, "p99_us": X}  or  {..., "msgs_per_s": X};
             and Google Benchmark JSON, *.unpinned.json / *.pinned.json
             (but not the remote_bench.*.json copies it may keep)
A missing directory or file leaves its rows out (or n/a).

Prints the Markdown section to stdout. With --doc, also replaces the text
between the lines `<!-- run_all:begin -->` and `<!-- run_all:end -->` of DOC
with it (the markers must be there). Standard library only.
"""

import math
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gbench  # noqa: E402  (bench/gbench.py)

PLACEMENTS = ("unpinned", "pinned")
BEGIN = "<!-- run_all:begin -->"
END = "<!-- run_all:end -->"


# ---------------------------------------------------------------- loading
# A figure: {"ns": median time per op, "cv": fraction or None,
#            "p50": µs or None, "p99": µs or None, "rate": bool}
# ("rate": shown as ops/s; the ratio is still time per op).


def figure(entry):
    """A figure from a gbench.load_gbench / load_go entry."""
    return {"ns": entry["ns"], "cv": entry.get("cv"), "p50": entry.get("p50"),
            "p99": entry.get("p99"), "rate": False}


def load_gbench(path):
    """{benchmark name (no /manual_time etc.): figure} from gbench JSON."""
    return {k: figure(e) for k, e in gbench.load_gbench(path).items()}


def load_go(path):
    """{Go benchmark name without "Benchmark": figure} from go test text."""
    return {k: figure(e) for k, e in gbench.load_go(path).items()}


def load_ext(directory, placement):
    """{bench: figure} from the baselines script's results: every
    *.PLACEMENT.jsonl and (Google Benchmark) *.PLACEMENT.json in
    `directory` but remote_bench's."""
    if not os.path.isdir(directory):
        return {}
    out = load_jsonl(directory, placement)
    for fn in sorted(os.listdir(directory)):
        if (fn.endswith(f".{placement}.json") and
                not fn.startswith("remote_bench.")):
            out.update(load_gbench(os.path.join(directory, fn)))
    return out


def load_jsonl(directory, placement):
    """{bench: figure} from every *.PLACEMENT.jsonl in `directory`."""
    recs = {}
    if not os.path.isdir(directory):
        return {}
    for fn in sorted(os.listdir(directory)):
        if fn.endswith(f".{placement}.jsonl"):
            gbench.read_jsonl(os.path.join(directory, fn), recs)
    out = {}
    for name, rs in recs.items():
        if all(r.get("msgs_per_s") for r in rs):
            xs = [1e9 / r["msgs_per_s"] for r in rs]
            rate = True
        elif all(r.get("us_per_op") for r in rs):
            xs = [r["us_per_op"] * 1e3 for r in rs]
            rate = False
        else:
            continue
        cv = gbench.cv(xs)

        def med(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        out[name] = {"ns": statistics.median(xs), "cv": cv,
                     "p50": med("p50_us"), "p99": med("p99_us"), "rate": rate}
    return out


# ------------------------------------------------------------ the pairings
# In process: (area, workload label, unit, dchan benchmark, [(baseline label,
# source, name)], target) — source "cpp" (same binary) or "go".
# A target (issue 7) is a maximum for dchan / that baseline's time ratio.
CHAN = [
    ("pingpong", "ns/round trip",
     [("mutex+condvar", "mutex_cv"), ("moodycamel", "moodycamel")],
     "ChanPingPong", 1.0),
    ("unbuffered_1p1c", "ns/item", [("mutex+condvar", "mutex_cv")],
     "ChanUnbuffered1P1C", None),
    ("buffered_1p1c", "ns/item",
     [("mutex+condvar", "mutex_cv"), ("moodycamel", "moodycamel")],
     "ChanBuffered1P1C", 1.0),
    ("buffered_2p2c", "ns/item",
     [("mutex+condvar", "mutex_cv"), ("moodycamel", "moodycamel")],
     "ChanBuffered2P2C", None),
    ("select4_fanin", "ns/item", [("mutex+condvar", "mutex_cv")],
     "ChanSelect4FanIn", None),
    ("select_pingpong", "ns/round trip", [("mutex+condvar", "mutex_cv")],
     "ChanSelectPingPong", 1.0),
    ("select_nonblock_empty", "ns/select",
     [("mutex+condvar try_pop", "mutex_cv"),
      ("moodycamel try_dequeue", "moodycamel")],
     "ChanSelectNonblockEmpty", None),
    ("select_nonblock_ready", "ns/(send+recv)",
     [("mutex+condvar try", "mutex_cv"), ("moodycamel try", "moodycamel")],
     "ChanSelectNonblockReady", None),
]

SYNC = [
    ("mutex_uncontended", "ns/op", [("std::mutex", "std"), ("absl", "absl")],
     "SyncMutexUncontended", {"std": 1.2}),
    ("mutex_contended_2", "ns/op", [("std::mutex", "std"), ("absl", "absl")],
     "SyncMutexContended2", {"std": 1.2}),
    ("mutex_contended_4", "ns/op", [("std::mutex", "std"), ("absl", "absl")],
     "SyncMutexContended4", {"std": 1.2}),
    ("mutex_held_2", "ns/op", [("std::mutex", "std"), ("absl", "absl")],
     "SyncMutexHeld2", None),
    ("wait_group_add_done", "ns/op", [], "SyncWaitGroupAddDone", None),
    ("wait_group_wake", "ns/round trip", [("mutex+condvar", "mutex_cv")],
     "SyncWaitGroupWake", None),
    ("go_spawn_wait", "ns/task", [("std::thread", "std_thread")],
     "SyncGoSpawnWait", None),
    ("go_spawn64_wait", "ns/task", [("std::thread", "std_thread")],
     "SyncGoSpawn64Wait", None),
    ("go_launch", "ns/task", [], "SyncGoLaunch", None),
    ("atomic_value_load", "ns/op",
     [("std::mutex", "std_mutex"),
      ("atomic<shared_ptr>", "std_atomic_shared_ptr")],
     "SyncAtomicValueLoad", None),
    ("atomic_value_store", "ns/op",
     [("std::mutex", "std_mutex"),
      ("atomic<shared_ptr>", "std_atomic_shared_ptr")],
     "SyncAtomicValueStore", None),
    ("atomic_value_load_wide", "ns/op",
     [("std::mutex", "std_mutex"),
      ("atomic<shared_ptr>", "std_atomic_shared_ptr")],
     "SyncAtomicValueLoadWide", None),
    ("atomic_value_store_wide", "ns/op",
     [("std::mutex", "std_mutex"),
      ("atomic<shared_ptr>", "std_atomic_shared_ptr")],
     "SyncAtomicValueStoreWide", None),
    ("atomic_value_load_2readers", "ns/op",
     [("std::mutex", "std_mutex"),
      ("atomic<shared_ptr>", "std_atomic_shared_ptr")],
     "SyncAtomicValueLoad2Readers", None),
    ("atomic_value_load_2readers_wide", "ns/op",
     [("std::mutex", "std_mutex"),
      ("atomic<shared_ptr>", "std_atomic_shared_ptr")],
     "SyncAtomicValueLoad2ReadersWide", None),
]

# Remote: (label, unit, dchan benchmark regex, [(baseline label, source,
# regex, target)]). Sources: "remote" (remote_bench's raw gRPC rows) and
# "ext" (run_baselines.sh). A dchan regex may match several rows (each gets
# its own); "{1}" in a baseline regex and "{0}" in the label stand for the
# dchan row's first group. Unit "msgs/s": figures shown as rates.
REMOTE = [
    # Issue 7's "acked send round trip" is one request and its answer: the
    # sender alone. With a consumer draining at the same time, pinned runs
    # put the consumer's work on the sender's CPU too.
    # The raw ping-pong's server runs in its own process, as the broker
    # does; the in-process row (the baseline before 2026-11-27) shares the
    # client's gRPC threads and is shown for comparison.
    ("acked send, sender alone", "µs/op", r"acked_send_alone/remote$",
     [("raw gRPC ping-pong", "remote", r"roundtrip/grpc$", 1.2),
      ("raw gRPC ping-pong, server in the client's process", "remote",
       r"roundtrip/grpc_inprocess$", None),
      ("etcd put", "ext", r"^etcd_put$", None)]),
    ("acked send, a consumer draining meanwhile", "µs/op",
     r"acked_send/remote$",
     [("raw gRPC ping-pong", "remote", r"roundtrip/grpc$", None)]),
    ("hand-off ping-pong, 2 processes", "µs/op", r"pingpong/remote$",
     [("raw gRPC ping-pong", "remote", r"roundtrip/grpc$", None),
      ("raw gRPC relay A→relay→B→relay→A", "ext", r"^relay/grpc$", None),
      ("raw gRPC relay in an unbuffered channel's protocol, 8 messages",
       "ext", r"^relay_chan/grpc$", None),
      ("NATS request-reply", "ext", r"nats_rr", 1.0),
      ("Redis LPUSH/BRPOP echo", "ext", r"redis", 1.0)]),
    ("lock + unlock", "µs/op", r"lock_unlock/remote$",
     [("raw gRPC ping-pong", "remote", r"roundtrip/grpc$", None),
      ("etcd lock", "ext", r"^etcd.*lock", 0.05)]),
    # The same with MutexOptions::keep (opt-in): relocks without the broker
    # until another request waits.
    ("lock + unlock, kept by the client (`MutexOptions::keep`)", "µs/op",
     r"lock_unlock/remote_keep$",
     [("raw gRPC ping-pong", "remote", r"roundtrip/grpc$", None),
      ("etcd lock", "ext", r"^etcd.*lock", 0.05)]),
    ("lock hand-off to another process", "µs/op", r"lock_handoff/remote$",
     [("raw gRPC ping-pong", "remote", r"roundtrip/grpc$", None)]),
    ("one-way acked sends, {0} senders", "msgs/s",
     r"oneway/remote/(\d+)(x\d+)?$",
     [("raw gRPC stream", "remote", r"oneway/grpc/{1}$", None),
      ("NATS pub/sub", "ext", r"^nats_pubsub$", None)]),
    # Issue 7's "one-way throughput with automatic batching": one producer
    # with RemoteChanOptions::send_window {0}, one consumer with recv_batch
    # {1} (0,1: plain acked sends and single receives).
    ("one-way stream, send window {0}, recv batch {1}", "msgs/s",
     r"stream/remote/(0),(\d+)$",
     [("raw gRPC stream, one Write per message", "remote",
       r"stream/grpc/per_write$", None),
      ("NATS pub/sub", "ext", r"^nats_pubsub$", None)]),
    ("one-way stream, send window {0}, recv batch {1}", "msgs/s",
     r"stream/remote/([1-9]\d*),(\d+)$",
     [("raw gRPC stream, one Write per message", "remote",
       r"stream/grpc/per_write$", None),
      ("raw gRPC stream, 100 messages per Write", "remote",
       r"stream/grpc/batched$", None),
      ("NATS pub/sub", "ext", r"^nats_pubsub$", 1.0)]),
    # The same with read-ahead on the consumer's handle (recv_ahead).
    ("one-way stream, send window {0}, recv batch {1}, read-ahead",
     "msgs/s", r"stream/remote/([1-9]\d*),(\d+)\+ahead$",
     [("NATS pub/sub", "ext", r"^nats_pubsub$", 1.0)]),
    # Target: at least 650 MB/s (an absolute figure, not a ratio).
    ("bandwidth, 64 KiB values, send window 16, recv batch 16", "MB/s",
     r"bandwidth/remote$",
     [("raw gRPC stream, 64 KiB messages", "remote", r"bandwidth/grpc$",
       None),
      # The same two hops as through the broker, with nothing in between.
      ("raw gRPC relay A→relay→B, 64 KiB messages", "ext",
       r"^relay_bandwidth/grpc$", None)]),
]

# Bytes per op of the MB/s rows, and absolute targets (MB/s at least).
BYTES_PER_OP = {"MB/s": 64 * 1024}
MIN_MBPS = {"bandwidth, 64 KiB values, send window 16, recv batch 16": 650}


# --------------------------------------------------------------- printing


def num(x):
    return gbench.num(x, group=1e4)


def show(fig, unit_us=False):
    """A figure's cell: the median (± cv)."""
    if not fig:
        return "–"
    if fig.get("bytes"):
        text = f"{fig['bytes'] * 1e3 / fig['ns']:.0f} MB/s"
    elif fig["rate"]:
        v = 1e9 / fig["ns"]
        text = (f"{v / 1e6:.2f}M/s" if v >= 1e6 else f"{v / 1e3:.0f}K/s")
    else:
        text = num(fig["ns"] / 1e3 if unit_us else fig["ns"])
    if fig.get("cv") is not None:
        text += f" ±{fig['cv'] * 100:.0f}%"
    return text


def ratio(a, b, target=None):
    if not a or not b:
        return "–"
    r = a["ns"] / b["ns"]
    if r >= 0.1:
        text = f"{r:.2f}"
    else:  # two significant digits, no exponent (a kept lock: ~0.0003)
        decimals = max(3, 1 - math.floor(math.log10(r))) if r > 0 else 3
        text = f"{r:.{decimals}f}"
    if target is not None:
        text += " ✓" if r <= target else " ✗"
    return text


def row(cells):
    return "| " + " | ".join(cells) + " |"


def floor_rows(results):
    """The hand-off floors, next to dchan's figure of the same run."""
    rows = []
    cpp = {p: load_gbench(os.path.join(results, "chan",
                                       f"chan_bench.{p}.json"))
           for p in PLACEMENTS}
    # The last field: placements where the figure is a floor (a yielding
    # ring is one only with both threads on one CPU).
    both = PLACEMENTS
    for workload, unit, floor, label, floor_in in (
            ("pingpong", "ns/round trip", "floor_futex_pingpong",
             "futex hand-off floor", both),
            ("pingpong", "ns/round trip", "floor_yield_pingpong",
             "sched_yield hand-off floor", both),
            ("pingpong", "ns/round trip", "floor_spin_pingpong",
             "spin hand-off floor", both),
            ("pingpong", "ns/round trip", "floor_rendezvous_pingpong",
             "spin rendezvous floor", both),
            ("buffered_1p1c", "ns/item", "floor_spsc_ring",
             "SPSC ring floor (one producer, one consumer, spinning)", both),
            ("buffered_1p1c", "ns/item", "floor_spsc_ring_yield",
             "SPSC ring floor, yielding when full or empty", ("pinned",)),
            ("buffered_1p1c", "ns/item", "floor_mpmc_ring_yield",
             "Vyukov MPMC ring floor (one compare-and-swap per operation), "
             "yielding", ("pinned",))):
        if not any(cpp[p].get(f"{floor}/raw") for p in PLACEMENTS):
            continue
        cells = ["chan", workload, unit, label]
        for p in PLACEMENTS:
            d = cpp[p].get(f"{workload}/dchan")
            f = cpp[p].get(f"{floor}/raw") if p in floor_in else None
            cells += [show(d), show(f) if f else "n/a", ratio(d, f)]
        cells.append("")
        rows.append(cells)
    return rows


def in_process_rows(results):
    """Table rows (lists of cells) for chan and sync."""
    rows = []
    for area, sub, bench, specs in (("chan", "chan", "chan_bench", CHAN),
                                    ("sync", "sync", "sync_bench", SYNC)):
        cpp = {p: load_gbench(os.path.join(results, sub, f"{bench}.{p}.json"))
               for p in PLACEMENTS}
        go = {p: load_go(os.path.join(results, sub, f"go.{p}.txt"))
              for p in PLACEMENTS}
        if not any(cpp.values()):
            continue
        for workload, unit, bases, go_name, target in specs:
            pairs = [(label, lambda p, v=variant: cpp[p].get(
                f"{workload}/{v}")) for label, variant in bases]
            pairs.append(("Go", lambda p, g=go_name: go[p].get(g)))
            # Go with each goroutine on its own OS thread, as dchan's are
            # (bench/go/chan_test.go, *LockedThreads), where there is one.
            pairs.append(("Go, goroutines locked to OS threads",
                          lambda p, g=go_name + "LockedThreads": go[p].get(g)))
            for label, get in pairs:
                if not any(get(p) for p in PLACEMENTS):
                    continue
                if isinstance(target, dict):
                    t = next((v for k, v in target.items()
                              if dict(bases).get(label) == k), None)
                else:
                    t = target if label == "Go" else None
                cells = [area, workload, unit, label]
                for p in PLACEMENTS:
                    d = cpp[p].get(f"{workload}/dchan")
                    cells += [show(d), show(get(p)), ratio(d, get(p), t)]
                cells.append(f"≤ {t:g}" if t is not None else "")
                rows.append(cells)
        if area == "chan":
            rows += floor_rows(results)
    return rows


def remote_rows(results):
    rem = {p: load_gbench(os.path.join(results, "remote",
                                       f"remote_bench.{p}.json"))
           for p in PLACEMENTS}
    ext = {p: load_ext(os.path.join(results, "baselines"), p)
           for p in PLACEMENTS}
    rows, used_ext = [], set()
    names = sorted(set(rem["unpinned"]) | set(rem["pinned"]),
                   key=lambda n: [int(t) if t.isdigit() else t
                                  for t in re.split(r"(\d+)", n)])

    def as_unit(fig, unit):
        if fig and unit in BYTES_PER_OP:
            return dict(fig, bytes=BYTES_PER_OP[unit])
        return dict(fig, rate=True) if fig and unit == "msgs/s" else fig

    for label, unit, dchan_re, bases in REMOTE:
        for name in names:
            m = re.match(dchan_re, name)
            if not m:
                continue
            groups = [g or "" for g in m.groups()]
            group = groups[0] if groups else ""
            shown = label.format(*groups)
            if "{1}" not in label and len(groups) > 1 and groups[1]:
                # oneway/remote/16x1
                shown += f", {groups[1][1:]} receiver thread(s)"
            paired = False
            for blabel, source, bre, target in bases:
                bre = bre.replace("{1}", re.escape(group))
                src = rem if source == "remote" else ext
                for bname in sorted(set(src["unpinned"]) | set(src["pinned"])):
                    if not re.search(bre, bname):
                        continue
                    if source == "ext":
                        used_ext.add(bname)
                    cells = ["remote", shown, unit,
                             blabel if source == "remote"
                             else f"{blabel} (`{bname}`)"]
                    for p in PLACEMENTS:
                        d = as_unit(rem[p].get(name), unit)
                        b = as_unit(src[p].get(bname), unit)
                        cells += [show(d, True), show(b, True),
                                  ratio(d, b, target)]
                    if label in MIN_MBPS:
                        floor = MIN_MBPS[label]
                        marks = []
                        for p in PLACEMENTS:
                            d = as_unit(rem[p].get(name), unit)
                            if d:
                                mbps = d["bytes"] * 1e3 / d["ns"]
                                marks.append(
                                    f"{p} {'✓' if mbps >= floor else '✗'}")
                        cells.append(f"dchan ≥ {floor} MB/s: "
                                     + ", ".join(marks))
                    else:
                        cells.append(f"≤ {target:g}" if target is not None
                                     else "")
                    rows.append(cells)
                    paired = True
            if not paired:
                cells = ["remote", shown, unit, "–"]
                for p in PLACEMENTS:
                    cells += [show(as_unit(rem[p].get(name), unit), True),
                              "–", "–"]
                cells.append("")
                rows.append(cells)
    # External baselines no dchan row claimed: listed, unpaired.
    for bname in sorted(set(ext["unpinned"]) | set(ext["pinned"])):
        if bname in used_ext:
            continue
        rate = any((ext[p].get(bname) or {}).get("rate") for p in PLACEMENTS)
        # A 64 KiB bandwidth baseline (e.g. a diagnostic form of the relay
        # floor) in MB/s, as its paired row shows it.
        unit = ("MB/s" if "bandwidth" in bname
                else "msgs/s" if rate else "µs/op")
        cells = ["remote", "(no dchan row)", unit, f"`{bname}`"]
        for p in PLACEMENTS:
            cells += ["–", show(as_unit(ext[p].get(bname), unit), True), "–"]
        cells.append("")
        rows.append(cells)
    return rows


def render(results):
    lines = []
    header = os.path.join(results, "run.txt")
    if os.path.exists(header):
        with open(header) as f:
            lines.append("```")
            lines += [l.rstrip("\n") for l in f]
            lines.append("```")
            lines.append("")
    lines.append(row(["area", "workload", "unit", "baseline",
                      "dchan unpinned", "baseline unpinned", "ratio unpinned",
                      "dchan pinned", "baseline pinned", "ratio pinned",
                      "target"]))
    lines.append("|" + "---|" * 3 + "---|" + "---:|" * 6 + "---|")
    for cells in in_process_rows(results) + remote_rows(results):
        lines.append(row(cells))
    lines.append("")
    lines.append(
        "Medians over the repetitions (±x%: coefficient of variation); "
        "remote figures in µs (or messages/s), in-process in ns. Ratio = "
        "dchan / baseline in time per op: below 1 dchan is faster. ✓/✗: "
        "issue 7's target for that pair, met or not in this run. Pinned = "
        "`taskset -c 0` for the bench, its partner processes, the broker and "
        "the baseline servers alike (Go then runs with GOMAXPROCS=1); "
        "unpinned Go runs with GOMAXPROCS=2. The floor rows are the same "
        "run's bare hand-offs and rings between two threads, with no channel "
        "around them (n/a: a spin needs two CPUs, and the yielding rings "
        "are floors only on one CPU, where each full or empty ring costs a "
        "context switch).")
    return "\n".join(lines) + "\n"


def write_doc(doc, text):
    with open(doc) as f:
        content = f.read()
    b, e = content.find(BEGIN), content.find(END)
    if b < 0 or e < b:
        sys.exit(f"all_table.py: {doc} lacks the {BEGIN} / {END} markers")
    content = content[: b + len(BEGIN)] + "\n" + text + content[e:]
    with open(doc, "w") as f:
        f.write(content)


def main():
    args = sys.argv[1:]
    doc = None
    if len(args) == 3 and args[1] == "--doc":
        doc = args[2]
        args = args[:1]
    if len(args) != 1:
        sys.exit(__doc__)
    text = render(args[0])
    sys.stdout.write(text)
    if doc:
        write_doc(doc, text)


if __name__ == "__main__":
    main()
