"""The results: one row per (point, implementation), speedups within a point, and the files.

Schema (results.json ``{"meta": ..., "rows": [...]}`` and results.csv, the same rows): every
row has every field of ``FIELDS``, None where it does not apply. ``ms`` is the median time,
``ms_p20`` and ``ms_p80`` the 20th and 80th percentiles of the timed runs.
"""

import csv
import glob
import json
import math
import os

# ok; oom (out of memory); error (the note says what); unavailable (not installed, or no kernel
# for this shape/dtype/device); skipped (not measured: --budget, or the CUDA context was lost).
STATUSES = ("ok", "oom", "error", "unavailable", "skipped")
# ours: all-Triton; baseline: eager, torch.compile, SDPA; peer: Liger, flash-attn, Hugging Face;
# variant: one Triton kernel in an otherwise eager model (never a "best baseline").
ROLES = ("ours", "baseline", "peer", "variant")

# The row schema (JSON and CSV); every row has every field, None where it does not apply.
FIELDS = (
    "family", "op", "pass", "impl", "role", "size", "width", "heads", "seq_len", "batch", "dtype",
    "ms", "ms_p20", "ms_p80", "gbps", "tflops", "frac_bw", "frac_flops", "speedup_vs_eager",
    "speedup_vs_best_baseline", "tokens_per_s", "peak_mem_bytes", "compile_s", "max_abs_err", "flops", "bytes",
    "status", "note",
)
# What names a point (rows of one point share it; speedups compare within it).
POINT_KEYS = ("family", "op", "pass", "size", "width", "heads", "seq_len", "batch", "dtype")


def make_row(point, impl, role, status="ok", note="", **values):
    row = dict.fromkeys(FIELDS)
    row.update(
        family=point.family, op=point.op, **{"pass": point.pass_}, impl=impl, role=role,
        size=point.size, width=point.width, heads=point.heads, seq_len=point.seq_len,
        batch=point.batch, dtype=point.dtype, status=status, note=note,
    )
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown result field(s): {', '.join(sorted(unknown))}")
    row.update(values)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return row


def fill_rates(row, limits):
    """GB/s, TFLOP/s and their fractions of the measured limits, from ms, flops and bytes."""
    ms = row.get("ms")
    if row.get("status") != "ok" or not ms:
        return row
    if row.get("bytes"):
        row["gbps"] = row["bytes"] / (ms * 1e-3) / 1e9
        if limits and limits.get("copy_gbps"):
            row["frac_bw"] = row["gbps"] / limits["copy_gbps"]
    if row.get("flops"):
        row["tflops"] = row["flops"] / (ms * 1e-3) / 1e12
        if limits and limits.get("matmul_tflops"):
            row["frac_flops"] = row["tflops"] / limits["matmul_tflops"]
    return row


def row_key(row):
    return tuple(row[k] for k in POINT_KEYS)

def by_point(rows):
    """The rows grouped by point: {row_key: [rows]}."""
    groups = {}
    for r in rows:
        groups.setdefault(row_key(r), []).append(r)
    return groups


def fill_speedups(rows):
    """speedup_vs_eager = eager's ms / this row's ms; speedup_vs_best_baseline = the fastest
    baseline's or peer's ms / this row's ms, within each point. In place; returns rows."""
    for group in by_point(rows).values():
        ok = [r for r in group if r["status"] == "ok" and r.get("ms")]
        eager = next((r["ms"] for r in ok if r["impl"] == "eager"), None)
        base = [r["ms"] for r in ok if r["role"] in ("baseline", "peer")]
        best = min(base) if base else None
        for r in group:
            r["speedup_vs_eager"] = eager / r["ms"] if eager and r in ok else None
            r["speedup_vs_best_baseline"] = best / r["ms"] if best and r in ok else None
    return rows


def best_baseline(rows, row):
    """The name of the fastest baseline at a row's point (for summaries)."""
    same = [r for r in rows if row_key(r) == row_key(row) and r["status"] == "ok"
            and r["role"] in ("baseline", "peer") and r.get("ms")]
    return min(same, key=lambda r: r["ms"])["impl"] if same else None


def results_paths(out_dir):
    return os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.csv")


def write_results(out_dir, meta, rows):
    """results.json ({"meta": ..., "rows": [...]}) and results.csv (the same rows), atomically."""
    os.makedirs(out_dir, exist_ok=True)
    jpath, cpath = results_paths(out_dir)
    clean = [{k: _jsonable(r.get(k)) for k in FIELDS} for r in rows]
    tmp = jpath + ".tmp"
    with open(tmp, "w") as f:
        # Strict JSON: NaN and inf (a failed measurement, a limit not measured) are written as
        # null, and allow_nan=False turns any that slipped through into an error, not a file
        # that other JSON readers refuse.
        json.dump({"meta": _jsonable(meta), "rows": clean}, f, indent=1, default=str, allow_nan=False)
    os.replace(tmp, jpath)
    tmp = cpath + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in clean:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    os.replace(tmp, cpath)
    return jpath, cpath


def _jsonable(v):
    """v with every non-finite float (in dicts, lists and tuples too) replaced by None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


_INT_FIELDS = {"width", "heads", "seq_len", "batch", "peak_mem_bytes", "flops", "bytes"}
_STR_FIELDS = {"family", "op", "pass", "impl", "role", "size", "dtype", "status", "note"}


def load_results(path):
    """(meta, rows) from a results.json, or from a results folder holding one."""
    if os.path.isdir(path):
        path = results_paths(path)[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: a results folder holds the results.json that "
                                f"python -m bench writes")
    try:
        with open(path) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "meta" not in data or "rows" not in data:
        raise ValueError(f"{path}: not a benchmark results file (expected keys 'meta' and 'rows')")
    rows = []
    for i, r in enumerate(data["rows"]):
        missing = set(FIELDS) - set(r)
        if missing:
            raise ValueError(f"{path}: row {i} lacks field(s) {', '.join(sorted(missing))}")
        if r["status"] not in STATUSES:
            raise ValueError(f"{path}: row {i} has unknown status {r['status']!r}")
        rows.append({k: r[k] for k in FIELDS})
    return data["meta"], rows


def load_csv(path):
    """Rows from a results.csv, typed like the JSON's."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k in FIELDS:
                v = r.get(k, "")
                if k in _STR_FIELDS:
                    row[k] = v if (v != "" or k == "note") else None
                elif v == "":
                    row[k] = None
                elif k in _INT_FIELDS:
                    row[k] = int(v)
                else:
                    row[k] = float(v)
            rows.append(row)
    return rows


def shipped_results(results_dir):
    """results.json files in the folders of results_dir (bench/results/) from real GPU runs
    (smoke runs are never shipped)."""
    found = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*", "results.json"))):
        try:
            with open(path) as f:
                if json.load(f).get("meta", {}).get("smoke"):
                    continue
        except (OSError, ValueError):
            continue
        found.append(path)
    return found


def merge_results(dirs, out_dir):
    """One results folder from several runs' folders (bench/gpu_check.sh runs the benchmark as
    separate steps, one process each): every row of every folder, a later folder's row replacing
    an earlier one's at the same point and implementation; the first folder's meta, with each
    run's status, time, settings and measured limits kept under "runs". Returns (meta, rows)."""
    meta, merged, runs = None, {}, []
    for d in dirs:
        m, rows = load_results(d)
        meta = meta or dict(m)
        runs.append({"dir": os.path.basename(os.path.normpath(d)), **{k: m.get(k) for k in (
            "status", "elapsed_s", "settings", "limits", "attention_configs")}})
        for r in rows:
            merged[(row_key(r), r["impl"])] = r
    if meta is None:
        raise ValueError("--merge: no results folders given")
    meta["runs"] = runs
    meta["status"] = "; ".join(f"{r['dir']}: {r['status']}" for r in runs)
    meta["attention_configs"] = [c for r in runs for c in (r["attention_configs"] or [])]
    rows = fill_speedups(list(merged.values()))
    write_results(out_dir, meta, rows)
    return meta, rows
