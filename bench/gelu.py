"""GPT-2's GELU (tanh form) of x + bias, the MLP's activation with c_fc's bias fused in:

    y = 0.5 * u * (1 + tanh(sqrt(2/pi) * (u + 0.044715 u^3))),   u = x + bias

Shapes: x (B, S, 4*n_embd) (3072 ... 6400 wide), bias (4*n_embd,). Passes: fwd, fwd+bwd
(gradients of x and bias).

Implementations:
    triton   ours: ``kernels.gelu(x, bias)``
    eager    ``F.gelu(x + bias, approximate="tanh")``: two kernels, the textbook op
    compile  ``torch.compile`` of the eager op (fuses the add into the GELU)
Liger-Kernel has gated GELU (GEGLU) and SwiGLU but no GELU with bias, so it has no line here.
"""

from .common import (
    Point, Unavailable, batch_for, compiled, model_config, time_kernel, torch_dtype,
)

FAMILY = "gelu"
OP = "gelu_bias"
PASSES = ("fwd", "fwd+bwd")
IMPLS = (("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"))


def points(sizes, seq_lens, dtype, info, smoke=False):
    out = []
    for size in sizes:
        cfg = model_config(size)
        width = 4 * cfg.n_embd
        for S in seq_lens:
            B = batch_for(FAMILY, S, width=width, heads=cfg.n_head, dtype=dtype, device=info, smoke=smoke)
            for p in PASSES:
                out.append(Point(FAMILY, OP, p, size, width, cfg.n_head, S, B, dtype))
    return out


def _eager(x, bias):
    import torch.nn.functional as F

    return F.gelu(x + bias, approximate="tanh")


def _reference(x, bias):
    import torch.nn.functional as F

    return F.gelu(x.float() + bias.float(), approximate="tanh")


def function(impl, ctx):
    if impl == "eager":
        return _eager
    if impl == "compile":
        return compiled(_eager, ctx)
    if impl == "triton":
        try:
            from kernels.gelu import gelu  # the function, from the op's own module

            return gelu
        except ImportError as e:
            raise Unavailable(f"kernels.gelu not importable: {e}") from e
    raise ValueError(f"unknown {FAMILY} impl {impl!r}")


def inputs(point, ctx):
    import torch

    dt = torch_dtype(point.dtype)
    grad = point.pass_ != "fwd"
    shape = (point.batch, point.seq_len, point.width)
    x = torch.randn(shape, device=ctx.device, dtype=dt, requires_grad=grad)
    bias = (0.1 * torch.randn(point.width, device=ctx.device)).to(dt).requires_grad_(grad)
    dy = torch.randn(shape, device=ctx.device, dtype=dt) if grad else None
    return (x, bias), dy


def run(point, impl, ctx):
    f = function(impl, ctx)
    args, dy = inputs(point, ctx)
    return time_kernel(point, ctx, f, args, dy, reference=_reference, is_compile=impl == "compile")
