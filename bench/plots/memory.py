"""memory.png of ``python -m bench --memory``: peak memory against S, a column per GPT-2 size, the
training step above the forward pass, a line per configuration, and the GPUs' capacities."""

from . import style as st
from .end_to_end import _memory_lines

CAPACITY_STYLE = dict(color="red", ls=":", lw=1.2)


def plot_memory_sweep(data, path):
    rows, meta = data["rows"], data["meta"]
    sizes = st.sizes_of(rows)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = st.figure(2, max(1, len(sizes)), max(9.0, 4.6 * len(sizes) + 1.5), 10)
    for j, size in enumerate(sizes):
        for i, pass_ in enumerate(("train", "fwd")):
            ax = axes[i][j]
            sub = [r for r in rows if r["size"] == size and r["pass"] == pass_]
            _memory_lines(ax, sub, {impl: impl for impl in impls}, f"{size}: {st.PASS_TITLES[pass_]}", by_impl=True)
            if i or j:  # one legend, under the first panel
                ax.get_legend().remove()
            if pass_ == "train":
                for name, capacity in meta["settings"]["capacities"].items():
                    ax.axhline(capacity / st.GiB, **CAPACITY_STYLE)
                    ax.annotate(f"{name} ({capacity / st.GiB:.1f} GiB)", (0.02, capacity / st.GiB), fontsize=7,
                                color="red", xycoords=("axes fraction", "data"), va="bottom")
    fig.suptitle(st.title(meta, "Peak memory, counted on the CPU (not measured): weights, gradients, AdamW state "
                                f"and activations\nbatch {meta['settings']['batch']}, a line per configuration"),
                 fontsize=11)
    return st.finish(fig, meta, path)
