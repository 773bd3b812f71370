"""PNG plots of a results file, readable at a glance (matplotlib, Agg backend).

    speedup_attention.png, speedup_layer_norm.png, speedup_gelu.png
        per pass: our speedup over the target's reference (fastest SDPA backend, SDPA flash,
        torch.compile, Liger) vs sequence length, a line per GPT-2 size, the target as a red
        dashed line, each point a dot where the target is met and a red cross where missed;
        below, the speedup over eager PyTorch.
    throughput.png      achieved GB/s (LayerNorm, GELU) and TFLOP/s (attention) of every
                        implementation against the measured copy bandwidth / matmul rate
    model.png           training-step speedups over eager and torch.compile vs S, each kernel
                        alone and all together per size, MFU, generation tokens/s vs Hugging Face
    memory.png          peak memory of the training step per configuration and of attention
    targets.png         every target: met, missed or not measured, with its worst point
Every title carries the device and date; a smoke run's carry "interpreter smoke run — not
performance".
"""

import os

from .points import SEQ_LENS, SIZES, SMOKE_LABEL
from .results import by_point, row_key
from .targets import TARGETS, evaluate, format_value

SIZE_COLORS = {"gpt2": "#1f77b4", "gpt2-medium": "#2ca02c", "gpt2-large": "#9467bd", "gpt2-xl": "#ff7f0e",
               "tiny": "#1f77b4"}
IMPL_COLORS = {
    "triton": "#d62728", "eager": "#7f7f7f", "compile": "#1f77b4", "liger": "#8c564b", "flash_attn": "#e377c2",
    "sdpa-flash": "#2ca02c", "sdpa-efficient": "#17becf", "sdpa-cudnn": "#bcbd22", "sdpa-math": "#9467bd",
    "eager+sdpa": "#000000", "triton-attention": "#ff9896", "triton-layernorm": "#ffbb78",
    "triton-gelu": "#c5b0d5", "hf": "#8c564b",
}
FAMILY_TITLES = {"attention": "Causal attention (D=64)", "layer_norm": "LayerNorm", "gelu": "GELU (tanh) + bias"}
PASS_TITLES = {"fwd": "forward", "bwd": "backward", "fwd+bwd": "forward + backward", "train": "training step",
               "generate": "generation"}
# The reference each speedup panel compares against (the target's), and a fallback label.
SPEEDUP_REFS = {
    ("attention", "fwd"): (("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math"), "fastest SDPA backend"),
    ("attention", "fwd+bwd"): (("sdpa-flash",), "SDPA flash"),
    ("layer_norm", "fwd"): (("compile",), "torch.compile"),
    ("layer_norm", "bwd"): (("liger",), "Liger-Kernel"),
    ("layer_norm", "fwd+bwd"): (("compile",), "torch.compile"),
    ("gelu", "fwd"): (("compile",), "torch.compile"),
    ("gelu", "fwd+bwd"): (("compile",), "torch.compile"),
}
GiB = 2**30


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(meta, what):
    dev = meta.get("device", "?")
    date = meta.get("date", "?")
    t = f"{what}\n{dev} · {date} · {meta.get('dtype_label') or _dtype(meta)}"
    if meta.get("smoke"):
        t += f"\n{SMOKE_LABEL.upper()}"
    return t


def _dtype(meta):
    s = meta.get("settings") or {}
    return s.get("dtype", "")


def _versions(meta):
    return (f"torch {meta.get('torch')}, Triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
            f"commit {str(meta.get('git_commit', '?'))[:12]}")


def _finish(fig, meta, path):
    fig.text(0.99, 0.005, _versions(meta), ha="right", va="bottom", fontsize=7, color="#555555")
    if meta.get("smoke"):
        fig.text(0.5, 0.5, "SMOKE RUN\nnot performance", ha="center", va="center", fontsize=40,
                 color="red", alpha=0.12, rotation=20, transform=fig.transFigure)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _ok(rows, **f):
    out = []
    for r in rows:
        if r["status"] != "ok":
            continue
        if all(r.get("pass" if k == "pass_" else k) == v for k, v in f.items()):
            out.append(r)
    return out


def _ref_ms(group, versus):
    ms = [r["ms"] for r in group if r["status"] == "ok" and r.get("ms") and r["impl"] in versus]
    return min(ms) if ms else None


def _speedups(rows, groups, versus):
    """(row, fastest of ``versus`` ms / row's ms) for each row whose point has one of them."""
    out = []
    for r in rows:
        ref = _ref_ms(groups[row_key(r)], versus)
        if ref:
            out.append((r, ref / r["ms"]))
    return out


def _by_seq(rows):
    return sorted(rows, key=lambda r: r["seq_len"])


def _mark_missed(ax, pts):
    """A red cross on each (x, y) that misses its target."""
    if pts:
        ax.plot(*zip(*pts), "x", color="red", ms=11, mew=2.5)


def _bar_x(group, k, n):
    """The x of bar k of n in a group; the n bars span 0.8."""
    return group + (k - (n - 1) / 2) * 0.8 / n


def _bars(ax, sizes, impls, heights, label=str, ticklabels=None):
    """Grouped bars: a group per size, a bar per implementation; heights(size, impl) lists
    the bars of that pair (an empty list: none)."""
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for si, size in enumerate(sizes):
            for y in heights(size, impl):
                xs.append(_bar_x(si, k, len(impls)))
                ys.append(y)
        if xs:
            ax.bar(xs, ys, 0.8 / len(impls), color=IMPL_COLORS.get(impl), label=label(impl))
    ax.set_xticks(range(len(sizes)))
    ax.set_xticklabels(ticklabels or sizes, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def _sizes(rows):
    present = {r["size"] for r in rows}
    return [s for s in (*SIZES, "tiny") if s in present]


def _seq_axis(ax, seqs):
    ax.set_xscale("log", base=2)
    ticks = sorted(seqs) or list(SEQ_LENS)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks], fontsize=8)
    ax.set_xlabel("sequence length S (tokens)")
    ax.grid(True, alpha=0.3)


def _threshold(family, pass_, row):
    for t in TARGETS:
        if t.family == family and t.pass_ == pass_ and t.metric == "speedup" and t.applies(row):
            return t.threshold
    return None


def _pad_ylim(ax, include=(1.0,)):
    """A y range around the data and the reference lines, so that 1.02x vs 1.00x is visible."""
    lo, hi = ax.get_ylim()
    vals = [v for line in ax.get_lines() for v in line.get_ydata()] + list(include)
    for coll in ax.collections:
        for seg in getattr(coll, "get_segments", lambda: [])():
            vals += [float(y) for _, y in seg]
    if vals:
        lo, hi = min(vals), max(vals)
        span = max(hi - lo, 0.05 * max(abs(hi), 1e-9))
        ax.set_ylim(max(0.0, lo - 0.15 * span), hi + 0.35 * span)


def _bar_room(ax, ncol=2):
    """Head-room above grouped bars for a legend that does not cover them."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 1.45)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", ncol=ncol, framealpha=0.9)
    else:
        _no_data(ax)


def _style_legend(ax, sizes, styles, extra=(), fontsize=7):
    """A legend of colours (sizes) and line styles (implementations) instead of every pair."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=SIZE_COLORS.get(s), lw=2, label=s) for s in sizes]
    handles += [Line2D([], [], color="#444444", ls=ls, marker=m, label=name) for name, (ls, m) in styles.items()]
    handles += list(extra)
    ax.legend(handles=handles, fontsize=fontsize, ncol=2, loc="best")


def _no_data(ax, text="no measurement"):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888888")


# ---- speedup vs S per kernel ---------------------------------------------------------------


def plot_kernel_speedups(meta, rows, family, path):
    plt = _plt()
    fam_rows = [r for r in rows if r["family"] == family]
    passes = [p for p in ("fwd", "bwd", "fwd+bwd") if any(r["pass"] == p for r in fam_rows)]
    if not passes:
        return None
    groups = by_point(fam_rows)
    seqs = sorted({r["seq_len"] for r in fam_rows})
    fig, axes = plt.subplots(2, len(passes), figsize=(5.2 * len(passes), 8.2), squeeze=False)
    for j, p in enumerate(passes):
        versus, vlabel = SPEEDUP_REFS.get((family, p), ((), "best baseline"))
        for i, (refs, label) in enumerate(((versus, vlabel), (("eager",), "eager PyTorch"))):
            ax = axes[i][j]
            drawn = False
            for size in _sizes(fam_rows):
                pts = _speedups(_by_seq(_ok(fam_rows, pass_=p, size=size, impl="triton")), groups, refs)
                if not pts:
                    continue
                drawn = True
                ax.plot([r["seq_len"] for r, _ in pts], [y for _, y in pts], "-o", color=SIZE_COLORS.get(size),
                        label=size, ms=5)
                if i == 0:
                    _mark_missed(ax, [(r["seq_len"], y) for r, y in pts
                                      if (th := _threshold(family, p, r)) is not None and y < th])
            if i == 0:
                _draw_speedup_targets(ax, family, p, seqs)
            ax.axhline(1.0, color="#444444", lw=0.8)
            _seq_axis(ax, seqs)
            ax.set_ylabel("speedup (x, higher is better)")
            ax.set_title(f"{PASS_TITLES[p]}: Triton vs {label}", fontsize=10)
            if drawn:
                ax.legend(fontsize=8, title="GPT-2 size", title_fontsize=8, loc="best")
                _pad_ylim(ax)
            else:
                _no_data(ax, f"no Triton/{label} pair measured")
    if family in ("layer_norm", "gelu"):
        fig.text(0.01, 0.005, "row-wise op: every S has the same rows (B*S >= 65,536), so lines are flat by design",
                 fontsize=7, color="#555555")
    fig.suptitle(_title(meta, f"{FAMILY_TITLES[family]}: speedup of the Triton kernel"), fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 0.93))
    return _finish(fig, meta, path)


def _draw_speedup_targets(ax, family, pass_, seqs):
    drawn = set()
    for t in TARGETS:
        if t.family != family or t.pass_ != pass_ or t.metric != "speedup":
            continue
        lo, hi = (min(seqs, default=128), max(seqs, default=8192))
        if t.where == "S>=1024":
            lo = max(lo, 1024)
        elif t.where == "S<1024":
            hi = min(hi, 512)
        if lo > hi:
            continue
        if lo == hi:
            lo, hi = lo / 1.3, hi * 1.3
        label = "target" if "target" not in drawn else None
        drawn.add("target")
        ax.hlines(t.threshold, lo, hi, colors="red", linestyles="--", lw=1.5, label=label)


# ---- achieved throughput vs measured limits ---------------------------------------------------


def plot_throughput(meta, rows, path):
    plt = _plt()
    limits = meta.get("limits") or {}
    panels = [(f, p) for f in ("layer_norm", "gelu") for p in ("fwd", "bwd", "fwd+bwd")
              if any(r["family"] == f and r["pass"] == p for r in rows)]
    attn = [p for p in ("fwd", "fwd+bwd") if any(r["family"] == "attention" and r["pass"] == p for r in rows)]
    n = len(panels) + len(attn)
    if n == 0:
        return None
    cols = min(4, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.4 * cols, 4.3 * nrows), squeeze=False)
    flat = [a for row in axes for a in row]
    for ax, (f, p) in zip(flat, panels):
        sub = [r for r in rows if r["family"] == f and r["pass"] == p]
        sizes = _sizes(sub)
        impls = [i for i in IMPL_COLORS if any(r["impl"] == i for r in sub)]

        def best_gbps(size, impl, sub=sub):  # every S is the same shape; the best of them
            vals = [r["gbps"] for r in _ok(sub, size=size, impl=impl) if r.get("gbps")]
            return [max(vals)] if vals else []

        widths = {r["size"]: r["width"] for r in sub}
        _bars(ax, sizes, impls, best_gbps, ticklabels=[f"{s}\nN={widths[s]}" for s in sizes])
        bw = limits.get("copy_gbps")
        if bw:
            ax.axhline(bw, color="black", lw=1.2, label=f"measured copy {bw:,.4g} GB/s")
            ax.axhline(0.9 * bw, color="red", ls="--", lw=1.2, label="target 90%")
        ax.set_ylabel("achieved bandwidth (GB/s)")
        ax.set_title(f"{FAMILY_TITLES[f]} {PASS_TITLES[p]}", fontsize=10)
        _bar_room(ax, ncol=3)
    for ax, p in zip(flat[len(panels):], attn):
        sub = [r for r in rows if r["family"] == "attention" and r["pass"] == p]
        size = _sizes(sub)[0] if _sizes(sub) else None
        seqs = sorted({r["seq_len"] for r in sub})
        for impl in [i for i in IMPL_COLORS if any(r["impl"] == i for r in sub)]:
            pts = sorted(((r["seq_len"], r["tflops"]) for r in _ok(sub, size=size, impl=impl) if r.get("tflops")))
            if pts:
                ax.plot(*zip(*pts), "-o", ms=4, color=IMPL_COLORS.get(impl), label=impl,
                        lw=2.5 if impl == "triton" else 1.2)
        mm = limits.get("matmul_tflops")
        if mm:
            ax.axhline(mm, color="black", lw=1.2, label=f"measured matmul {mm:,.4g} TFLOP/s")
        _seq_axis(ax, seqs)
        ax.set_ylabel("achieved TFLOP/s (causal FLOPs)")
        ax.set_title(f"attention {PASS_TITLES[p]}, {size} ({sub[0]['heads'] if sub else '?'} heads)", fontsize=10)
        _bar_room(ax, ncol=3)
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle(_title(meta, "Achieved throughput against the measured limits (LayerNorm/GELU: best S; "
                                "attention: causal FLOPs)"), fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 0.9))
    return _finish(fig, meta, path)


# ---- end to end ----------------------------------------------------------------------------------


def plot_model(meta, rows, path):
    plt = _plt()
    mrows = [r for r in rows if r["family"] == "model"]
    if not mrows:
        return None
    groups = by_point(mrows)
    train = [r for r in mrows if r["pass"] == "train"]
    seqs = sorted({r["seq_len"] for r in train})
    judge = _dtype(meta) == "bf16"  # the targets are stated for bf16: mark misses only there
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    # (a), (b): speedup of all-Triton over eager / torch.compile vs S, a line per size
    for ax, refs, label, th in ((axes[0][0], ("eager",), "eager PyTorch", 1.25),
                                (axes[0][1], ("compile",), "torch.compile", 1.05)):
        drawn = False
        for size in _sizes(train):
            ours = _by_seq(_ok(train, size=size, impl="triton"))
            pts = [(r["seq_len"], y) for r, y in _speedups(ours, groups, refs)]
            if pts:
                drawn = True
                ax.plot(*zip(*pts), "-o", color=SIZE_COLORS.get(size), label=size)
                if judge:
                    _mark_missed(ax, [(x, y) for x, y in pts if y < th])
            if refs == ("eager",):  # the stricter reading, dotted
                pts = [(r["seq_len"], y) for r, y in _speedups(ours, groups, ("eager+sdpa",))]
                if pts:
                    ax.plot(*zip(*pts), ":", color=SIZE_COLORS.get(size), lw=1.2)
        ax.axhline(th, color="red", ls="--", lw=1.5, label=f"target {th}x")
        ax.axhline(1.0, color="#444444", lw=0.8)
        _seq_axis(ax, seqs)
        ax.set_ylabel(f"speedup over {label} (x)")
        extra = "\n(dotted: over eager+SDPA, the stricter reading)" if refs == ("eager",) else ""
        ax.set_title(f"training step, all-Triton vs {label}{extra}", fontsize=10)
        if drawn:
            ax.legend(fontsize=8)
            _pad_ylim(ax, include=(1.0, th))
        else:
            _no_data(ax)
    # (c), (e): each configuration at S = 1024 (or the nearest S measured) over eager, per size
    S0 = min(seqs, key=lambda s: abs(s - 1024)) if seqs else None
    configs = ["eager+sdpa", "compile", "triton-attention", "triton-layernorm", "triton-gelu", "triton"]
    sizes = _sizes(train)
    fwd = [r for r in mrows if r["pass"] == "fwd"]
    for ax, sub, title in ((axes[0][2], train, f"training step at S={S0}: each kernel alone and all together"),
                           (axes[1][1], fwd, f"forward pass at S={S0}")):
        _bars(ax, sizes, configs, lambda size, impl, sub=sub: [
            y for _, y in _speedups(_ok(sub, size=size, impl=impl, seq_len=S0), groups, ("eager",))])
        if sub is train:
            ax.axhline(1.25, color="red", ls="--", lw=1.5, label="target 1.25x (all-Triton)")
        ax.axhline(1.0, color="#444444", lw=0.8)
        ax.set_ylabel("speedup over eager PyTorch (x)")
        ax.set_title(title, fontsize=10)
        _bar_room(ax, ncol=3)
    # (d): MFU vs S
    ax = axes[1][0]
    styles = {"all-Triton": ("-", "o"), "torch.compile": ("--", "s"), "eager+SDPA": (":", "^")}
    for size in _sizes(train):
        for impl, (ls, m) in zip(("triton", "compile", "eager+sdpa"), styles.values()):
            pts = sorted((r["seq_len"], 100 * r["frac_flops"]) for r in _ok(train, size=size, impl=impl)
                         if r.get("frac_flops"))
            if pts:
                ax.plot(*zip(*pts), ls=ls, marker=m, color=SIZE_COLORS.get(size), ms=4,
                        lw=2 if impl == "triton" else 1)
                if impl == "triton" and size == "gpt2-xl" and judge:
                    _mark_missed(ax, [(x, y) for x, y in pts if y < 50])
    target = ax.axhline(50, color="red", ls="--", lw=1.5, label="target 50% (gpt2-xl)")
    _seq_axis(ax, seqs)
    ax.set_ylabel("MFU (% of measured matmul TFLOP/s)")
    ax.set_title("training step model-FLOP utilisation", fontsize=10)
    _style_legend(ax, _sizes(train), styles, extra=(target,))
    # (f): generation tokens/s per size
    ax = axes[1][2]
    gen = [r for r in mrows if r["pass"] == "generate"]
    gsizes = _sizes(gen)
    gimpls = ["eager", "eager+sdpa", "hf", "triton"]
    _bars(ax, gsizes, gimpls, lambda size, impl: [r["tokens_per_s"] for r in _ok(gen, size=size, impl=impl)],
          label=lambda impl: "Hugging Face" if impl == "hf" else impl)
    for si, size in enumerate(gsizes):
        hf = _ok(gen, size=size, impl="hf")
        if hf:
            need = 2 * hf[0]["tokens_per_s"]
            ax.hlines(need, si - 0.45, si + 0.45, colors="red", linestyles="--", lw=1.5,
                      label="target 2x HF" if si == 0 else None)
            ours = _ok(gen, size=size, impl="triton")
            if judge and ours and ours[0]["tokens_per_s"] < need:
                _mark_missed(ax, [(_bar_x(si, gimpls.index("triton"), len(gimpls)), ours[0]["tokens_per_s"])])
    ax.set_ylabel("tokens / s (batch 1, KV cache)")
    ax.set_title("generation throughput", fontsize=10)
    _bar_room(ax, ncol=3)
    fig.suptitle(_title(meta, "GPT-2 end to end"), fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 0.93))
    return _finish(fig, meta, path)


# ---- memory ----------------------------------------------------------------------------------------


def plot_memory(meta, rows, path):
    plt = _plt()
    train = [r for r in rows if r["family"] == "model" and r["pass"] == "train" and r.get("peak_mem_bytes")]
    attn = [r for r in rows if r["family"] == "attention" and r["pass"] == "fwd+bwd" and r.get("peak_mem_bytes")]
    if not train and not attn:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    seqs = sorted({r["seq_len"] for r in train})
    S0 = min(seqs, key=lambda s: abs(s - 1024)) if seqs else None
    ax = axes[0]
    sizes = _sizes(train)
    configs = ["eager", "eager+sdpa", "compile", "triton-attention", "triton-layernorm", "triton-gelu", "triton"]
    _bars(ax, sizes, configs,
          lambda size, impl: [r["peak_mem_bytes"] / GiB for r in _ok(train, size=size, impl=impl, seq_len=S0)])
    for si, size in enumerate(sizes):
        ref = _ok(train, size=size, impl="eager+sdpa", seq_len=S0)
        if ref:
            limit = ref[0]["peak_mem_bytes"] / GiB
            ax.hlines(limit, si - 0.45, si + 0.45, colors="red", linestyles="--",
                      label="target: <= eager+sdpa" if si == 0 else None)
            ours = _ok(train, size=size, impl="triton", seq_len=S0)
            if _dtype(meta) == "bf16" and ours and ours[0]["peak_mem_bytes"] / GiB > limit:
                _mark_missed(ax, [(_bar_x(si, configs.index("triton"), len(configs)),
                                   ours[0]["peak_mem_bytes"] / GiB)])
    ax.set_ylabel("peak GPU memory (GiB)")
    ax.set_title(f"training step at S={S0} (weights + grads + AdamW + activations)", fontsize=10)
    _bar_room(ax, ncol=3)
    ax = axes[1]
    styles = {"all-Triton": ("-", "o"), "eager+SDPA": ("--", "s"), "eager": (":", "^")}
    for size in sizes:
        for impl, (ls, m) in zip(("triton", "eager+sdpa", "eager"), styles.values()):
            pts = sorted((r["seq_len"], r["peak_mem_bytes"] / GiB) for r in _ok(train, size=size, impl=impl))
            if pts:
                ax.plot(*zip(*pts), ls=ls, marker=m, color=SIZE_COLORS.get(size), ms=4)
    _seq_axis(ax, seqs)
    ax.set_yscale("log")
    ax.set_ylabel("peak GPU memory (GiB, log)")
    ax.set_title("training step vs S (B*S ~ 8192 tokens)", fontsize=10)
    if sizes:
        _style_legend(ax, sizes, styles)
    ax = axes[2]
    asizes = _sizes(attn)
    if asizes:
        size = asizes[0]
        for impl in [i for i in IMPL_COLORS if any(r["impl"] == i for r in attn)]:
            pts = sorted((r["seq_len"], r["peak_mem_bytes"] / GiB) for r in _ok(attn, size=size, impl=impl))
            if pts:
                ax.plot(*zip(*pts), "-o", ms=4, color=IMPL_COLORS.get(impl), label=impl)
        _seq_axis(ax, sorted({r["seq_len"] for r in attn}))
        ax.set_yscale("log")
        ax.set_title(f"attention forward + backward, {size}", fontsize=10)
        ax.set_ylabel("peak GPU memory (GiB, log)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    else:
        _no_data(ax)
    fig.suptitle(_title(meta, "Peak memory"), fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 0.9))
    return _finish(fig, meta, path)


# ---- targets scoreboard ------------------------------------------------------------------------------


def plot_targets(meta, rows, path):
    plt = _plt()
    results = evaluate(rows)
    fig, ax = plt.subplots(figsize=(12, 0.42 * len(results) + 1.6))
    ax.axis("off")
    colors = {"met": "#2ca02c", "missed": "#d62728", "not measured": "#999999"}
    for i, t in enumerate(results):
        y = len(results) - i
        ax.text(0.0, y, t["text"], va="center", fontsize=9)
        ax.text(0.66, y, t["status"].upper(), va="center", fontsize=9, weight="bold", color=colors[t["status"]])
        detail = "" if t["status"] == "not measured" else (
            f"{t['met']}/{t['total']} points; worst {format_value(t['metric'], t['worst'])} "
            f"(need {'<=' if t['metric'] == 'mem_ratio' else '>='} {format_value(t['metric'], t['threshold'])})")
        ax.text(0.78, y, detail, va="center", fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_ylim(0.3, len(results) + 0.7)
    fig.suptitle(_title(meta, "Targets (all-Triton against the others)"), fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return _finish(fig, meta, path)


def render_all(meta, rows, out_dir):
    """Every plot that the rows have data for; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for family in ("attention", "layer_norm", "gelu"):
        written.append(plot_kernel_speedups(meta, rows, family, os.path.join(out_dir, f"speedup_{family}.png")))
    written.append(plot_throughput(meta, rows, os.path.join(out_dir, "throughput.png")))
    written.append(plot_model(meta, rows, os.path.join(out_dir, "model.png")))
    written.append(plot_memory(meta, rows, os.path.join(out_dir, "memory.png")))
    written.append(plot_targets(meta, rows, os.path.join(out_dir, "targets.png")))
    return [p for p in written if p]
