"""The LM head's loss: cross-entropy of x weightᵀ against targets, for a training step's tokens.

Shapes: x (B*S, d) with d = n_embd and B*S = 8,192 tokens (the model's batch rule), weight
(V, d) with V = 50,257 (GPT-2's tied embedding), targets (B*S,). Passes: fwd (the loss, no
autograd) and fwd+bwd (loss and the gradients of x and weight, as in training). Every S
at 8,192 tokens is the same shape, so it is measured once and the other S reuse it.
``peak_mem_bytes`` is the figure to read beside the time: eager builds the (B*S, V) logits.

Implementations:
    triton   ours: ``gpt2_kernels.linear_cross_entropy`` (chunked: no (B*S, V) logits)
    eager    ``F.cross_entropy(F.linear(x, weight).float(), targets)`` (the model's "torch" loss)
    compile  ``torch.compile`` of the eager pair, compiled for each shape
    liger    Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` when ``liger_kernel`` is installed
"""

from .impls import op_function
from .points import op_points, without_compile_in_smoke, model_config, torch_dtype
from .timing import time_kernel

FAMILY = "loss"
OP = "linear_cross_entropy"
PASSES = ("fwd", "fwd+bwd")
IMPLS = (("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"), ("liger", "peer"))
IGNORE = -1


def impls_for(point):
    return without_compile_in_smoke(IMPLS, point)


def points(sizes, seq_lens, dtype, info, smoke=False):
    return op_points(FAMILY, OP, PASSES, sizes, seq_lens, dtype, info, smoke)


def _eager(x, w, t):
    import torch.nn.functional as F

    return F.cross_entropy(F.linear(x, w).float(), t, ignore_index=IGNORE)


def _reference(x, w, t):
    import torch.nn.functional as F

    return F.cross_entropy(F.linear(x.float(), w.float()), t, ignore_index=IGNORE)


def _liger(cls):
    loss = cls(ignore_index=IGNORE)
    return lambda x, w, t: loss(w, x, t)


IMPORTED = {
    "triton": ("gpt2_kernels", "linear_cross_entropy", lambda fn: lambda x, w, t: fn(x, w, t, ignore_index=IGNORE)),
    "liger": ("liger_kernel.transformers", "LigerFusedLinearCrossEntropyLoss", _liger),
}


def inputs(point, ctx):
    """x (B*S, d) ~ N(0, 1), weight (V, d) ~ N(0, 0.02^2) as GPT-2's init, targets (B*S,);
    the output gradient 1 (a 0-d loss)."""
    import torch

    dt, grad = torch_dtype(point.dtype), point.pass_ != "fwd"
    V = model_config(point.size).vocab_size
    x = torch.randn(point.rows, point.width, device=ctx.device, dtype=dt, requires_grad=grad)
    w = (0.02 * torch.randn(V, point.width, device=ctx.device)).to(dt).requires_grad_(grad)
    t = torch.randint(0, V, (point.rows,), device=ctx.device)
    return (x, w, t), (torch.ones((), device=ctx.device) if grad else None)


def run(point, impl, ctx):
    f = op_function(impl, ctx, _eager, IMPORTED)
    return time_kernel(point, impl, ctx, f, *inputs(point, ctx), reference=_reference)
