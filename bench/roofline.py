"""The roofline of a GPT-2 step: where each op sits against the ridge points of A100, H100, H200.

    python -m bench.roofline                                  # docs/figures/roofline.png, theory only
    python -m bench.roofline --results bench/results/<device> # and the measured points of a GPU run
    python -m bench.roofline --table                          # the ridge-point table of theory.md §12

An op's arithmetic intensity I = FLOPs / bytes moved to and from HBM is a property of the op and
its shape, not of the GPU, so every point here is computed from the counts below with no GPU.
A GPU's roof is min(peak FLOP/s, I x bandwidth); the ridge point, peak / bandwidth, separates
memory-bound ops (left of it) from compute-bound ones. The peaks are the vendor's spec-sheet
numbers (dense BF16 tensor-core math, no sparsity; HBM bandwidth of the SXM parts), quoted,
not measured. With ``--results``, each measured Triton row of a GPU run becomes a point at its
op's intensity and its achieved TFLOP/s, so the distance to the roof is visible.

The counts (bf16, s = 2 bytes; a GPT-2 small training step's forward at B*T = 8,192 tokens):
- a linear layer, M rows, K in, N out: 2*M*N*K FLOPs over s*(M*K + K*N + M*N) bytes;
- fused causal attention (FlashAttention), per (batch, head) of head size D: 2*S*S*D FLOPs
  (4*S*S*D halved by the mask) over the minimum traffic s*4*S*D (read Q, K, V, write O) plus
  the fp32 log-sum-exp, as in ``bench.points``;
- eager attention: the same FLOPs, plus about 8 passes over the S x S scores in memory;
- one-token decode against S cached keys: 4*S*D FLOPs over s*2*S*D bytes of cache;
- LayerNorm: 8 FLOPs an element (mean 1, variance 3, normalise 2, scale and shift 2) over
  ``bench.points.layer_norm_bytes``; GELU with bias: 11 FLOPs an element (bias 1, u^3 and the
  polynomial 4, the sigmoid's exp, add and divide 4 with |.| and the sign, the product 1) over
  ``bench.points.gelu_bytes``; the loss: 4 FLOPs a logit (max, subtract, exp, sum) over one read
  of the (B*T, V) logits.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .points import attention_bytes, attention_flops, gelu_bytes, layer_norm_bytes, model_config

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "figures" / "roofline.png"


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_tflops: float  # dense BF16 tensor-core peak, spec sheet
    hbm_tbps: float  # HBM bandwidth, spec sheet
    source: str

    @property
    def ridge(self):
        """FLOP per byte at which the roof turns from bandwidth to compute."""
        return self.bf16_tflops / self.hbm_tbps

    def roof(self, intensity):
        """Attainable TFLOP/s at ``intensity`` FLOP/byte."""
        return min(self.bf16_tflops, intensity * self.hbm_tbps)


# Spec-sheet peaks (NVIDIA data sheets; the BF16 figures there with sparsity are twice these).
GPUS = (
    GPU("A100 SXM 80 GB", 312.0, 2.039, "NVIDIA A100 Tensor Core GPU data sheet"),
    GPU("H100 SXM", 989.0, 3.35, "NVIDIA H100 Tensor Core GPU data sheet"),
    GPU("H200 SXM", 989.0, 4.8, "NVIDIA H200 Tensor Core GPU data sheet"),
)

LN_FLOPS_PER_ELEMENT = 8
GELU_FLOPS_PER_ELEMENT = 11
LOSS_FLOPS_PER_LOGIT = 4
EAGER_ATTENTION_PASSES = 8  # QK^T write; scale, mask, softmax read+write each; PV read


@dataclass(frozen=True)
class Op:
    name: str
    kind: str  # "matmul", "attention", "rowwise", "loss", "decode"
    flops: float
    bytes: float

    @property
    def intensity(self):
        return self.flops / self.bytes


def linear(name, M, K, N, s=2):
    return Op(name, "matmul", 2 * M * N * K, s * (M * K + K * N + M * N))


def gpt2_step_ops(size="gpt2", tokens=8192, seq_lens=(256, 1024, 4096), s=2):
    """The ops of one forward pass of ``size`` over ``tokens`` tokens (B = tokens / S), as Ops."""
    cfg = model_config(size)
    d, V, H, D = cfg.n_embd, cfg.vocab_size, cfg.n_head, cfg.head_size
    M = tokens
    ops = [
        linear("c_attn (d→3d)", M, d, 3 * d, s),
        linear("attn.c_proj (d→d)", M, d, d, s),
        linear("mlp.c_fc (d→4d)", M, d, 4 * d, s),
        linear("mlp.c_proj (4d→d)", M, 4 * d, d, s),
        linear("lm_head (d→V)", M, d, V, s),
    ]
    for S in seq_lens:
        B = max(1, tokens // S)
        ops.append(Op(f"attention, fused, S={S}", "attention", attention_flops(B, H, S, S, D, "fwd"),
                      attention_bytes(B, H, S, S, D, s, "fwd")))
    S = 1024
    B = max(1, tokens // S)
    ops.append(Op(f"attention, eager, S={S}", "attention", attention_flops(B, H, S, S, D, "fwd"),
                  attention_bytes(B, H, S, S, D, s, "fwd") + EAGER_ATTENTION_PASSES * B * H * S * S * s))
    ops.append(Op(f"attention, decode, {S} cached", "decode", 4 * H * S * D, 2 * H * S * D * s))
    ops.append(linear("matmul, decode (1 token, d→4d)", 1, d, 4 * d, s))
    ops.append(Op("LayerNorm", "rowwise", LN_FLOPS_PER_ELEMENT * M * d, layer_norm_bytes(M, d, s, "fwd")))
    ops.append(Op("GELU + bias", "rowwise", GELU_FLOPS_PER_ELEMENT * M * 4 * d, gelu_bytes(M, 4 * d, s, "fwd")))
    ops.append(Op("loss (cross-entropy)", "loss", LOSS_FLOPS_PER_LOGIT * M * V, M * V * s))
    return ops


# Per-element FLOPs of the row-wise families, for measured rows that carry bytes but no FLOPs.
_ROWWISE_FLOPS = {"layer_norm": LN_FLOPS_PER_ELEMENT, "gelu": GELU_FLOPS_PER_ELEMENT}


def measured_points(rows):
    """(label, intensity, achieved TFLOP/s) of each measured forward row of ours in a results file.

    Rows with FLOPs (attention) give their own intensity; LayerNorm and GELU rows carry only
    bytes, so their FLOPs are the per-element counts above times the elements the bytes imply."""
    out = []
    for r in rows:
        if r["status"] != "ok" or r["role"] != "ours" or r["pass"] != "fwd" or not r.get("ms") or not r.get("bytes"):
            continue
        flops = r.get("flops")
        if not flops and r["family"] in _ROWWISE_FLOPS:
            elem = 4 if r["dtype"] == "fp32" else 2
            flops = _ROWWISE_FLOPS[r["family"]] * r["bytes"] / (2 * elem)
        if not flops:
            continue
        tflops = flops / (r["ms"] * 1e-3) / 1e12
        label = f"{r['family']} {r['size']} S={r['seq_len']}"
        out.append((label, flops / r["bytes"], tflops))
    return out


def ridge_table():
    """The Markdown table of theory.md §12: each GPU's peaks and ridge point."""
    lines = ["| GPU | Peak BF16 (dense) | HBM bandwidth | Ridge point |", "| --- | ---: | ---: | ---: |"]
    for g in GPUS:
        lines.append(f"| {g.name} | {g.bf16_tflops:g} TFLOP/s | {g.hbm_tbps:g} TB/s | ≈ {g.ridge:.0f} FLOP/byte |")
    return "\n".join(lines) + "\n"


def ops_table(ops=None):
    """The Markdown table of theory.md §12: each op's intensity and what bounds it on each GPU."""
    ops = gpt2_step_ops() if ops is None else ops
    head = "| Op (gpt2, bf16, 8,192 tokens) | FLOP/byte | " + " | ".join(g.name.split()[0] for g in GPUS) + " |"
    lines = [head, "| --- | ---: |" + " :---: |" * len(GPUS)]
    for op in ops:
        bound = ["compute" if op.intensity >= g.ridge else "memory" for g in GPUS]
        lines.append(f"| {op.name} | {op.intensity:,.1f} | " + " | ".join(bound) + " |")
    return "\n".join(lines) + "\n"


_KIND_STYLE = {
    "matmul": dict(marker="s", color="#1f77b4"), "attention": dict(marker="o", color="#d62728"),
    "rowwise": dict(marker="D", color="#2ca02c"), "loss": dict(marker="^", color="#9467bd"),
    "decode": dict(marker="v", color="#ff7f0e"),
}


def plot_roofline(ops=None, measured=None, device=None):
    """A log-log matplotlib Figure: the three roofs, their ridge points, each op on the H200's
    roof at its intensity, and, if given, ``measured`` (label, intensity, TFLOP/s) points."""
    from matplotlib.figure import Figure

    ops = gpt2_step_ops() if ops is None else ops
    fig = Figure(figsize=(10, 6.4), layout="constrained")
    ax = fig.subplots()
    lo = min(0.5, min(o.intensity for o in ops) / 2)
    hi = max(4000.0, max(o.intensity for o in ops) * 2)
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for g, ls in zip(GPUS, ("-", "--", "-.")):
        ax.plot(xs, [g.roof(x) for x in xs], color="black", ls=ls, lw=1.3,
                label=f"{g.name}: {g.bf16_tflops:g} TFLOP/s, {g.hbm_tbps:g} TB/s, ridge {g.ridge:.0f}")
        ax.axvline(g.ridge, color="grey", ls=ls, lw=0.7)
        ax.annotate(f"{g.name.split()[0]} ridge", (g.ridge, g.bf16_tflops), textcoords="offset points",
                    xytext=(3, -12 - 10 * GPUS.index(g)), fontsize=7, color="grey")
    # Each op is a numbered marker on the H200's roof; the numbers are keyed in a list in the
    # empty lower right, which stays readable where the points crowd (the row-wise ops all sit
    # near 2 FLOP/byte, the matmuls near 500).
    top = GPUS[-1]
    key, seen = [], []
    for n, op in enumerate(sorted(ops, key=lambda o: o.intensity), 1):
        y = top.roof(op.intensity)
        ax.plot([op.intensity], [y], ls="none", ms=7, mec="black", mew=0.5, **_KIND_STYLE[op.kind])
        crowd = sum(1 for x in seen if abs(math.log10(op.intensity / x)) < 0.12)
        seen.append(op.intensity)
        ax.annotate(str(n), (op.intensity, y), textcoords="offset points", xytext=(0, 7 + 9 * crowd),
                    fontsize=7.5, ha="center", va="bottom", fontweight="bold")
        key.append(f"{n:>2}  {op.name}: {op.intensity:,.1f}")
    ax.text(0.985, 0.03, "\n".join(["    op: FLOP/byte", *key]), transform=ax.transAxes, ha="right", va="bottom",
            fontsize=7.5, multialignment="left",
            family="monospace", bbox=dict(boxstyle="round", fc="white", ec="#cccccc"))
    for kind, style in _KIND_STYLE.items():
        ax.plot([], [], ls="none", ms=7, mec="black", mew=0.5, label=f"{kind} (on the H200 roof)", **style)
    if measured:
        xs_m, ys_m = [m[1] for m in measured], [m[2] for m in measured]
        ax.plot(xs_m, ys_m, ls="none", marker="*", ms=10, color="#e377c2", mec="black", mew=0.4,
                label=f"measured, ours ({device or 'GPU run'})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0.3, 4000)
    ax.set_xlabel("arithmetic intensity (FLOP per byte of HBM traffic)")
    ax.set_ylabel("attainable TFLOP/s (BF16)")
    what = "theory + measured points" if measured else "theory only: no GPU was used"
    ax.set_title(f"Roofline of a GPT-2 (124M) step, bf16, 8,192 tokens: {what}\n"
                 "peaks are spec-sheet numbers (dense BF16, SXM), not measurements", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left")
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", default=str(DEFAULT_OUT), help="the image to write")
    p.add_argument("--results", metavar="DIR", help="a GPU run's results folder (bench/results/<device>)")
    p.add_argument("--table", action="store_true", help="print theory.md's tables (Markdown) and exit")
    args = p.parse_args(argv)
    if args.table:
        sys.stdout.write(ridge_table() + "\n" + ops_table())
        return 0
    measured, device = None, None
    if args.results:
        from .results import load_results

        try:
            meta, rows = load_results(args.results)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        measured, device = measured_points(rows), meta.get("device")
        if not measured:
            print(f"error: {args.results} has no measured forward rows of ours", file=sys.stderr)
            return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_roofline(measured=measured, device=device).savefig(out, dpi=130)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
