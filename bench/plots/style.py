"""What every plot shares: colours, titles, the log2 speedup axis centred on 1x, spread bands,
markers for points that were not measured, and legends placed outside the data."""

import math

from ..points import SIZES, SMOKE_LABEL, SMOKE_SIZE
from ..results import by_point, row_key

_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")
SIZE_COLORS = {**dict(zip(SIZES, _PALETTE)), SMOKE_SIZE: _PALETTE[0]}
IMPL_COLORS = {
    "triton": "#d62728", "eager": "#7f7f7f", "compile": "#1f77b4", "liger": "#8c564b", "flash_attn": "#e377c2",
    "sdpa-flash": "#2ca02c", "sdpa-efficient": "#17becf", "sdpa-cudnn": "#bcbd22", "sdpa-math": "#9467bd",
    "eager+sdpa": "#000000", "triton-attention": "#ff9896", "triton-layernorm": "#ffbb78",
    "triton-gelu": "#c5b0d5", "triton-loss": "#f7b6d2", "hf": "#8c564b",
    "hf-eager": "#bcbd22", "hf-sdpa": "#17becf", "hf-triton": "#e377c2",
}
# Lines that can coincide (memory of several implementations) differ in marker and dash too.
MARKERS = "osD^vP*Xh<>"
DASHES = ("-", "--", "-.", ":")
# A point with no value is drawn at the bottom of its panel with its status.
STATUS_MARKERS = {
    "oom": dict(marker="X", color="#000000", label="out of memory"),
    "skipped": dict(marker="s", color="#999999", label="skipped (not measured)", mfc="none"),
    "error": dict(marker="D", color="#d62728", label="error", mfc="none"),
    "unavailable": dict(marker="o", color="#999999", label="unavailable here", mfc="none"),
}
FAMILY_TITLES = {"attention": "Causal attention (D=64)", "layer_norm": "LayerNorm", "gelu": "GELU (tanh) + bias"}
PASS_TITLES = {"fwd": "forward", "bwd": "backward", "fwd+bwd": "forward + backward", "train": "training step",
               "generate": "generation"}
TARGET_STYLE = dict(color="red", ls="--", lw=1.5)
GiB = 2**30


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def figure(nrows, ncols, width, height):
    """A figure whose layout leaves room for legends outside the panels."""
    fig, axes = plt().subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained")
    return fig, axes


def title(meta, what):
    t = f"{what}\n{meta.get('device', '?')} · {meta.get('date', '?')} · {dtype(meta)}"
    if meta.get("smoke"):
        t += f"\n{SMOKE_LABEL.upper()}"
    return t


def dtype(meta):
    return (meta.get("settings") or {}).get("dtype", "")


def finish(fig, meta, path):
    versions = (f"torch {meta.get('torch')}, Triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
                f"commit {str(meta.get('git_commit', '?'))[:12]}")
    fig.text(0.995, 0.002, versions, ha="right", va="bottom", fontsize=7, color="#555555")
    if meta.get("smoke"):
        fig.text(0.5, 0.5, "SMOKE RUN\nnot performance", ha="center", va="center", fontsize=40,
                 color="red", alpha=0.12, rotation=20, transform=fig.transFigure)
    fig.savefig(path, dpi=110)
    plt().close(fig)
    return path


def ok(rows, **f):
    """The measured rows matching f (``pass_`` for the "pass" field)."""
    return [r for r in rows if r["status"] == "ok"
            and all(r.get("pass" if k == "pass_" else k) == v for k, v in f.items())]


def sizes_of(rows):
    present = {r["size"] for r in rows}
    return [s for s in (*SIZES, SMOKE_SIZE) if s in present]


def impls_of(rows):
    present = {r["impl"] for r in rows}
    return [i for i in IMPL_COLORS if i in present] + sorted(present - set(IMPL_COLORS))


# ---- speedups -----------------------------------------------------------------------------------


def ratio(ours, refs):
    """(speedup, low, high) of a row over the fastest reference row: median ref / median ours,
    and the spread from the 20th/80th percentiles of both (ref p20 / ours p80 .. ref p80 /
    ours p20). None when either side has no time."""
    refs = [r for r in refs if r["status"] == "ok" and r.get("ms")]
    if ours["status"] != "ok" or not ours.get("ms") or not refs:
        return None
    ref = min(refs, key=lambda r: r["ms"])
    y = ref["ms"] / ours["ms"]
    lo = (ref.get("ms_p20") or ref["ms"]) / (ours.get("ms_p80") or ours["ms"])
    hi = (ref.get("ms_p80") or ref["ms"]) / (ours.get("ms_p20") or ours["ms"])
    return y, min(lo, y), max(hi, y)


def speedup_series(rows, all_rows, versus, x="seq_len"):
    """For each row (our implementation at one point), sorted by x: (x, speedup, low, high),
    or (x, None, status) when it has no speedup (ours or every reference not measured)."""
    groups = by_point(all_rows)
    out = []
    for r in sorted(rows, key=lambda r: r[x]):
        refs = [g for g in groups[row_key(r)] if g["impl"] in versus]
        s = ratio(r, refs)
        if s is not None:
            out.append((r[x], *s))
        else:
            failed = r if r["status"] != "ok" else next((g for g in refs if g["status"] != "ok"), None)
            out.append((r[x], None, failed["status"] if failed else "unavailable"))
    return out


def draw_series(ax, series, color, label=None, **style):
    """A line through the measured points of (x, y, low, high) with the low-high band (p20-p80);
    a status marker at the bottom for each (x, None, status). Returns the statuses drawn."""
    pts = [p for p in series if p[1] is not None]
    if pts:
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], color=color, label=label, **{"marker": "o", "ms": 5, **style})
        if len(pts) > 1:
            ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=color, alpha=0.18, lw=0)
        else:
            x, y, lo, hi = pts[0]
            ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], color=color, capsize=3, lw=1)
    return mark_status(ax, [(p[0], p[2]) for p in series if p[1] is None], color)


def mark_status(ax, items, color=None):
    """Each (x, status) of a point with no value as a marker just above the panel's bottom edge,
    edged in the line's colour. Returns the statuses drawn."""
    from matplotlib.transforms import blended_transform_factory

    tr = blended_transform_factory(ax.transData, ax.transAxes)
    for x, status in items:
        st = {k: v for k, v in STATUS_MARKERS.get(status, STATUS_MARKERS["error"]).items() if k != "label"}
        ax.plot([x], [0.04], transform=tr, ls="none", ms=8, mew=1.5, clip_on=False,
                mec=color or st["color"], **st)
    return {status for _, status in items}


def status_handles(statuses):
    """Legend entries for the status markers in use."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="none", ms=8, mew=1.5, mec=STATUS_MARKERS[s]["color"],
                   **{k: v for k, v in STATUS_MARKERS[s].items()}) for s in STATUS_MARKERS if s in statuses]


def band_handle():
    from matplotlib.patches import Patch

    return Patch(color="#888888", alpha=0.3, label="p20-p80 of the timed runs")


NICE_TICKS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 1, 1.02, 1.05, 1.1, 1.2, 1.3, 1.5, 1.75, 2, 2.25)


def _thin(ticks, gap):
    """The ticks, outward from 1x, each at least ``gap`` (in log2) from the last one kept."""
    import bisect

    i = bisect.bisect_left(ticks, 1)
    kept = [1.0]
    for side in (ticks[i + 1:], ticks[:i][::-1]):
        last = 0.0
        for t in side:
            if abs(math.log2(t) - last) >= gap:
                kept.append(t)
                last = math.log2(t)
    return sorted(kept)


def fmt_x(v):
    """0.95x, 1.1x, 4x, 1,024x, 1/8x, 1/1,024x."""
    if v < 0.5 and abs(1 / v - round(1 / v)) < 1e-6:
        return f"1/{round(1 / v):,}x"
    return f"{v:,.0f}x" if v >= 10 else f"{v:.3g}x"


def speedup_axis(ax, values, label):
    """A log2 speedup axis centred on 1x, wide enough for every value given: a 0.001x smoke
    value and 1.07x vs 1.12x are both readable."""
    from matplotlib.ticker import NullLocator

    logs = [abs(math.log2(v)) for v in values if v and v > 0 and math.isfinite(v)]
    m = max(0.1, 1.15 * max(logs, default=0.1))
    ax.set_yscale("log", base=2)
    ax.set_ylim(2**-m, 2**m)
    if m <= 1.2:
        ticks = _thin([t for t in NICE_TICKS if 2**-m <= t <= 2**m], 2 * m / 9)
    else:
        k = max(1, math.ceil(2 * m / 8))
        ticks = [2.0**i for i in range(-int(m) // k * k, int(m) + 1, k)]
    ticks = [t for t in ticks if 2**-m <= t <= 2**m]
    ax.set_yticks(ticks)
    ax.set_yticklabels([fmt_x(t) for t in ticks], fontsize=8)
    ax.yaxis.set_minor_locator(NullLocator())
    ax.axhline(1.0, color="#444444", lw=0.9)
    ax.set_ylabel(label)


def dodge(x, k, n, log=True):
    """x shifted for line k of n, so that lines with the same values stay visible side by side."""
    off = (k - (n - 1) / 2) * 0.05
    return x * 2**off if log else x + off


def seq_axis(ax, seqs):
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ticks = sorted(seqs)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    if ticks:
        ax.set_xlim(ticks[0] / 1.4, ticks[-1] * 1.4)
    ax.set_xlabel("sequence length S (tokens)")
    ax.grid(True, alpha=0.3)


def legend_below(ax, ncol=3, handles=None):
    """A legend under the panel: it never covers the data."""
    kw = dict(handles=handles) if handles is not None else {}
    if handles is not None or ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, fontsize=7, frameon=False, **kw)


def no_data(ax, text="no measurement"):
    ax.text(0.5, 0.75, text, ha="center", va="center", transform=ax.transAxes, color="#666666",
            bbox=dict(facecolor="white", edgecolor="#cccccc"))


def bar_x(group, k, n):
    """The x of bar k of n in a group; the n bars span 0.8."""
    return group + (k - (n - 1) / 2) * 0.8 / n


def bars(ax, groups, impls, value, label=str, ticklabels=None, base=0.0):
    """Grouped bars: a group per entry of ``groups``, a bar per implementation. value(group,
    impl) is (y, low, high), or a status string for a point not measured, or None (no bar).
    Bars start at ``base`` (1 on a speedup axis: up is faster, down slower); the low-high spread
    is an error bar. Returns the statuses drawn."""
    statuses = set()
    for k, impl in enumerate(impls):
        xs, ys, errs = [], [], []
        for gi, group in enumerate(groups):
            v = value(group, impl)
            if isinstance(v, str):
                statuses |= mark_status(ax, [(bar_x(gi, k, len(impls)), v)], IMPL_COLORS.get(impl))
            elif v is not None:
                xs.append(bar_x(gi, k, len(impls)))
                ys.append(v[0])
                # max(0, ...): a spread of one run gives low == y == high up to rounding
                errs.append((max(0.0, v[0] - v[1]), max(0.0, v[2] - v[0])))
        if xs:
            ax.bar(xs, [y - base for y in ys], 0.8 / len(impls), bottom=base, color=IMPL_COLORS.get(impl),
                   label=label(impl))
            ax.errorbar(xs, ys, yerr=list(zip(*errs)), ls="none", color="#333333", lw=0.8, capsize=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(ticklabels or groups, fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)
    return statuses


def spread(row, field, k=1.0):
    """(value, low, high) of a rate field of a row (GB/s, TFLOP/s, ...) times k, its spread from
    the time's p80 and p20; the row's status when it has no value."""
    if row["status"] != "ok" or not row.get(field):
        return row["status"] if row["status"] != "ok" else None
    v, ms = row[field] * k, row["ms"]
    return v, v * ms / (row.get("ms_p80") or ms), v * ms / (row.get("ms_p20") or ms)
