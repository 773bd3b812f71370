"""Residual add + LayerNorm: h = x + residual, y = LayerNorm(h), both returned (a block's seam).

Shapes: x, residual (B, S, N) with N = n_embd of each GPT-2 size; weight and bias (N,).
Passes: fwd, bwd, fwd+bwd (gradients reach x and residual through y and h: the timed
function returns y + h, whose backward sends the output gradient down both, as a block's
stream does).

Implementations:
    triton   ours: ``gpt2_kernels.add_layer_norm`` (one pass: reads x and residual, writes h and y)
    eager    ``h = x + residual; F.layer_norm(h, ...)`` (what the model's "torch" path runs)
    compile  ``torch.compile`` of the eager pair, compiled for each shape
    liger    Liger-Kernel's LayerNorm after an eager add, when ``liger_kernel`` is installed
"""

from .impls import op_function
from .points import op_points, without_compile_in_smoke
from .timing import make_inputs, time_kernel

FAMILY = "add_layer_norm"
OP = "add_layer_norm"
PASSES = ("fwd", "bwd", "fwd+bwd")
IMPLS = (("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"), ("liger", "peer"))
EPS = 1e-5


def impls_for(point):
    return without_compile_in_smoke(IMPLS, point)


def points(sizes, seq_lens, dtype, info, smoke=False):
    return op_points(FAMILY, OP, PASSES, sizes, seq_lens, dtype, info, smoke)


def _eager(x, res, w, b):
    import torch.nn.functional as F

    h = x + res
    return F.layer_norm(h, w.shape, w, b, EPS) + h


def _reference(x, res, w, b):
    import torch.nn.functional as F

    h = (x + res).float()  # rounded as the dtype's add rounds it, then fp32
    return F.layer_norm(h, w.shape, w.float(), b.float(), EPS) + h


def _ours(fn):
    def f(x, res, w, b):
        y, h = fn(x, res, w, b, EPS)
        return y + h

    return f


def _liger(fn):
    return lambda x, res, w, b: (lambda h: fn.apply(h, w, b, EPS) + h)(x + res)


IMPORTED = {
    "triton": ("gpt2_kernels", "add_layer_norm", _ours),
    "liger": ("liger_kernel.ops.layer_norm", "LigerLayerNormFunction", _liger),
}


def inputs(point, ctx):
    """x, residual (B, S, N), weight ~ 1 and bias ~ 0 (N,); dy (B, S, N)."""
    return make_inputs(point, ctx, (point.batch, point.seq_len, point.width), n=2, params=(1.0, 0.0))


def run(point, impl, ctx):
    f = op_function(impl, ctx, _eager, IMPORTED)
    return time_kernel(point, impl, ctx, f, *inputs(point, ctx), reference=_reference)
