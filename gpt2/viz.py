"""Pictures of the model: attention heatmaps, the loss curves of a training run, and the
architecture diagram.

    python -m gpt2.viz attention --prompt "The cat sat on the mat" --layer 0 -o attn.png
    python -m gpt2.viz attention --prompt "..." --checkpoint path/to/gpt2 --layer 5 --head 1 -o h.png
    python -m gpt2.viz heads --checkpoint out/tiny --prompt "..." -o docs/figures/trained_heads.png
    python -m gpt2.viz tiles -o docs/figures/tiles.png     # the attention kernel's tiles
    python -m gpt2.viz architecture -o docs/architecture.png

``attention`` runs the prompt through the model inside ``gpt2.attention.record_attention`` (the
eager path, the only one that forms the (T, T) weights) and draws one head, or with no ``--head`` a grid of
all the heads of the layer, with the prompt's tokens as tick labels: row i is query token i,
column j key token j, and the colour is how much of token i's output comes from token j's value.
Without ``--checkpoint`` the weights are random (``--model`` picks the shape) and the title says
so: the pattern is then noise, but the plumbing is the same.

``architecture`` compiles docs/architecture.tex with pdflatex and rasterises it with pdftoppm,
the two programs of TeX Live and poppler it needs.
"""

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .attention import record_attention
from .config import SIZES, GPT2Config
from .model import GPT2

REPO = Path(__file__).resolve().parent.parent
ARCHITECTURE_TEX = REPO / "docs" / "architecture.tex"
RANDOM_WEIGHTS = "random weights (no checkpoint)"


# ---- attention --------------------------------------------------------------------------
def token_labels(tokenizer, ids):
    """One readable label per token: its text, with a leading space shown as '·' and newlines
    and tabs escaped, so that ' the' and 'the' stay distinct on the axis."""
    labels = []
    for i in ids:
        s = tokenizer.decode([int(i)])
        s = s.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        labels.append(s.replace(" ", "·") or "∅")
    return labels


@torch.no_grad()
def attention_weights(model, ids, layer):
    """Attention weights of one layer for a 1-D sequence of ids: (n_head, T, T) float32 on the CPU.

    Row i holds query i's weights over keys 0..T-1 (zeros above the diagonal: the causal mask)."""
    n_layer = model.config.n_layer
    if not 0 <= layer < n_layer:
        raise ValueError(f"layer must be in [0, {n_layer}), got {layer}")
    p = model.transformer.wte.weight
    idx = torch.as_tensor(list(ids), dtype=torch.long, device=p.device)[None]  # (1, T)
    with record_attention(model) as weights:
        model(idx)
    return weights[layer][0].float().cpu()  # (nh, T, T)


SCALES = ("linear", "row", "power")
SPACE_NOTE = "· marks a token's leading space (' the' is ·the); \\n a newline"
MASKED_NOTE = "hatched grey: masked (a later token, never attended to), not a weight of 0"


def _scaled(w, scale):
    """The values a heatmap shows, and the colour-bar label, for one head's (T, T) weights."""
    if scale == "row":  # each row over its own maximum, so that rows after the first are visible
        return w / w.amax(-1, keepdim=True).clamp_min(1e-30), "weight / row's max"
    return w, "attention weight" if scale == "linear" else "attention weight (power scale, γ = 0.5)"


def plot_attention(weights, labels, head=None, title=None, layer=None, scale="linear", values=None):
    """A matplotlib Figure of attention weights (n_head, T, T) with ``labels`` (T strings) as ticks.

    head: one head's heatmap with a colour bar; None draws every head in a grid.
    scale: "linear" (0..1), "row" (each row over its maximum: a late row spreads its weight
    over many keys and is dark on a linear scale) or "power" (γ = 0.5, which lifts small weights).
    values: write each weight in its cell; None does so when one head of at most 12 tokens is drawn.
    Masked cells (key after query) are hatched grey, apart from weights that are 0.
    """
    nh, T, T2 = weights.shape
    if T != T2 or len(labels) != T:
        raise ValueError(f"weights must be (n_head, T, T) with T = len(labels) = {len(labels)}, got {tuple(weights.shape)}")
    if head is not None and not 0 <= head < nh:
        raise ValueError(f"head must be in [0, {nh}), got {head}")
    where = f"layer {layer}, " if layer is not None else ""
    if head is not None:
        panels = [(None, weights[head])]
    else:
        panels = [(f"{where}head {h}", weights[h]) for h in range(nh)]
    return plot_heads(panels, labels, title=title, scale=scale, values=values)


def plot_heads(panels, labels, title=None, scale="linear", values=None, ncols=None):
    """Heatmaps of (panel title, (T, T) weights) pairs in a grid of ``ncols`` columns (a square-ish
    grid by default), sharing ``labels`` and one colour bar; one panel is drawn large. See
    ``plot_attention`` for ``scale`` and ``values``."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import Normalize, PowerNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    T = len(labels)
    single = len(panels) == 1
    values = (single and T <= 12) if values is None else values
    ncols = ncols or (1 if single else math.ceil(math.sqrt(len(panels))))
    nrows = math.ceil(len(panels) / ncols)
    cell = max(4.5 if single else 2.6, 0.32 * T + 1.2)  # inches per heatmap, so that labels fit
    if values:
        cell = max(cell, 0.55 * T + 1.2)
    fig = Figure(figsize=(ncols * cell + 1.2, nrows * cell + 1.1), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    masked = torch.ones(T, T, dtype=torch.bool).triu(1).numpy()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0) if scale == "power" else Normalize(0.0, 1.0)
    image, bar_label = None, None
    for n, ax in enumerate(axes.flat):
        if n >= len(panels):
            ax.set_axis_off()
            continue
        name, w = panels[n]
        w = w.float()
        shown, bar_label = _scaled(w, scale)
        image = ax.imshow(np.ma.masked_array(shown.numpy(), mask=masked), cmap=cmap, norm=norm,
                          interpolation="nearest")
        # Masked cells: grey with hatching, so that "cannot attend" never reads as "weight 0".
        for y, x in zip(*np.nonzero(masked)):
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#a0a0a0", lw=0))
        if values:
            for i in range(T):
                for j in range(i + 1):
                    ax.text(j, i, f"{float(w[i, j]):.2f}", ha="center", va="center", fontsize=7,
                            color="black" if norm(float(shown[i, j])) > 0.6 else "white")
        if name:
            ax.set_title(name, fontsize=9)
        small = 7 if T > 12 or not single else 9
        ax.set_xticks(range(T), labels, rotation=90, fontsize=small)
        ax.set_yticks(range(T), labels, fontsize=small)
        if n % ncols == 0:
            ax.set_ylabel("query (attends from)", fontsize=8)
        if n // ncols == nrows - 1 or single:
            ax.set_xlabel("key (attends to)", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label=bar_label)
    notes = [MASKED_NOTE] + ([SPACE_NOTE] if any("·" in lab for lab in labels) else [])
    if values and scale != "linear":
        notes.append("cell values are the weights themselves; colours follow the scale")
    fig.supxlabel("\n".join(notes), fontsize=7.5, color="#444444")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# What a head does, as a number: the mean weight its queries put on one key at a fixed place
# (queries 1..T-1; query 0 has only itself to look at). w: (..., T, T) -> (...).
PATTERNS = {
    "previous token": lambda w: w.diagonal(-1, -2, -1).mean(-1),  # query i on key i-1
    "first token": lambda w: w[..., 1:, 0].mean(-1),  # query i on key 0
    "itself": lambda w: w.diagonal(0, -2, -1)[..., 1:].mean(-1),  # query i on key i
}


@torch.no_grad()
def head_patterns(model, ids):
    """{pattern: (layer, head, score)}: for each pattern of PATTERNS, the head that shows it most,
    scored on ``ids`` (each score in [0, 1]: 1 is a head that does nothing else)."""
    p = model.transformer.wte.weight
    idx = torch.as_tensor(list(ids), dtype=torch.long, device=p.device)[None]
    with record_attention(model) as weights:
        model(idx)
    w = torch.stack([x[0].float().cpu() for x in weights])  # (L, nh, T, T)
    out = {}
    for name, score in PATTERNS.items():
        s = score(w)  # (L, nh)
        flat = int(s.argmax())
        out[name] = (flat // s.size(1), flat % s.size(1), float(s.flatten()[flat]))
    return out, w


def trained_heads_figure(checkpoint, prompt, scale="linear"):
    """The heads of a trained checkpoint that best show each pattern of PATTERNS, side by side,
    titled with their layer, head and score: the README's picture of what training learns."""
    from .tokenizer import Tokenizer

    tok = Tokenizer()
    ids = tok.encode(prompt)
    if len(ids) < 3:
        raise ValueError("the prompt needs at least 3 tokens for the patterns to mean anything")
    net, description = load_model(checkpoint)
    if len(ids) > net.config.block_size:
        raise ValueError(f"the prompt has {len(ids)} tokens; the model takes at most {net.config.block_size}")
    found, w = head_patterns(net, ids)
    panels = [(f"{name}: layer {layer}, head {head}\nmean weight {score:.2f}", w[layer, head])
              for name, (layer, head, score) in found.items()]
    title = f"Heads of a trained model, chosen by pattern\n{description}"
    return plot_heads(panels, token_labels(tok, ids), title=title, scale=scale, values=False, ncols=len(panels))


def load_model(checkpoint=None, model="gpt2", seed=0, **overrides):
    """(model, description): a checkpoint's model, or a random one of size ``model`` (with
    GPT2Config fields in ``overrides``) when ``checkpoint`` is None. In eval mode, on the CPU."""
    if checkpoint is not None:
        return GPT2.from_pretrained(checkpoint), f"checkpoint {Path(checkpoint).name or checkpoint}"
    torch.manual_seed(seed)
    config = GPT2Config.from_name(model, **{k: v for k, v in overrides.items() if v is not None})
    shape = f"{config.n_layer} layers, {config.n_head} heads, d_model {config.n_embd}"
    return GPT2(config).eval(), f"{RANDOM_WEIGHTS}; {shape}"


def attention_figure(prompt, layer, head=None, checkpoint=None, model="gpt2", scale="linear", values=None, **overrides):
    """Tokenize ``prompt``, run the model, and draw its attention: the CLI's whole job."""
    from .tokenizer import Tokenizer

    tok = Tokenizer()
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: there is nothing to attend to")
    net, description = load_model(checkpoint, model, **overrides)
    if len(ids) > net.config.block_size:
        raise ValueError(f"the prompt has {len(ids)} tokens; the model takes at most {net.config.block_size}")
    if head is not None and not 0 <= head < net.config.n_head:
        raise ValueError(f"head must be in [0, {net.config.n_head}), got {head}")
    w = attention_weights(net, ids, layer)
    what = f"head {head}" if head is not None else f"all {net.config.n_head} heads"
    title = f"Attention, layer {layer}, {what}\n{description}"
    return plot_attention(w, token_labels(tok, ids), head=head, title=title, layer=layer, scale=scale, values=values)


# ---- FlashAttention's tiles ------------------------------------------------------------
TILE_SKIPPED, TILE_FULL, TILE_MASKED = 0, 1, 2
TILE_NAMES = {TILE_SKIPPED: "skipped: never loaded (above the diagonal)",
              TILE_FULL: "full: every score kept, no mask computed",
              TILE_MASKED: "masked: straddles the diagonal (or the last keys)"}


def attention_tiles(seq_q, seq_k, block_m, block_n):
    """How the causal attention kernel treats each (query tile, key tile): a (ceil(seq_q /
    block_m), ceil(seq_k / block_n)) int tensor of TILE_SKIPPED, TILE_FULL or TILE_MASKED.

    The rule is the forward kernel's (``gpt2_kernels/attention.py``, ``_attn_fwd_kernel``): with the
    mask aligned to the end (query i sees key j iff j <= i + seq_k - seq_q), query tile m sweeps
    key tiles up to ``full_end`` without a mask, and up to ``end`` with one."""
    if seq_q > seq_k:
        raise ValueError(f"causal attention needs seq_q <= seq_k, got {seq_q} > {seq_k}")
    n_m, n_n = math.ceil(seq_q / block_m), math.ceil(seq_k / block_n)
    out = torch.full((n_m, n_n), TILE_SKIPPED, dtype=torch.int8)
    diag = seq_k - seq_q
    for m in range(n_m):
        start_m = m * block_m
        full_end = (start_m + diag + 1) // block_n * block_n
        end = min(start_m + block_m + diag, seq_k)
        for n in range(n_n):
            start_n = n * block_n
            if start_n < full_end:
                out[m, n] = TILE_FULL
            elif start_n < end:
                out[m, n] = TILE_MASKED
    return out


def plot_attention_tiles(seq_q=512, seq_k=512, block_m=128, block_n=64):
    """A matplotlib Figure of the score matrix cut into the kernel's tiles: one program per row of
    query tiles, its key tiles coloured by what the kernel does with them, the diagonal drawn."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tiles = attention_tiles(seq_q, seq_k, block_m, block_n)
    n_m, n_n = tiles.shape
    colours = ("#f0f0f0", "#4c9be8", "#f28e2b")
    fig = Figure(figsize=(8.6, 6.2), layout="constrained")
    ax = fig.subplots()
    ax.imshow(tiles.numpy(), cmap=ListedColormap(colours), vmin=0, vmax=2, interpolation="nearest",
              extent=(0, seq_k, seq_q, 0), aspect="equal")
    for n in range(n_n + 1):
        ax.axvline(min(n * block_n, seq_k), color="white", lw=1.5)
    for m in range(n_m + 1):
        ax.axhline(min(m * block_m, seq_q), color="white", lw=1.5)
    diag = seq_k - seq_q
    ax.plot([diag, seq_k], [0, seq_q], color="black", lw=1.5, label="diagonal: key j = query i (+ Sk - Sq)")
    for m in range(n_m):
        kinds = tiles[m].tolist()
        swept = sum(1 for k in kinds if k != TILE_SKIPPED)
        ax.text(seq_k + seq_k * 0.02, (m + 0.5) * block_m, f"program {m}: {swept} key tiles", va="center",
                fontsize=8, clip_on=False)
    ax.set_xlabel(f"keys j (tiles of BLOCK_N = {block_n})")
    ax.set_ylabel(f"queries i (tiles of BLOCK_M = {block_m})")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    counts = {k: int((tiles == k).sum()) for k in TILE_NAMES}
    handles = [Patch(color=colours[k], label=f"{TILE_NAMES[k]}: {counts[k]}") for k in TILE_NAMES]
    handles.append(ax.get_lines()[-1])
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=2)
    ax.set_title(f"Causal FlashAttention-2 forward, Sq = {seq_q}, Sk = {seq_k}: "
                 f"{counts[TILE_SKIPPED]} of {tiles.numel()} tiles skipped", fontsize=10)
    return fig


# ---- training ----------------------------------------------------------------------------
def plot_losses(rows, title):
    """A training run's loss curves from its log rows (``gpt2/run_folder.py``'s train_log.csv):
    the training loss each step (faint) and smoothed, and the validation loss."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"] != ""]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"] != ""]
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8)
        k = max(1, len(losses) // 50)  # a moving average over ~2% of the run
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", lw=1.6, label=f"train (mean of {k} steps)" if k > 1 else "train")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", color="tab:orange", lw=1.6, ms=4, label="validation")
        ax.annotate(f"{losses[-1]:.3f}", (steps[-1], losses[-1]), textcoords="offset points", xytext=(0, 8),
                    ha="right", color="tab:orange", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    return fig


# ---- architecture diagram ---------------------------------------------------------------
def render_architecture(out, tex=ARCHITECTURE_TEX, dpi=200):
    """Compile the TikZ diagram with pdflatex and rasterise page 1 to a PNG at ``dpi``."""
    missing = [p for p in ("pdflatex", "pdftoppm") if shutil.which(p) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found; install TeX Live (texlive-latex-base, "
            "texlive-pictures) and poppler-utils to render the diagram"
        )
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"-output-directory={tmp}", str(tex)],
            capture_output=True, text=True,
        )
        pdf = Path(tmp) / (Path(tex).stem + ".pdf")
        if run.returncode != 0 or not pdf.is_file():
            raise RuntimeError(f"pdflatex failed on {tex}:\n{run.stdout[-3000:]}")
        stem = Path(tmp) / "page"
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-singlefile", str(pdf), str(stem)], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stem.with_suffix(".png"), out)
    return out


# ---- command line -----------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gpt2.viz", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("attention", help="heatmap of one layer's attention weights")
    a.add_argument("--prompt", required=True, help="the text to tokenize and run")
    a.add_argument("--checkpoint", metavar="DIR", help="a Hugging Face GPT-2 checkpoint; random weights without it")
    a.add_argument("--layer", type=int, default=0, help="which block (0-based; default 0)")
    a.add_argument("--head", type=int, help="one head (0-based); all heads in a grid without it")
    a.add_argument("-o", "--output", required=True, help="the image to write (.png, .svg, .pdf)")
    a.add_argument("--scale", choices=SCALES, default="linear",
                   help="colours: linear 0..1, row (each row over its max) or power (gamma 0.5)")
    a.add_argument("--values", action=argparse.BooleanOptionalAction, default=None,
                   help="write the weights in the cells (default: for one head of at most 12 tokens)")
    g = a.add_argument_group("random model (without --checkpoint)")
    g.add_argument("--model", choices=tuple(SIZES), default="gpt2", help="the shape (default gpt2)")
    g.add_argument("--n-layer", type=int, help="override the number of blocks")
    g.add_argument("--n-head", type=int, help="override the number of heads")
    g.add_argument("--n-embd", type=int, help="override the width")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights")

    t = sub.add_parser("tiles", help="figure of the causal attention kernel's tiles")
    t.add_argument("-o", "--output", default=str(REPO / "docs" / "figures" / "tiles.png"))
    t.add_argument("--seq-q", type=int, default=512)
    t.add_argument("--seq-k", type=int, default=512)
    t.add_argument("--block-m", type=int, default=128)
    t.add_argument("--block-n", type=int, default=64)

    hp = sub.add_parser("heads", help="the heads of a trained checkpoint that best show each pattern")
    hp.add_argument("--checkpoint", metavar="DIR", required=True, help="a trained GPT-2 checkpoint")
    hp.add_argument("--prompt", required=True, help="the text to run (3 tokens or more)")
    hp.add_argument("--scale", choices=SCALES, default="linear")
    hp.add_argument("-o", "--output", default=str(REPO / "docs" / "figures" / "trained_heads.png"))

    d = sub.add_parser("architecture", help="render docs/architecture.tex to a PNG")
    d.add_argument("-o", "--output", default=str(REPO / "docs" / "architecture.png"))
    d.add_argument("--tex", default=str(ARCHITECTURE_TEX))
    d.add_argument("--dpi", type=int, default=200)

    args = p.parse_args(argv)
    try:
        if args.command == "attention":
            if args.checkpoint and any(v is not None for v in (args.n_layer, args.n_head, args.n_embd)):
                p.error("--n-layer/--n-head/--n-embd shape a random model; a checkpoint brings its own")
            fig = attention_figure(
                args.prompt, args.layer, args.head, args.checkpoint, args.model, args.scale, args.values,
                seed=args.seed, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
            )
            fig.savefig(args.output, dpi=150)
        elif args.command == "heads":
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            trained_heads_figure(args.checkpoint, args.prompt, args.scale).savefig(args.output, dpi=130)
        elif args.command == "tiles":
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            plot_attention_tiles(args.seq_q, args.seq_k, args.block_m, args.block_n).savefig(args.output, dpi=130)
        else:
            render_architecture(args.output, args.tex, args.dpi)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
