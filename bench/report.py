"""What a run says about itself: its metadata (device, versions, commit, settings), the
device's measured limits, and summary.md, the run in one page (targets, key numbers, what
failed), also printed at the end."""

import datetime as _dt
import os
import platform
import subprocess
import sys
from collections import Counter

from .points import (
    ATTN_TILE_M, ATTN_TOKENS_TARGET, MEM_FRACTION, MODEL_TOKENS_TARGET, PROGRAMS_PER_SM, ROWS_TARGET,
    SMOKE_LABEL, SMOKE_TARGETS, torch_dtype,
)
from .results import best_baseline
from .targets import evaluate, format_value
from .timing import free_memory


def git_commit():
    env = os.environ.get("BENCH_GIT_COMMIT")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def peer_version(module, dist):
    """The version of an optional package if it can be imported here, else None."""
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    return package_version(dist) or "installed"


def device_slug(name):
    """A folder name for a device: "NVIDIA H200" -> "nvidia-h200"."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "device"


def base_meta(device, info, settings, smoke):
    import torch

    meta = {
        "device": info.name,
        "device_slug": device_slug(info.name),
        "sm_count": info.sm_count,
        "total_mem_bytes": info.total_mem,
        "capability": None,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "argv": sys.argv[1:],
        "settings": settings,
        "smoke": bool(smoke),
        "label": SMOKE_LABEL if smoke else "",
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        "batch_rules": {
            "rows_target": SMOKE_TARGETS["rows"] if smoke else ROWS_TARGET,
            "attn_tokens_target": SMOKE_TARGETS["attn_tokens"] if smoke else ATTN_TOKENS_TARGET,
            "attn_programs_per_sm": PROGRAMS_PER_SM, "attn_tile_m": ATTN_TILE_M,
            "model_tokens_target": SMOKE_TARGETS["model_tokens"] if smoke else MODEL_TOKENS_TARGET,
            "mem_fraction": MEM_FRACTION,
        },
        "conventions": {
            "bytes": "minimum bytes a one-pass implementation moves (see bench/points.py)",
            "attention_flops": "fwd 4*B*H*S*S*D/2 (causal); bwd 2.5x fwd (FlashAttention convention)",
            "model_flops": "2*(12*L*d^2 + d*V) per token + causal attention 2*L*S*d per token; "
                           "train = 3x forward (no recomputation counted)",
            "speedups": "ratio of median times within a point; best baseline = fastest "
                        "baseline or peer (never ours or a single-kernel variant)",
        },
        "limits": None,
        "peers": {},
        "status": "running",
    }
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        meta["capability"] = f"{major}.{minor}"
    return meta



def attention_configs():
    """The tiles gpt2_kernels.attention's first-call tuner chose in this run ([] when nothing was timed)."""
    module = sys.modules.get("gpt2_kernels.attention")
    return module.chosen_configs() if module is not None else []


def measure_limits(device, dtype, timer):
    """The device's copy bandwidth (GB/s) and matmul rate (TFLOP/s), measured now.

    Copy: ``dst.copy_(src)`` of 1 GiB (16 MiB on the CPU), counting bytes read plus written.
    Matmul: ``a @ b`` with 8192 x 8192 random matrices (256 on the CPU) in the run's dtype
    (bf16 by default), 2*n^3 FLOPs.
    """
    nbytes = 2**30 if device == "cuda" else 2**24
    n = 8192 if device == "cuda" else 256
    copy_ms = _time_copy(nbytes, device, timer).ms
    mm_ms = _time_matmul(n, torch_dtype(dtype), device, timer).ms
    free_memory(device)
    return {
        "copy_gbps": 2 * nbytes / (copy_ms * 1e-3) / 1e9,
        "matmul_tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12,
        "matmul_dtype": dtype,
        "method": f"copy: dst.copy_(src) of {nbytes} bytes, (read+write)/time; "
                  f"matmul: {n}x{n}x{n} {dtype} torch.matmul on random data, 2*n^3/time",
    }


def _time_copy(nbytes, device, timer):
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src))


def _time_matmul(n, dt, device, timer):
    import torch

    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    return timer(lambda: a @ b)


# ---- summary.md --------------------------------------------------------------------------


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
