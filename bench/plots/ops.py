"""The kernels' plots: speedup of each Triton kernel, and the throughput of every implementation.

Attention's cost grows with S, so it is drawn against S, a line per GPT-2 size. LayerNorm and
GELU see rows x width and every S gives the same rows (B*S is fixed), so they are drawn against
the row width (the hidden size), where their cost varies.
"""

from ..results import row_key
from ..targets import REFERENCE_LABELS, TARGETS, speedup_targets, threshold_at
from . import style as st
from .style import IMPL_COLORS, SIZE_COLORS, TARGET_STYLE

ROW_WISE = ("layer_norm", "gelu")


def x_field(family):
    return "width" if family in ROW_WISE else "seq_len"


def per_width(rows):
    """Row-wise ops: one row per (width, rows, impl) — every S of a width is the same shape."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: (r["status"] != "ok", r["seq_len"])):
        k = (r["width"], r["batch"] * r["seq_len"], r["impl"], r["pass"])
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def width_axis(ax, rows, family):
    widths = sorted({r["width"] for r in rows})
    size_of = {r["width"]: r["size"] for r in rows}
    ax.set_xticks(widths)
    ax.set_xticklabels([f"{w}\n{size_of[w]}" for w in widths], fontsize=8)
    if widths:
        pad = max(0.08 * (widths[-1] - widths[0]), 0.1 * widths[0])
        ax.set_xlim(widths[0] - pad, widths[-1] + pad)
    ax.set_xlabel("row width N (GELU: 4 x hidden size)" if family == "gelu" else "row width N (hidden size)")
    ax.grid(True, alpha=0.3)


def _draw_targets(ax, ours, pass_, x):
    """Each speedup target of the pass as a red dashed line over the x it is stated for (drawn
    whatever the run's dtype; points are judged only in bf16). Returns the thresholds."""
    out = []
    for t in speedup_targets(ours[0]["family"], pass_) if ours else ():
        xs = [r[x] for r in ours if t.applies({**r, "dtype": "bf16"})]
        if not xs:
            continue
        lo, hi = min(xs), max(xs)
        pad = (1.25, 1.25) if x == "seq_len" else (1.0, 1.0)
        ax.hlines(t.threshold, lo / pad[0] - (40 if x == "width" else 0), hi * pad[1] + (40 if x == "width" else 0),
                  **{k: v for k, v in TARGET_STYLE.items() if k != "ls"}, linestyles="--")
        out.append(t.threshold)
    return out


def plot_kernel_speedups(meta, rows, family, path):
    fam_rows = [r for r in rows if r["family"] == family]
    passes = [p for p in ("fwd", "bwd", "fwd+bwd") if any(r["pass"] == p for r in fam_rows)]
    if not passes:
        return None
    x = x_field(family)
    fig, axes = st.figure(2, len(passes), 5.4 * len(passes), 8.8)
    statuses, lines, missed_any = set(), {}, False
    for j, p in enumerate(passes):
        targets = speedup_targets(family, p)
        versus = targets[0].versus if targets else ("compile",)
        for i, refs in enumerate((versus, ("eager",))):
            ax = axes[i][j]
            label = REFERENCE_LABELS.get(refs, ", ".join(refs))
            ours = [r for r in fam_rows if r["pass"] == p and r["impl"] == "triton"]
            values = []
            if family in ROW_WISE:
                ours = per_width(ours)
                groups = sorted({r["batch"] * r["seq_len"] for r in ours})
                for g in groups:
                    series = st.speedup_series([r for r in ours if r["batch"] * r["seq_len"] == g], fam_rows, refs, x)
                    name = f"Triton, B*S = {g:,} rows"
                    color = IMPL_COLORS["triton"] if len(groups) == 1 else None
                    statuses |= st.draw_series(ax, series, color, **({"label": name} if i == 0 and j == 0 else {}))
                    lines[name] = color
                    values += [v for s in series if s[1] is not None for v in s[1:]]
                width_axis(ax, ours, family)
            else:
                for size in st.sizes_of(ours):
                    series = st.speedup_series([r for r in ours if r["size"] == size], fam_rows, refs, x)
                    statuses |= st.draw_series(ax, series, SIZE_COLORS.get(size))
                    lines[size] = SIZE_COLORS.get(size)
                    values += [v for s in series if s[1] is not None for v in s[1:]]
                st.seq_axis(ax, {r["seq_len"] for r in fam_rows})
            if i == 0:
                values += _draw_targets(ax, ours, p, x)
                missed = [(r[x], s) for r in ours if (th := threshold_at(r)) is not None
                          for s in [st.ratio(r, [g for g in fam_rows if g["impl"] in refs and g["pass"] == p
                                                  and _same_point(g, r)])] if s and s[0] < th]
                if missed:
                    missed_any = True
                    ax.plot([m[0] for m in missed], [m[1][0] for m in missed], "x", color="red", ms=11, mew=2.5)
            st.speedup_axis(ax, values, f"speedup over {label} (x, log scale)")
            ax.set_title(f"{st.PASS_TITLES[p]}: Triton vs {label}", fontsize=10)
            if not values:
                st.no_data(ax, f"no Triton/{label} pair measured")
    fig.legend(handles=_legend(lines, statuses, missed_any, family), loc="outside lower center", ncol=6,
               fontsize=8, frameon=False)
    what = "against the row width" if family in ROW_WISE else "against S, a line per GPT-2 size"
    fig.suptitle(st.title(meta, f"{st.FAMILY_TITLES[family]}: speedup of the Triton kernel {what}"), fontsize=11)
    return st.finish(fig, meta, path)


def _same_point(a, b):
    return row_key(a) == row_key(b)


def _legend(lines, statuses, missed, family):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c or IMPL_COLORS["triton"], marker="o", label=name) for name, c in lines.items()]
    handles += [Line2D([], [], **TARGET_STYLE, label="target (bench/targets.py)"), st.band_handle()]
    if missed:
        handles.append(Line2D([], [], ls="none", marker="x", color="red", ms=9, mew=2, label="misses its target"))
    return handles + st.status_handles(statuses)


# ---- achieved throughput vs measured limits ---------------------------------------------------


def plot_throughput(meta, rows, path):
    limits = meta.get("limits") or {}
    panels = [(f, p) for f in ROW_WISE for p in ("fwd", "bwd", "fwd+bwd")
              if any(r["family"] == f and r["pass"] == p for r in rows)]
    panels += [("attention", p) for p in ("fwd", "fwd+bwd")
               if any(r["family"] == "attention" and r["pass"] == p for r in rows)]
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = st.figure(nrows, cols, 5.6 * cols, 5.0 * nrows)
    flat = [a for row in axes for a in row]
    for ax, (f, p) in zip(flat, panels):
        sub = [r for r in rows if r["family"] == f and r["pass"] == p]
        if f in ROW_WISE:
            _bandwidth_panel(ax, f, p, per_width(sub), limits)
        else:
            _attention_panel(ax, p, sub, limits)
    for ax in flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(st.title(meta, "Achieved throughput against the measured limits (bars and bands: p20-p80)"),
                 fontsize=11)
    return st.finish(fig, meta, path)


def _bandwidth_panel(ax, family, pass_, sub, limits):
    widths = sorted({r["width"] for r in sub})
    impls = st.impls_of(sub)

    def value(width, impl):
        row = next((r for r in sub if r["width"] == width and r["impl"] == impl), None)
        return None if row is None or row["status"] == "unavailable" else st.spread(row, "gbps")

    size_of = {r["width"]: r["size"] for r in sub}
    statuses = st.bars(ax, widths, impls, value, ticklabels=[f"N={w}\n{size_of[w]}" for w in widths])
    bw = limits.get("copy_gbps")
    if bw:
        ax.axhline(bw, color="black", lw=1.2, label=f"measured copy {bw:,.4g} GB/s")
        for t in TARGETS:
            if t.family == family and t.pass_ == pass_ and t.metric == "frac_bw":
                ax.axhline(t.threshold * bw, **TARGET_STYLE, label=f"target {t.short}")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    ax.set_xlabel("row width (hidden size)")
    ax.set_ylabel("achieved bandwidth (GB/s)")
    ax.set_title(f"{st.FAMILY_TITLES[family]} {st.PASS_TITLES[pass_]}", fontsize=10)
    st.legend_below(ax, handles=ax.get_legend_handles_labels()[0] + st.status_handles(statuses))


def _attention_panel(ax, pass_, sub, limits):
    sizes = st.sizes_of(sub)
    size = sizes[0] if sizes else None
    impls = [i for i in st.impls_of(sub) if any(r["impl"] == i and r["status"] != "unavailable" for r in sub)]
    statuses = set()
    for k, impl in enumerate(impls):
        series = []
        for r in sorted((r for r in sub if r["size"] == size and r["impl"] == impl), key=lambda r: r["seq_len"]):
            v = st.spread(r, "tflops")
            x = st.dodge(r["seq_len"], k, len(impls))
            series.append((x, *v) if isinstance(v, tuple) else (x, None, v or "error"))
        statuses |= st.draw_series(ax, series, IMPL_COLORS.get(impl), label=impl, marker=st.MARKERS[k % 11],
                                   ls=st.DASHES[k % 4], lw=2.5 if impl == "triton" else 1.2, ms=4)
    mm = limits.get("matmul_tflops")
    if mm:
        ax.axhline(mm, color="black", lw=1.2, label=f"measured matmul {mm:,.4g} TFLOP/s")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    st.seq_axis(ax, {r["seq_len"] for r in sub})
    ax.set_ylabel("achieved TFLOP/s (causal FLOPs)")
    heads = sub[0]["heads"] if sub else "?"
    ax.set_title(f"attention {st.PASS_TITLES[pass_]}, {size} ({heads} heads)", fontsize=10)
    st.legend_below(ax, handles=ax.get_legend_handles_labels()[0] + st.status_handles(statuses))
