"""Every benchmark family as one table, ``FAMILIES``: what ``python -m bench`` can measure.

The kernel ops are rows of ``OpFamily`` (the op's math, shapes and lines in its ``doc``), each
timed alone at every GPT-2 size's shapes against PyTorch's eager op, its ``torch.compile`` and
the peers (Liger-Kernel, flash-attn), checked against an fp32 reference. The whole-model families
are ``ModelFamily`` rows: bench/model.py (ours and Hugging Face's) and bench/generation.py.
"""

from dataclasses import dataclass
from typing import Callable

from . import generation, model
from .impls import SDPA_BACKENDS, Unavailable, op_function, sdpa, sdpa_may_refuse
from .points import add_layer_norm_bytes, attention_bytes, attention_flops, dtype_bytes, family_points, gelu_bytes
from .points import layer_norm_bytes, linear_cross_entropy_flops, model_config, model_counts, torch_dtype
from .points import without_compile_in_smoke
from .timing import make_inputs, time_kernel

EPS = 1e-5  # GPT-2's LayerNorm epsilon
IGNORE = -1  # the loss's ignore_index


@dataclass(frozen=True)
class OpFamily:
    name: str  # the family: results' "family", --only's name
    op: str  # results' "op"
    doc: str  # the op's math, shapes, passes and implementations
    passes: tuple
    impls: tuple  # (impl, role) pairs, ours first
    eager: Callable  # the textbook PyTorch op
    reference: Callable  # the same math in fp32: the forward output's yardstick
    imported: dict  # {impl: (module, attribute, adapt)}, see bench.impls.op_function
    inputs: Callable  # (point, ctx) -> (inputs, output gradient or None)
    counts: Callable  # point -> (flops, bytes), None where a count does not apply
    width: Callable = lambda cfg: cfg.n_embd  # the row width the op sees at a GPT-2 size
    smoke_one_shape: bool = False  # the smoke run times one S, fwd+bwd, no torch.compile
    aliases: tuple = ()  # other names --only accepts
    opt_in: bool = False
    whole_model: bool = False  # model-level families take the model's sequence lengths

    def points(self, sizes, seq_lens, dtype, info, smoke=False, quick=False):
        if smoke and self.smoke_one_shape:  # the smoke run only checks the pipeline
            return family_points(self.name, {"fwd+bwd": self.op}, sizes, seq_lens[:1], dtype, info, smoke)
        return family_points(self.name, dict.fromkeys(self.passes, self.op), sizes, seq_lens, dtype, info, smoke,
                             width=self.width)

    def impls_for(self, point):
        return without_compile_in_smoke(self.impls, point) if self.smoke_one_shape else self.impls

    def function(self, impl, ctx):
        if impl in SDPA_BACKENDS:
            return sdpa(impl, causal=True)
        if impl == "flash_attn" and ctx.device != "cuda":
            raise Unavailable("flash_attn needs a CUDA GPU")
        return op_function(impl, ctx, self.eager, self.imported)

    def run(self, point, impl, ctx):
        f = self.function(impl, ctx)
        with sdpa_may_refuse(impl):
            return time_kernel(point, impl, ctx, f, *self.inputs(point, ctx), reference=self.reference)


def _rows(point, ctx, n=1, params=()):
    """n (B, S, width) tensors and (width,) parameters around ``params``; dy (B, S, width)."""
    return make_inputs(point, ctx, (point.batch, point.seq_len, point.width), n=n, params=params)


def _F():  # torch.nn.functional, imported when a function runs (bench must import without torch)
    import torch.nn.functional as F
    return F


def _row_bytes(formula):
    return lambda p: (None, formula(p.rows, p.width, dtype_bytes(p.dtype), p.pass_))


# ---- attention -------------------------------------------------------------------------------

def _attend(q, k, v):
    from gpt2.attention import attend

    return attend(q, k, v, causal=True)


def _flash_attn(flash_attn_func):
    """flash-attn takes (B, S, H, D): the transposes are views."""
    return lambda q, k, v: flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           causal=True).transpose(1, 2)


def _attention_counts(p):
    args = (p.batch, p.heads, p.seq_len, p.seq_len, p.width)
    return attention_flops(*args, p.pass_), attention_bytes(*args, dtype_bytes(p.dtype), p.pass_)


ATTENTION = OpFamily(
    "attention", "attention_causal", doc="""\
Causal self-attention, softmax(q k^T / sqrt(D) + causal mask) v, one GPT-2 layer's worth.
q, k, v (B, H, S, D) with D = 64 (every GPT-2 size) and H = n_head (12, 16, 20, 25).
Passes: fwd (no autograd) and fwd+bwd (gradients of q, k and v).
    triton          ours: gpt2_kernels.attention(q, k, v, causal=True); on a GPU its first call per shape
                    class times each candidate tile and keeps the fastest (the run's attention_configs)
    triton-sm80     the same kernel with the sm_80 candidates forced (family=80): on Hopper, the difference
                    to triton is what TMA, pipelining and Hopper tiles bring (a before/after is --compare)
    eager           the textbook op with the (S, S) scores in memory (gpt2.attention.attend)
    compile         torch.compile of the textbook op
    sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math
                    F.scaled_dot_product_attention(is_causal=True) pinned to each backend; a backend
                    that refuses the shape or dtype here is recorded as "unavailable"
    flash_attn      Dao-AILab's flash_attn_func (it takes (B, S, H, D): transposed views)
Triton's fused-attention tutorial is not shipped inside the triton package: no line for it.""",
    passes=("fwd", "fwd+bwd"),
    impls=(("triton", "ours"), ("triton-sm80", "variant"), ("eager", "baseline"), ("compile", "baseline"),
           *((name, "baseline") for name in SDPA_BACKENDS), ("flash_attn", "peer")),
    eager=_attend,
    reference=lambda q, k, v: _F().scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True),
    imported={
        "triton": ("gpt2_kernels", "attention", lambda fn: lambda q, k, v: fn(q, k, v, causal=True)),
        "triton-sm80": ("gpt2_kernels", "attention", lambda fn: lambda q, k, v: fn(q, k, v, causal=True, family=80)),
        "flash_attn": ("flash_attn", "flash_attn_func", _flash_attn),
    },
    inputs=lambda p, ctx: make_inputs(p, ctx, (p.batch, p.heads, p.seq_len, p.width), n=3),  # q, k, v; dO
    counts=_attention_counts,
    width=lambda cfg: cfg.head_size,
    aliases=("attn",),
)

# ---- LayerNorm, and the residual add fused into it ---------------------------------------------

LAYER_NORM = OpFamily(
    "layer_norm", "layer_norm", doc="""\
LayerNorm over the last dimension, y = (x - mean) / sqrt(var + eps) * weight + bias.
x (B, S, N) with N = n_embd (768, 1024, 1280, 1600); weight ~ 1 and bias ~ 0 (N,). Passes: fwd
(no autograd), bwd (the backward alone, after one forward), fwd+bwd (gradients of x, weight, bias).
    triton   ours: gpt2_kernels.layer_norm
    eager    F.layer_norm (what the model's "torch" path runs)
    compile  torch.compile of the eager op, compiled for each shape
    liger    Liger-Kernel's LigerLayerNormFunction""",
    passes=("fwd", "bwd", "fwd+bwd"),
    impls=(("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"), ("liger", "peer")),
    eager=lambda x, w, b: _F().layer_norm(x, w.shape, w, b, EPS),
    reference=lambda x, w, b: _F().layer_norm(x.float(), w.shape, w.float(), b.float(), EPS),
    imported={
        "triton": ("gpt2_kernels", "layer_norm", lambda fn: lambda x, w, b: fn(x, w, b, EPS)),
        "liger": ("liger_kernel.ops.layer_norm", "LigerLayerNormFunction",
                  lambda fn: lambda x, w, b: fn.apply(x, w, b, EPS)),
    },
    inputs=lambda p, ctx: _rows(p, ctx, params=(1.0, 0.0)),
    counts=_row_bytes(layer_norm_bytes),
    aliases=("layernorm", "ln"),
)


def _add_ln_eager(x, res, w, b):
    h = x + res
    return _F().layer_norm(h, w.shape, w, b, EPS) + h


def _add_ln_reference(x, res, w, b):
    h = (x + res).float()  # rounded as the dtype's add rounds it, then fp32
    return _F().layer_norm(h, w.shape, w.float(), b.float(), EPS) + h


def _add_ln_ours(fn):
    def f(x, res, w, b):
        y, h = fn(x, res, w, b, EPS)
        return y + h

    return f


ADD_LAYER_NORM = OpFamily(
    "add_layer_norm", "add_layer_norm", doc="""\
Residual add + LayerNorm: h = x + residual, y = LayerNorm(h), both returned (a block's seam).
x, residual (B, S, N) with N = n_embd; weight and bias (N,). Passes: fwd, bwd, fwd+bwd (the
timed function returns y + h, whose backward sends the output gradient down both, as a block's
residual stream does).
    triton   ours: gpt2_kernels.add_layer_norm (one pass: reads x and residual, writes h and y)
    eager    h = x + residual; F.layer_norm(h, ...) (what the model's "torch" path runs)
    compile  torch.compile of the eager pair, compiled for each shape
    liger    Liger-Kernel's LayerNorm after an eager add""",
    passes=("fwd", "bwd", "fwd+bwd"),
    impls=(("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"), ("liger", "peer")),
    eager=_add_ln_eager,
    reference=_add_ln_reference,
    imported={
        "triton": ("gpt2_kernels", "add_layer_norm", _add_ln_ours),
        "liger": ("liger_kernel.ops.layer_norm", "LigerLayerNormFunction",
                  lambda fn: lambda x, res, w, b: (lambda h: fn.apply(h, w, b, EPS) + h)(x + res)),
    },
    inputs=lambda p, ctx: _rows(p, ctx, n=2, params=(1.0, 0.0)),
    counts=_row_bytes(add_layer_norm_bytes),
    smoke_one_shape=True,
    aliases=("add_ln",),
)

# ---- GELU ----------------------------------------------------------------------------------------

GELU = OpFamily(
    "gelu", "gelu_bias", doc="""\
GPT-2's GELU (tanh form) of x + bias, the MLP's activation with c_fc's bias fused in:
    y = 0.5 * u * (1 + tanh(sqrt(2/pi) * (u + 0.044715 u^3))),   u = x + bias
x (B, S, 4*n_embd) (3072 ... 6400 wide), bias ~ 0 (4*n_embd,). Passes: fwd, fwd+bwd (gradients
of x and bias).
    triton   ours: gpt2_kernels.gelu(x, bias)
    eager    F.gelu(x + bias, approximate="tanh"): two kernels, the textbook op
    compile  torch.compile of the eager op (fuses the add into the GELU)
Liger-Kernel has gated GELU (GEGLU) and SwiGLU but no GELU with bias, so it has no line here.""",
    passes=("fwd", "fwd+bwd"),
    impls=(("triton", "ours"), ("eager", "baseline"), ("compile", "baseline")),
    eager=lambda x, bias: _F().gelu(x + bias, approximate="tanh"),
    reference=lambda x, bias: _F().gelu(x.float() + bias.float(), approximate="tanh"),
    imported={"triton": ("gpt2_kernels", "gelu", lambda gelu: gelu)},
    inputs=lambda p, ctx: _rows(p, ctx, params=(0.0,)),
    counts=_row_bytes(gelu_bytes),
    width=lambda cfg: 4 * cfg.n_embd,
)

# ---- the LM head's loss ----------------------------------------------------------------------


def _loss_inputs(point, ctx):
    """x (B*S, d) ~ N(0, 1), weight (V, d) ~ N(0, 0.02^2) as GPT-2's init, targets (B*S,); the
    output gradient 1 (a 0-d loss)."""
    import torch

    dt, grad = torch_dtype(point.dtype), point.pass_ != "fwd"
    V = model_config(point.size).vocab_size
    x = torch.randn(point.rows, point.width, device=ctx.device, dtype=dt, requires_grad=grad)
    w = (0.02 * torch.randn(V, point.width, device=ctx.device)).to(dt).requires_grad_(grad)
    t = torch.randint(0, V, (point.rows,), device=ctx.device)
    return (x, w, t), (torch.ones((), device=ctx.device) if grad else None)


def _liger_loss(cls):
    loss = cls(ignore_index=IGNORE)
    return lambda x, w, t: loss(w, x, t)


LOSS = OpFamily(
    "loss", "linear_cross_entropy", doc="""\
The LM head's loss: cross-entropy of x weight^T against targets, for a training step's tokens.
x (B*S, d) with d = n_embd and B*S = 8,192 tokens (the model's batch rule), weight (V, d) with
V = 50,257 (GPT-2's tied embedding), targets (B*S,). Passes: fwd (the loss, no autograd) and
fwd+bwd (the loss and the gradients of x and weight). Every S at 8,192 tokens is the same shape,
measured once. peak_mem_bytes is the figure to read beside the time: eager builds the (B*S, V) logits.
    triton   ours: gpt2_kernels.linear_cross_entropy (chunked: no (B*S, V) logits)
    eager    F.cross_entropy(F.linear(x, weight).float(), targets) (the model's "torch" loss)
    compile  torch.compile of the eager pair, compiled for each shape
    liger    Liger-Kernel's LigerFusedLinearCrossEntropyLoss""",
    passes=("fwd", "fwd+bwd"),
    impls=(("triton", "ours"), ("eager", "baseline"), ("compile", "baseline"), ("liger", "peer")),
    eager=lambda x, w, t: _F().cross_entropy(_F().linear(x, w).float(), t, ignore_index=IGNORE),
    reference=lambda x, w, t: _F().cross_entropy(_F().linear(x.float(), w.float()), t, ignore_index=IGNORE),
    imported={
        "triton": ("gpt2_kernels", "linear_cross_entropy", lambda fn: lambda x, w, t: fn(x, w, t, ignore_index=IGNORE)),
        "liger": ("liger_kernel.transformers", "LigerFusedLinearCrossEntropyLoss", _liger_loss),
    },
    inputs=_loss_inputs,
    counts=lambda p: (linear_cross_entropy_flops(p.rows, p.width, model_config(p.size).vocab_size, p.pass_), None),
    smoke_one_shape=True,
    aliases=("linear_cross_entropy", "lce"),
)

# ---- the whole-model families, and the table --------------------------------------------------


@dataclass(frozen=True)
class ModelFamily:
    """A module's ``{prefix}points``, ``{prefix}impls_for`` and ``{prefix}run``, looked up when called."""

    name: str
    module: object
    prefix: str = ""  # "hf_": bench/model.py's Hugging Face functions
    aliases: tuple = ()
    opt_in: bool = False  # run only when --only names it
    whole_model: bool = True  # takes the model's sequence lengths (and --quick)

    def points(self, *args, **kwargs):
        return getattr(self.module, self.prefix + "points")(*args, **kwargs)

    def impls_for(self, point):
        return getattr(self.module, self.prefix + "impls_for")(point)

    def run(self, point, impl, ctx):
        return getattr(self.module, self.prefix + "run")(point, impl, ctx)

    def counts(self, point):
        return model_counts(point)


# Every family, in the order a tier's tasks run; --only, its help and the default sweep come from this table.
FAMILIES = {f.name: f for f in (
    ATTENTION, LAYER_NORM, GELU,
    ModelFamily("model", model, aliases=("e2e", "end-to-end", "gpt2")),
    ModelFamily("hf", model, prefix="hf_", aliases=("transformers",)),
    ADD_LAYER_NORM, LOSS,
    ModelFamily("generation", generation, aliases=("generate", "decode"), opt_in=True, whole_model=False),
)}

