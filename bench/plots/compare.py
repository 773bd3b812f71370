"""compare.png: the speedup of a new run over an old one, point by point (``bench.compare``)."""

from . import style as st
from .ops import ROW_WISE, width_axis, x_field

PASSES = ("fwd", "bwd", "fwd+bwd", "train", "generate")


def _series(rows, xpos):
    """(x, speedup, p20, p80) per pair, or (x, None, status) when either run has no time."""
    out, seen = [], set()
    for r in sorted(rows, key=xpos):
        x = xpos(r)
        if x in seen:  # row-wise ops: every S of a width is one shape
            continue
        seen.add(x)
        if r["speedup"]:
            out.append((x, r["speedup"], r["speedup_p20"], r["speedup_p80"]))
        else:
            out.append((x, None, r["new_status"] if r["new_status"] != "ok" else r["old_status"]))
    return out


def plot_compare(old_meta, new_meta, rows, path):
    panels = [(f, p) for f in ("attention", *ROW_WISE, "model") for p in PASSES
              if any(r["family"] == f and r["pass"] == p for r in rows)]
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = st.figure(nrows, cols, 5.6 * cols, 4.6 * nrows + 0.8)
    flat = [a for row in axes for a in row]
    statuses, sizes = set(), []
    for ax, (f, p) in zip(flat, panels):
        sub = [r for r in rows if r["family"] == f and r["pass"] == p]
        x = x_field(f) if p != "generate" else "size"
        order = st.sizes_of(sub)

        def xpos(r, x=x, order=order):
            return order.index(r["size"]) if x == "size" else r[x]

        values = []
        others = [r for r in sub if not r["impl"].startswith("triton") and r["speedup"]]  # no Triton kernel inside
        if others:
            k = {impl: i for i, impl in enumerate(sorted({r["impl"] for r in others}))}
            ax.plot([st.dodge(xpos(r), k[r["impl"]], len(k), log=x == "seq_len") for r in others],
                    [r["speedup"] for r in others], ".", color="#aaaaaa", ms=4, zorder=1)
            values += [r["speedup"] for r in others]
        for size in order:
            series = _series([r for r in sub if r["impl"] == "triton" and r["size"] == size], xpos)
            statuses |= st.draw_series(ax, series, st.SIZE_COLORS.get(size))
            values += [v for s in series if s[1] is not None for v in s[1:]]
            if size not in sizes:
                sizes.append(size)
        if x == "seq_len":
            st.seq_axis(ax, {r["seq_len"] for r in sub})
        elif x == "width":
            width_axis(ax, sub, f)
        else:
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, fontsize=8)
            ax.set_xlim(-0.6, len(order) - 0.4)
            ax.set_xlabel("GPT-2 size (batch 1)")
        st.speedup_axis(ax, values, "new vs old: old ms / new ms (x, log)")
        ax.set_title(f"{st.FAMILY_TITLES.get(f, 'GPT-2 end to end')}: {st.PASS_TITLES[p]}", fontsize=10)
    for ax in flat[len(panels):]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=st.SIZE_COLORS.get(s), marker="o", label=f"Triton, {s}") for s in sizes]
    handles += [Line2D([], [], ls="none", marker=".", color="#aaaaaa", label="baselines (their scatter is the noise)"),
                st.band_handle()]
    fig.legend(handles=handles + st.status_handles(statuses), loc="outside lower center", ncol=6, fontsize=8,
               frameon=False)
    what = (f"New run vs old run, point by point (above 1x: faster now)\n"
            f"old: {old_meta.get('date')}, commit {str(old_meta.get('git_commit'))[:12]} · "
            f"new: {new_meta.get('date')}, commit {str(new_meta.get('git_commit'))[:12]}")
    fig.suptitle(st.title(new_meta, what), fontsize=11)
    return st.finish(fig, new_meta, path)
