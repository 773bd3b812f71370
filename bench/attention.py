"""Causal self-attention, softmax(q k^T / sqrt(D) + causal mask) v, one GPT-2 layer's worth.

Shapes: q, k, v (B, H, S, D) with D = 64 (every GPT-2 size) and H = n_head (12, 16, 20, 25).
Passes: fwd (no autograd) and fwd+bwd (gradients of q, k and v).

Implementations:
    triton          ours: ``gpt2_kernels.attention(q, k, v, causal=True)``; on a GPU its first call per
                    shape class times each candidate tile and keeps the fastest (the choices
                    are recorded in the run's metadata as ``attention_configs``)
    triton-sm80     the same kernel with the sm_80 candidate family forced
                    (``gpt2_kernels.attention(..., family=80)``): on Hopper, the difference to
                    ``triton`` is what TMA, the pipelining and the Hopper tiles bring; on other
                    GPUs the two lines run the same launches. A true before/after of a change is
                    ``python -m bench --compare`` against an older commit's results folder
    eager           the textbook op: q @ k^T, mask, softmax, @ v, with the (S, S) scores in
                    memory (``gpt2.attention.attend``, the model's eager path)
    compile         ``torch.compile`` of the textbook op
    sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math
                    ``F.scaled_dot_product_attention(is_causal=True)`` pinned to each backend
                    with ``torch.nn.attention.sdpa_kernel``; a backend that refuses the shape
                    or dtype here is recorded as "unavailable"
    flash_attn      Dao-AILab's ``flash_attn_func`` when ``flash_attn`` is installed (it takes
                    (B, S, H, D); the transposes are views, outside the timed call)
Triton's fused-attention tutorial is not shipped inside the ``triton`` package, so it is not
a line here.
"""

from .impls import Unavailable, op_function
from .points import family_points
from .timing import make_inputs, time_kernel

FAMILY = "attention"
OP = "attention_causal"
PASSES = ("fwd", "fwd+bwd")
SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-math": "MATH",
}
IMPLS = (
    ("triton", "ours"), ("triton-sm80", "variant"), ("eager", "baseline"), ("compile", "baseline"),
    *((name, "baseline") for name in SDPA_BACKENDS), ("flash_attn", "peer"),
)


def points(sizes, seq_lens, dtype, info, smoke=False):
    return family_points(FAMILY, dict.fromkeys(PASSES, OP), sizes, seq_lens, dtype, info, smoke,
                         width=lambda cfg: cfg.head_size)


def _eager(q, k, v):
    from gpt2.attention import attend

    return attend(q, k, v, causal=True)


def _reference(q, k, v):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)


def _sdpa(backend_name):
    import torch.nn.functional as F
    from torch.nn import attention as nn_attention

    backend = getattr(nn_attention.SDPBackend, backend_name, None)
    if backend is None:
        raise Unavailable(f"this PyTorch has no SDPA backend {backend_name}")

    def f(q, k, v):
        with nn_attention.sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return f


def _flash_attn(flash_attn_func):
    """flash-attn takes (B, S, H, D): the transposes are views."""

    def f(q, k, v):
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)

    return f


IMPORTED = {
    "triton": ("gpt2_kernels", "attention", lambda fn: lambda q, k, v: fn(q, k, v, causal=True)),
    "triton-sm80": ("gpt2_kernels", "attention", lambda fn: lambda q, k, v: fn(q, k, v, causal=True, family=80)),
    "flash_attn": ("flash_attn", "flash_attn_func", _flash_attn),
}


def function(impl, ctx):
    if impl in SDPA_BACKENDS:
        return _sdpa(SDPA_BACKENDS[impl])
    if impl == "flash_attn" and ctx.device != "cuda":
        raise Unavailable("flash_attn needs a CUDA GPU")
    return op_function(impl, ctx, _eager, IMPORTED)


def inputs(point, ctx):
    """q, k, v and dO, each (B, H, S, D)."""
    return make_inputs(point, ctx, (point.batch, point.heads, point.seq_len, point.width), n=3)


def run(point, impl, ctx):
    f = function(impl, ctx)
    args, do = inputs(point, ctx)
    try:
        return time_kernel(point, impl, ctx, f, args, do, reference=_reference)
    except RuntimeError as e:
        # A pinned SDPA backend that cannot take this shape/dtype/device says so ("No available
        # kernel", or on the CPU "No viable backend"): it does not run here, which is no failure.
        msg = str(e).lower()
        if impl in SDPA_BACKENDS and ("no available kernel" in msg or "no viable backend" in msg):
            raise Unavailable(f"{impl}: no kernel for this shape/dtype/device") from e
        raise
