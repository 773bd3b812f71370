"""Pictures of the model: attention heatmaps, and the architecture diagram.

    python -m gpt2.viz attention --prompt "The cat sat on the mat" --layer 0 -o attn.png
    python -m gpt2.viz attention --prompt "..." --checkpoint path/to/gpt2 --layer 5 --head 1 -o h.png
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


def plot_attention(weights, labels, head=None, title=None, layer=None):
    """A matplotlib Figure of attention weights (n_head, T, T) with ``labels`` (T strings) as ticks.

    head: one head's heatmap with a colour bar; None draws every head in a grid.
    """
    from matplotlib.figure import Figure

    nh, T, T2 = weights.shape
    if T != T2 or len(labels) != T:
        raise ValueError(f"weights must be (n_head, T, T) with T = len(labels) = {len(labels)}, got {tuple(weights.shape)}")
    if head is not None and not 0 <= head < nh:
        raise ValueError(f"head must be in [0, {nh}), got {head}")
    heads = [head] if head is not None else list(range(nh))
    ncols = 1 if head is not None else math.ceil(math.sqrt(nh))
    nrows = math.ceil(len(heads) / ncols)
    cell = max(2.6 if head is None else 4.5, 0.32 * T + 1.2)  # inches per heatmap, so that labels fit
    fig = Figure(figsize=(ncols * cell + 1.2, nrows * cell + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    where = f"layer {layer}, " if layer is not None else ""
    image = None
    for n, ax in enumerate(axes.flat):
        if n >= len(heads):
            ax.set_axis_off()
            continue
        h = heads[n]
        image = ax.imshow(weights[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        if head is None:
            ax.set_title(f"{where}head {h}", fontsize=9)
        small = 7 if T > 12 or head is None else 9
        ax.set_xticks(range(T), labels, rotation=90, fontsize=small)
        ax.set_yticks(range(T), labels, fontsize=small)
        if n % ncols == 0:
            ax.set_ylabel("query (attends from)", fontsize=8)
        if n // ncols == nrows - 1 or head is not None:
            ax.set_xlabel("key (attends to)", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def load_model(checkpoint=None, model="gpt2", seed=0, **overrides):
    """(model, description): a checkpoint's model, or a random one of size ``model`` (with
    GPT2Config fields in ``overrides``) when ``checkpoint`` is None. In eval mode, on the CPU."""
    if checkpoint is not None:
        return GPT2.from_pretrained(checkpoint), f"checkpoint {Path(checkpoint).name or checkpoint}"
    torch.manual_seed(seed)
    config = GPT2Config.from_name(model, **{k: v for k, v in overrides.items() if v is not None})
    shape = f"{config.n_layer} layers, {config.n_head} heads, d_model {config.n_embd}"
    return GPT2(config).eval(), f"{RANDOM_WEIGHTS}; {shape}"


def attention_figure(prompt, layer, head=None, checkpoint=None, model="gpt2", **overrides):
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
    return plot_attention(w, token_labels(tok, ids), head=head, title=title, layer=layer)


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
    g = a.add_argument_group("random model (without --checkpoint)")
    g.add_argument("--model", choices=tuple(SIZES), default="gpt2", help="the shape (default gpt2)")
    g.add_argument("--n-layer", type=int, help="override the number of blocks")
    g.add_argument("--n-head", type=int, help="override the number of heads")
    g.add_argument("--n-embd", type=int, help="override the width")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights")

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
                args.prompt, args.layer, args.head, args.checkpoint, args.model,
                seed=args.seed, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
            )
            fig.savefig(args.output, dpi=150)
        else:
            render_architecture(args.output, args.tex, args.dpi)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
