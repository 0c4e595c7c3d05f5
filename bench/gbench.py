"""What the bench/*_table.py scripts share: the loaders of Google Benchmark
JSON, `go test -bench` text and the JSON-lines baseline results, and the
number formatting. Imported by the scripts from their own directory (each
puts it first on sys.path); standard library only.
"""

import json
import os
import re
import statistics

# Factors from a Google Benchmark time_unit to ns or to µs.
_TO = {"ns": {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9},
       "us": {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}}
_GO_LINE = re.compile(r"^Benchmark(\w+?)(?:-\d+)?\s+\d+\s+([0-9.]+) ns/op")
_SUFFIX = re.compile(r"/(manual_time|real_time)$")


def load_gbench(path, unit="ns", singles=True):
    """{benchmark name without /manual_time or /real_time: entry} from a
    Google Benchmark JSON file ({} if there is none). An entry has `unit`
    ("ns" or "us": the median's time per op in that unit, its key too) and
    "n" (repetitions), and "cv" (a fraction),
    "p50" and "p99" (the median's p50_us / p99_us counters, µs) when the
    file has them. With `singles`, a benchmark run just once (smoke modes:
    no aggregates) gets an entry from that run ("n": 1, no "cv"). Errored
    runs are left out, and so is a name without a median."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    out = {}
    once = {}
    for b in data["benchmarks"]:
        if b.get("error_occurred"):
            continue
        name = _SUFFIX.sub("", b["run_name"])
        if b.get("run_type") != "aggregate":
            once.setdefault(name, []).append(b)
            continue
        e = out.setdefault(name, {})
        e["n"] = b.get("repetitions", 0)
        agg = b["aggregate_name"]
        if agg == "median":
            _fill(e, b, unit)
        elif agg == "cv":
            e["cv"] = b["real_time"]
    if singles:
        for name, runs in once.items():
            if name not in out and len(runs) == 1:
                _fill(out.setdefault(name, {"n": 1}), runs[0], unit)
    return {k: v for k, v in out.items() if unit in v}


def _fill(entry, b, unit):
    entry[unit] = b["real_time"] * _TO[unit][b["time_unit"]]
    for counter in ("p50_us", "p99_us"):
        if counter in b:
            entry[counter[:3]] = b[counter]


def by_variant(entries):
    """{(workload, variant): entry} from load_gbench's {name: entry}, for
    names workload/variant[/...]."""
    return {tuple(name.split("/")[:2]): e for name, e in entries.items()}


def load_go(path):
    """{Go benchmark name without "Benchmark": {"ns": median ns/op, "cv":
    fraction or None (one run), "n": runs}} from `go test -bench` text ({}
    if there is none)."""
    if not os.path.exists(path):
        return {}
    runs = {}
    with open(path) as f:
        for line in f:
            m = _GO_LINE.match(line.strip())
            if m:
                runs.setdefault(m.group(1), []).append(float(m.group(2)))
    return {name: {"ns": statistics.median(xs), "cv": cv(xs), "n": len(xs)}
            for name, xs in runs.items()}


def cv(xs):
    """Coefficient of variation (sample stdev / mean), None for one value."""
    mean = statistics.fmean(xs)
    return statistics.stdev(xs) / mean if len(xs) > 1 and mean else None


def read_jsonl(path, into=None):
    """{bench: [record, ...]} from a file of one JSON object per line
    (lines that are not one, or lack "bench", are skipped), added to
    `into` if given."""
    recs = {} if into is None else into
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "bench" in r:
                recs.setdefault(r["bench"], []).append(r)
    return recs


def num(x, group=100):
    """x with 3 significant-ish digits: 1234 (thousands separated from
    `group` on), 12.3, 1.23."""
    if x >= group:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def spread(entry):
    """" (±x%)": the entry's coefficient of variation, or "" without one."""
    if entry.get("cv") is None:
        return ""
    return f" (±{entry['cv'] * 100:.0f}%)"


def percentiles(entry, scale=1.0):
    """"p50 / p99" of an entry (times `scale`), or "" without them."""
    if not entry or "p50" not in entry:
        return ""
    return f"{num(entry['p50'] * scale)} / {num(entry['p99'] * scale)}"


def ratio(a, b, key):
    """a / b of two entries' `key` (time per op), "n/a" without both."""
    if not a or not b or key not in a or key not in b:
        return "n/a"
    return f"{a[key] / b[key]:.2f}"
