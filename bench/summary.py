"""summary.md: the run in one page (targets, key numbers, what failed), also printed at the end."""

from collections import Counter

from .results import best_baseline
from .targets import evaluate, format_value


def _fmt(v, spec=None):
    """A number at a precision that suits its size (or the given format spec)."""
    if v is None:
        return "—"
    if spec:
        return format(v, spec)
    a = abs(v)
    return f"{v:,.0f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"


def summary_text(meta, rows):
    lines = [f"# Benchmark summary: {meta.get('device')}, {meta.get('date')}", ""]
    if meta.get("smoke"):
        lines += [f"**{meta.get('label')}**: the numbers below are CPU timings of Triton's interpreter.", ""]
    lim = meta.get("limits") or {}
    lines += [
        f"- torch {meta.get('torch')}, Triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
        f"Python {meta.get('python')}, commit {meta.get('git_commit')}",
        f"- dtype {(meta.get('settings') or {}).get('dtype')}; run status: {meta.get('status')}"
        + (f"; budget {meta['settings'].get('budget')} s" if (meta.get('settings') or {}).get('budget') else ""),
        f"- measured limits: copy {_fmt(lim.get('copy_gbps'))} GB/s, "
        f"{lim.get('matmul_dtype', '')} matmul {_fmt(lim.get('matmul_tflops'))} TFLOP/s",
        "- rows: " + ", ".join(f"{n} {s}" for s, n in sorted(Counter(r["status"] for r in rows).items())),
    ]
    peers = meta.get("peers") or {}
    if peers:
        lines.append("- peers: " + ", ".join(f"{k} {v or 'absent'}" for k, v in peers.items()))
    lines += ["", "## Targets", "", "| target | status | points met | worst | needed |", "|---|---|---|---|---|"]
    for t in evaluate(rows):
        need = ("<= " if t["metric"] == "mem_ratio" else ">= ") + format_value(t["metric"], t["threshold"])
        lines.append(f"| {t['text']} | {t['status']} | {t['met']}/{t['total']} | "
                     f"{format_value(t['metric'], t['worst'])} | {need} |")
    lines += ["", "## Ours against the others", "",
              "| family | pass | size | S | B | triton ms | eager ms | best baseline | x eager | x best | "
              "GB/s | TFLOP/s | % limit |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ours = [r for r in rows if r["impl"] == "triton" and r["status"] == "ok"]
    shown = set()
    for r in sorted(ours, key=lambda r: (r["family"], r["pass"], r["size"], abs(r["seq_len"] - 1024))):
        k = (r["family"], r["pass"], r["size"])
        if k in shown:
            continue
        shown.add(k)
        eager = next((x["ms"] for x in rows if x["impl"] == "eager" and x["status"] == "ok"
                      and (x["family"], x["pass"], x["size"], x["seq_len"], x["batch"]) ==
                      (r["family"], r["pass"], r["size"], r["seq_len"], r["batch"])), None)
        frac = r.get("frac_flops") if r.get("frac_flops") is not None else r.get("frac_bw")
        lines.append(
            f"| {r['family']} | {r['pass']} | {r['size']} | {r['seq_len']} | {r['batch']} | {_fmt(r['ms'])} | "
            f"{_fmt(eager)} | {best_baseline(rows, r) or '—'} | {_fmt(r['speedup_vs_eager'])} | "
            f"{_fmt(r['speedup_vs_best_baseline'])} | {_fmt(r.get('gbps'))} | "
            f"{_fmt(r.get('tflops'))} | {_fmt(None if frac is None else 100 * frac)} |")
    bad = [r for r in rows if r["status"] in ("error", "oom")]
    if bad:
        lines += ["", f"## Errors and out-of-memory points ({len(bad)})", ""]
        for r in bad[:25]:
            lines.append(f"- {r['status']}: {r['family']} {r['pass']} {r['impl']} {r['size']} S={r['seq_len']} "
                         f"B={r['batch']}: {r['note']}")
        if len(bad) > 25:
            lines.append(f"- ... and {len(bad) - 25} more (results.csv)")
    unavailable = sorted({(r["family"], r["impl"], r["note"]) for r in rows if r["status"] == "unavailable"})
    if unavailable:
        lines += ["", "## Unavailable here", ""]
        seen = set()
        for fam, impl, note in unavailable:
            if (fam, impl) in seen:
                continue
            seen.add((fam, impl))
            lines.append(f"- {fam} {impl}: {note}")
    return "\n".join(lines) + "\n"


def write_summary(meta, rows, path):
    text = summary_text(meta, rows)
    with open(path, "w") as f:
        f.write(text)
    return text
