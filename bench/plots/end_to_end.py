"""GPT-2 end to end (training step, forward, generation), peak memory, and the targets' scoreboard."""

from ..results import by_point, row_key
from ..targets import evaluate, format_value, target
from . import style as st
from .style import GiB, IMPL_COLORS, SIZE_COLORS, TARGET_STYLE

# Each Triton kernel alone in an otherwise eager+SDPA model, then all three.
CONFIGS = ["eager+sdpa", "compile", "triton-attention", "triton-layernorm", "triton-gelu", "triton"]


def _nearest(seqs, s=1024):
    return min(seqs, key=lambda x: abs(x - s)) if seqs else None


def _line_legend(ax, sizes, styles, extra=()):
    """Colours are sizes, line styles are implementations: a legend of each, under the panel."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=SIZE_COLORS.get(s), lw=2, label=s) for s in sizes]
    handles += [Line2D([], [], color="#444444", ls=ls, marker=m, label=name) for name, (ls, m) in styles.items()]
    st.legend_below(ax, ncol=4, handles=handles + list(extra))


def plot_model(meta, rows, path):
    mrows = [r for r in rows if r["family"] == "model"]
    if not mrows:
        return None
    train = [r for r in mrows if r["pass"] == "train"]
    seqs = sorted({r["seq_len"] for r in train})
    fig, axes = st.figure(2, 3, 17, 10.5)
    for ax, tid in ((axes[0][0], "train_eager"), (axes[0][1], "train_compile")):
        _train_speedup(ax, train, target(tid), seqs)
    S0 = _nearest(seqs)
    fwd = [r for r in mrows if r["pass"] == "fwd"]
    for ax, sub, what in ((axes[0][2], train, "training step"), (axes[1][1], fwd, "forward pass")):
        _config_bars(ax, sub, S0, f"{what} at S={S0}: each kernel alone, and all three"
                     + ("" if sub is fwd else f"\n(target: all three {target('train_eager').short})"))
    _mfu(axes[1][0], train, seqs)
    _generation(axes[1][2], [r for r in mrows if r["pass"] == "generate"])
    fig.suptitle(st.title(meta, "GPT-2 end to end"), fontsize=11)
    return st.finish(fig, meta, path)


def _train_speedup(ax, train, t, seqs):
    """All-Triton over the target's reference vs S, a line per size, the target dashed."""
    label = t.versus_label
    values, statuses = [t.threshold], set()
    for size in st.sizes_of(train):
        ours = [r for r in train if r["size"] == size and r["impl"] == "triton"]
        series = st.speedup_series(ours, train, t.versus)
        statuses |= st.draw_series(ax, series, SIZE_COLORS.get(size), label=size)
        values += [v for s in series if s[1] is not None for v in s[1:]]
        missed = [(s[0], s[1]) for s in series if s[1] is not None and s[1] < t.threshold]
        if missed and all(r["dtype"] == "bf16" for r in ours):
            ax.plot(*zip(*missed), "x", color="red", ms=11, mew=2.5)
    ax.axhline(t.threshold, **TARGET_STYLE, label=f"target {t.short}")
    st.seq_axis(ax, seqs)
    st.speedup_axis(ax, values, f"speedup over {label} (x, log scale)")
    ax.set_title(f"training step, all-Triton vs {label}", fontsize=10)
    st.legend_below(ax, ncol=4, handles=ax.get_legend_handles_labels()[0] + [st.band_handle()]
                    + st.status_handles(statuses))


def _config_bars(ax, sub, S0, title):
    groups = by_point(sub)
    sizes = st.sizes_of(sub)

    def value(size, impl):
        row = next((r for r in sub if r["size"] == size and r["impl"] == impl and r["seq_len"] == S0), None)
        if row is None:
            return None
        s = st.ratio(row, [g for g in groups[row_key(row)] if g["impl"] == "eager"])
        return s if s else row["status"] if row["status"] != "ok" else "unavailable"

    statuses = st.bars(ax, sizes, CONFIGS, value, base=1.0)
    vals = [y for size in sizes for impl in CONFIGS if isinstance(s := value(size, impl), tuple) for y in s]
    if sub and sub[0]["pass"] == "train":
        t = target("train_eager")
        ax.axhline(t.threshold, **TARGET_STYLE, label=f"target: all-Triton {t.short}")
        vals.append(t.threshold)
    st.speedup_axis(ax, vals, "speedup over eager PyTorch (x, log scale)")
    ax.set_title(title, fontsize=10)
    st.legend_below(ax, ncol=4, handles=ax.get_legend_handles_labels()[0] + st.status_handles(statuses))


def _mfu(ax, train, seqs):
    t = target("train_mfu_xl")
    styles = {"all-Triton": ("-", "o"), "torch.compile": ("--", "s"), "eager+SDPA": (":", "^")}
    impls = ("triton", "compile", "eager+sdpa")
    statuses = set()
    for size in st.sizes_of(train):
        for k, (impl, (ls, m)) in enumerate(zip(impls, styles.values())):
            series = []
            for r in sorted((r for r in train if r["size"] == size and r["impl"] == impl), key=lambda r: r["seq_len"]):
                v = st.spread(r, "frac_flops", 100)
                x = st.dodge(r["seq_len"], k, len(impls))
                series.append((x, *v) if isinstance(v, tuple) else (x, None, v or "error"))
            statuses |= st.draw_series(ax, series, SIZE_COLORS.get(size), ls=ls, marker=m, ms=4,
                                       lw=2 if impl == "triton" else 1)
    line = ax.axhline(100 * t.threshold, **TARGET_STYLE, label=f"target {t.threshold:.0%} (gpt2-xl)")
    st.seq_axis(ax, seqs)
    ax.set_ylabel("MFU (% of measured matmul TFLOP/s)")
    ax.set_title("training step model-FLOP utilisation", fontsize=10)
    _line_legend(ax, st.sizes_of(train), styles, extra=[line, *st.status_handles(statuses)])


def _generation(ax, gen):
    sizes = st.sizes_of(gen)
    impls = ["eager", "eager+sdpa", "hf", "triton"]
    t = target("gen_hf")

    def value(size, impl):
        row = next((r for r in gen if r["size"] == size and r["impl"] == impl), None)
        return None if row is None else st.spread(row, "tokens_per_s")

    statuses = st.bars(ax, sizes, impls, value, label=lambda i: "Hugging Face" if i == "hf" else i)
    for si, size in enumerate(sizes):
        hf = st.ok(gen, size=size, impl="hf")
        if hf:
            ax.hlines(t.threshold * hf[0]["tokens_per_s"], si - 0.45, si + 0.45, colors="red", linestyles="--",
                      lw=1.5, label=f"target {t.short}" if si == 0 else None)
    ax.set_ylabel("tokens / s (batch 1, KV cache)")
    ax.set_title("generation throughput", fontsize=10)
    st.legend_below(ax, ncol=3, handles=ax.get_legend_handles_labels()[0] + st.status_handles(statuses))


# ---- memory ----------------------------------------------------------------------------------------


def plot_memory(meta, rows, path):
    train = [r for r in rows if r["family"] == "model" and r["pass"] == "train"]
    attn = [r for r in rows if r["family"] == "attention" and r["pass"] == "fwd+bwd"]
    if not any(r.get("peak_mem_bytes") for r in train + attn):
        return None
    fig, axes = st.figure(1, 3, 18, 6.2)
    seqs = sorted({r["seq_len"] for r in train})
    S0 = _nearest(seqs)
    ax = axes[0][0]
    sizes = st.sizes_of(train)
    configs = ["eager", *CONFIGS]

    def value(size, impl):
        row = next((r for r in train if r["size"] == size and r["impl"] == impl and r["seq_len"] == S0), None)
        if row is None or row["status"] != "ok":
            return row and row["status"]
        mem = row.get("peak_mem_bytes")
        return (mem / GiB,) * 3 if mem else None  # one reading: no spread

    statuses = st.bars(ax, sizes, configs, value)
    t = target("train_memory")
    for si, size in enumerate(sizes):
        ref = st.ok(train, size=size, impl=t.versus[0], seq_len=S0)
        if ref and ref[0].get("peak_mem_bytes"):
            ax.hlines(ref[0]["peak_mem_bytes"] / GiB, si - 0.45, si + 0.45, colors="red", linestyles="--",
                      label=f"target: all-Triton <= {t.short}" if si == 0 else None)
    ax.set_ylabel("peak GPU memory (GiB)")
    ax.set_title(f"training step at S={S0} (weights + grads + AdamW + activations)", fontsize=10)
    st.legend_below(ax, ncol=4, handles=ax.get_legend_handles_labels()[0] + st.status_handles(statuses))
    _memory_lines(axes[0][1], train, {"all-Triton": "triton", "eager+SDPA": "eager+sdpa", "eager": "eager"},
                  "training step vs S (B*S ~ 8192 tokens)")
    asizes = st.sizes_of(attn)
    impls = [i for i in st.impls_of(attn) if any(r["impl"] == i and r["status"] != "unavailable" for r in attn)]
    _memory_lines(axes[0][2], [r for r in attn if asizes and r["size"] == asizes[0]], {i: i for i in impls},
                  f"attention forward + backward, {asizes[0] if asizes else '?'}", by_impl=True)
    fig.suptitle(st.title(meta, "Peak memory (lines that coincide are drawn side by side)"), fontsize=11)
    return st.finish(fig, meta, path)


def _memory_lines(ax, rows, impls, title, by_impl=False):
    """Peak memory vs S: colour = size (or implementation), marker and dash = implementation,
    each implementation nudged sideways so that equal lines stay visible."""
    from matplotlib.lines import Line2D

    statuses, handles = set(), []
    sizes = st.sizes_of(rows)
    for k, (name, impl) in enumerate(impls.items()):
        m, ls = st.MARKERS[k % len(st.MARKERS)], st.DASHES[k % len(st.DASHES)]
        for size in sizes:
            color = IMPL_COLORS.get(impl) if by_impl else SIZE_COLORS.get(size)
            series = [(st.dodge(r["seq_len"], k, len(impls)), r["peak_mem_bytes"] / GiB) if r.get("peak_mem_bytes")
                      else (r["seq_len"], None, r["status"] if r["status"] != "ok" else "unavailable")
                      for r in sorted((r for r in rows if r["size"] == size and r["impl"] == impl),
                                      key=lambda r: r["seq_len"])]
            pts = [p for p in series if p[1] is not None]
            if pts:
                ax.plot(*zip(*pts), ls=ls, marker=m, color=color, ms=5, mfc="none" if k % 2 else color)
            statuses |= st.mark_status(ax, [(p[0], p[2]) for p in series if p[1] is None], color)
        handles.append(Line2D([], [], color=IMPL_COLORS.get(impl) if by_impl else "#444444", ls=ls, marker=m,
                              mfc="none" if k % 2 else None, label=name))
    if not by_impl:
        handles = [Line2D([], [], color=SIZE_COLORS.get(s), lw=2, label=s) for s in sizes] + handles
    st.seq_axis(ax, {r["seq_len"] for r in rows})
    ax.set_yscale("log")
    ax.set_ylabel("peak GPU memory (GiB, log)")
    ax.set_title(title, fontsize=10)
    if not any(r.get("peak_mem_bytes") for r in rows):
        st.no_data(ax, "no peak memory measured (the CPU has none)")
    st.legend_below(ax, ncol=4, handles=handles + st.status_handles(statuses))


# ---- targets scoreboard ------------------------------------------------------------------------------


def plot_targets(meta, rows, path):
    results = evaluate(rows)
    fig, ax = st.plt().subplots(figsize=(12, 0.42 * len(results) + 1.6))
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
    if all(t["status"] == "not measured" for t in results):
        ax.text(0.0, 0.1, f"No point of this run is one a target is stated for (bf16, GPT-2's sizes; this run: "
                f"{st.dtype(meta) or '?'}, {', '.join(st.sizes_of(rows)) or 'no rows'}).", fontsize=9,
                color="#555555", va="center")
    ax.set_xlim(0, 1.12)
    ax.set_ylim(-0.3, len(results) + 0.7)
    fig.suptitle(st.title(meta, "Targets (all-Triton against the others)"), fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    return st.finish(fig, meta, path)
