"""GPT-2's GELU (tanh form) of x + bias, the MLP's activation with c_fc's bias fused in:

    y = 0.5 * u * (1 + tanh(sqrt(2/pi) * (u + 0.044715 u^3))),   u = x + bias

Shapes: x (B, S, 4*n_embd) (3072 ... 6400 wide), bias (4*n_embd,). Passes: fwd, fwd+bwd
(gradients of x and bias).

Implementations:
    triton   ours: ``gpt2_kernels.gelu(x, bias)``
    eager    ``F.gelu(x + bias, approximate="tanh")``: two kernels, the textbook op
    compile  ``torch.compile`` of the eager op (fuses the add into the GELU)
Liger-Kernel has gated GELU (GEGLU) and SwiGLU but no GELU with bias, so it has no line here.
"""

from .impls import op_function
from .points import family_points
from .timing import make_inputs, time_kernel

FAMILY = "gelu"
OP = "gelu_bias"
PASSES = ("fwd", "fwd+bwd")
IMPLS = (("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"))


def points(sizes, seq_lens, dtype, info, smoke=False):
    return family_points(FAMILY, dict.fromkeys(PASSES, OP), sizes, seq_lens, dtype, info, smoke,
                         width=lambda cfg: 4 * cfg.n_embd)


def _eager(x, bias):
    import torch.nn.functional as F

    return F.gelu(x + bias, approximate="tanh")


def _reference(x, bias):
    import torch.nn.functional as F

    return F.gelu(x.float() + bias.float(), approximate="tanh")


IMPORTED = {"triton": ("gpt2_kernels", "gelu", lambda gelu: gelu)}


def inputs(point, ctx):
    """x (B, S, 4*n_embd), bias ~ 0 (4*n_embd,); dy (B, S, 4*n_embd)."""
    return make_inputs(point, ctx, (point.batch, point.seq_len, point.width), params=(0.0,))


def run(point, impl, ctx):
    f = op_function(impl, ctx, _eager, IMPORTED)
    return time_kernel(point, impl, ctx, f, *inputs(point, ctx), reference=_reference)
