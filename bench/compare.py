"""``python -m bench --compare OLD_DIR NEW_DIR``: how a change moved every point.

This is how a kernel change is judged on a GPU: run the benchmark before and after, then compare
the two result folders. Rows are matched by their identity (``MATCH_KEYS``: the point and the
implementation, batch included, so that the same work is compared). For each pair:

    ratio    new ms / old ms (below 1: faster now)
    speedup  old ms / new ms, with its spread (old p20 / new p80 .. old p80 / new p20)
    verdict  "faster" / "slower" when the spreads of the two timings do not overlap, else "same"

Written: compare.csv (every pair) and compare.png (the speedup of ours, a line per size, and
the baselines' as grey dots: they did not change, so their scatter is the noise floor), in
``--out`` or NEW_DIR; printed: the geometric mean per (family, pass, implementation) and every
point of ours.
"""

import csv
import math
import os

from .results import POINT_KEYS, load_results

MATCH_KEYS = (*POINT_KEYS, "impl")
COLUMNS = (*MATCH_KEYS, "old_status", "new_status", "old_ms", "new_ms", "ratio", "speedup", "speedup_p20",
           "speedup_p80", "verdict")


class CompareError(ValueError):
    """Two folders that cannot be compared (no results, or no point in common)."""


def _load(folder, which):
    if not os.path.isfile(os.path.join(folder, "results.json")):
        raise CompareError(f"{which} folder {folder} has no results.json (write one with python -m bench --out DIR)")
    meta, rows = load_results(folder)
    if not rows:
        raise CompareError(f"{which} folder {folder} has a results.json with no rows")
    return meta, rows


def _describe(rows):
    def values(k):
        return ",".join(str(v) for v in sorted({r[k] for r in rows}, key=str))

    return f"sizes {values('size')}, dtypes {values('dtype')}, S {values('seq_len')}"


def pairs(old_rows, new_rows):
    """One dict per point and implementation present in both (COLUMNS), in the new run's order."""
    old = {tuple(r[k] for k in MATCH_KEYS): r for r in old_rows}
    out = []
    for n in new_rows:
        o = old.get(tuple(n[k] for k in MATCH_KEYS))
        if o is None:
            continue
        row = {k: n[k] for k in MATCH_KEYS}
        row.update(old_status=o["status"], new_status=n["status"], old_ms=o.get("ms"), new_ms=n.get("ms"),
                   ratio=None, speedup=None, speedup_p20=None, speedup_p80=None, verdict="")
        if o["status"] == n["status"] == "ok" and o.get("ms") and n.get("ms"):
            lo_o, hi_o = o.get("ms_p20") or o["ms"], o.get("ms_p80") or o["ms"]
            lo_n, hi_n = n.get("ms_p20") or n["ms"], n.get("ms_p80") or n["ms"]
            row.update(ratio=n["ms"] / o["ms"], speedup=o["ms"] / n["ms"], speedup_p20=lo_o / hi_n,
                       speedup_p80=hi_o / lo_n,
                       verdict="faster" if hi_n < lo_o else "slower" if lo_n > hi_o else "same")
        out.append(row)
    return out


def geomeans(rows):
    """{(family, pass, impl): (geometric mean speedup, number of points)}."""
    acc = {}
    for r in rows:
        if r["speedup"]:
            acc.setdefault((r["family"], r["pass"], r["impl"]), []).append(math.log(r["speedup"]))
    return {k: (math.exp(sum(v) / len(v)), len(v)) for k, v in acc.items()}


def _fmt(v, spec, suffix=""):
    return "—" if v is None else format(v, spec) + suffix


def aligned(header, rows, right=()):
    """The lines of a table whose every column is as wide as its widest cell, two spaces apart;
    the columns numbered in ``right`` (numbers) aligned right."""
    widths = [max(map(len, column)) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(cells).rstrip() for cells in (header, *rows)]


def table(rows, old_meta, new_meta):
    lines = [f"old: {old_meta.get('device')}, {old_meta.get('date')}, commit {old_meta.get('git_commit')}",
             f"new: {new_meta.get('device')}, {new_meta.get('date')}, commit {new_meta.get('git_commit')}",
             f"{len(rows)} points in common; speedup = old ms / new ms (above 1x: faster now)", ""]
    means = [[fam, p, impl, str(n), f"{g:.3f}x"] for (fam, p, impl), (g, n) in sorted(geomeans(rows).items())]
    lines += aligned(["family", "pass", "impl", "points", "geomean"], means, right={3, 4})
    points = []
    for r in rows:
        if not r["impl"].startswith("triton"):
            continue
        spread = (f"{r['speedup_p20']:.3f}-{r['speedup_p80']:.3f}" if r["speedup"] else
                  f"old {r['old_status']}, new {r['new_status']}")
        points.append([r["family"], r["pass"], r["impl"], r["size"], str(r["width"]), str(r["seq_len"]),
                       str(r["batch"]), _fmt(r["old_ms"], ".4g"), _fmt(r["new_ms"], ".4g"),
                       _fmt(r["speedup"], ".3f", "x"), spread, r["verdict"]])
    header = ["family", "pass", "impl", "size", "width", "S", "B", "old ms", "new ms", "speedup", "p20-p80", "verdict"]
    lines += ["", *aligned(header, points, right=set(range(4, 10)))]
    return "\n".join(lines) + "\n"


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})
    return path


def compare(old_dir, new_dir, out_dir=None):
    """Tabulate and plot NEW against OLD; returns (text, csv path, png path or None)."""
    old_meta, old_rows = _load(old_dir, "OLD")
    new_meta, new_rows = _load(new_dir, "NEW")
    rows = pairs(old_rows, new_rows)
    if not rows:
        raise CompareError(f"no point in common: OLD has {_describe(old_rows)}; NEW has {_describe(new_rows)} "
                           f"(points match on {', '.join(MATCH_KEYS)})")
    out_dir = out_dir or new_dir
    os.makedirs(out_dir, exist_ok=True)
    text = table(rows, old_meta, new_meta)
    path = write_csv(rows, os.path.join(out_dir, "compare.csv"))
    from .plots.compare import plot_compare

    png = plot_compare(old_meta, new_meta, rows, os.path.join(out_dir, "compare.png"))
    return text, path, png
