"""LayerNorm over the last dimension, y = (x - mean) / sqrt(var + eps) * weight + bias.

Shapes: x (B, S, N) with N = n_embd of each GPT-2 size (768, 1024, 1280, 1600); weight and
bias (N,). Passes: fwd (inference, no autograd), bwd (the backward alone, after one forward),
fwd+bwd (gradients of x, weight and bias).

Implementations:
    triton   ours: ``gpt2_kernels.layer_norm``
    eager    ``torch.nn.functional.layer_norm`` (what the model's "torch" path runs)
    compile  ``torch.compile`` of the eager op, compiled for each shape
    liger    Liger-Kernel's ``LigerLayerNormFunction`` when ``liger_kernel`` is installed
"""

from .impls import op_function
from .points import family_points
from .timing import make_inputs, time_kernel

FAMILY = "layer_norm"
OP = "layer_norm"
PASSES = ("fwd", "bwd", "fwd+bwd")
IMPLS = (("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"), ("liger", "peer"))
EPS = 1e-5


def points(sizes, seq_lens, dtype, info, smoke=False):
    return family_points(FAMILY, dict.fromkeys(PASSES, OP), sizes, seq_lens, dtype, info, smoke)


def _eager(x, w, b):
    import torch.nn.functional as F

    return F.layer_norm(x, w.shape, w, b, EPS)


def _reference(x, w, b):
    import torch.nn.functional as F

    return F.layer_norm(x.float(), w.shape, w.float(), b.float(), EPS)


IMPORTED = {
    "triton": ("gpt2_kernels", "layer_norm", lambda fn: lambda x, w, b: fn(x, w, b, EPS)),
    "liger": ("liger_kernel.ops.layer_norm", "LigerLayerNormFunction",
              lambda fn: lambda x, w, b: fn.apply(x, w, b, EPS)),
}


def inputs(point, ctx):
    """x (B, S, N), weight ~ 1 and bias ~ 0 (N,); dy (B, S, N)."""
    return make_inputs(point, ctx, (point.batch, point.seq_len, point.width), params=(1.0, 0.0))


def run(point, impl, ctx):
    f = op_function(impl, ctx, _eager, IMPORTED)
    return time_kernel(point, impl, ctx, f, *inputs(point, ctx), reference=_reference)
