"""The one switch between this project's Triton kernels and plain PyTorch: a table, and its checks.

    KERNELS[op][choice] -> the function a module calls for ``op``

Each op's functions share one signature, so a module calls ``self.kernel(...)`` whatever was
chosen, and choosing is binding: ``GPT2.set_kernels`` checks the request once
(``resolve_kernels``) and sets each module's ``kernel`` to ``kernel(op, choice)``. Nothing is
compared or imported in a forward pass.

The Triton entries are the names of functions in ``gpt2/triton_ops.py``, which imports the
``gpt2_kernels`` package (and Triton); it is imported only when a Triton kernel is chosen, so
``import gpt2`` works where Triton does not.

To add an op: write its PyTorch form here with the signature every choice will share, add a row
to ``KERNELS`` (and the Triton form to triton_ops.py), give the module that runs it ``op = "name"``
and a ``kernel`` attribute, and add the keyword to ``GPT2.set_kernels``.
"""

import torch.nn.functional as F

from .attention import attend, attend_sdpa


def layer_norm(x, weight, bias, eps):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dimension."""
    return F.layer_norm(x, weight.shape, weight, bias, eps)


def linear_gelu(x, weight, bias):
    """GELU (tanh form) of the linear layer x Wᵀ + b: the first half of GPT-2's MLP."""
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


def add_layer_norm(x, residual, weight, bias, eps):
    """h = x + residual, then LayerNorm(h): a residual add and the LayerNorm after it. Returns (y, h)."""
    h = x + residual
    return layer_norm(h, weight, bias, eps), h


def lm_loss(x, weight, targets):
    """The LM head and its loss: logits = x weightᵀ, and their mean cross-entropy against
    targets (-1 ignored), computed in float32. Returns (logits, loss)."""
    logits = F.linear(x, weight)  # (B, T, vocab_size)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
    return logits, loss


# op -> {choice: function, or the name of a function in gpt2/triton_ops.py}. Signatures:
#   attention  f(q, k, v, *, causal, dropout_p[, kv_len]) -> y   q, k, v, y: (B, nh, S, hs); kv_len: the
#              valid keys of a static KV cache, a tensor on the device (passed only when there is one)
#   layernorm  f(x, weight, bias, eps) -> y                      x, y: (..., d)
#   gelu       f(x, weight, bias) -> gelu(x weightᵀ + bias)      x: (..., d) -> (..., 4d)
#   loss       f(x, weight, targets) -> (logits, loss)           x: (B, T, d), targets: (B, T);
#              the Triton form returns (None, loss): it never builds the logits
KERNELS = {
    "attention": {"torch": attend, "sdpa": attend_sdpa, "triton": "attention"},
    "layernorm": {"torch": layer_norm, "triton": "layer_norm"},
    "gelu": {"torch": linear_gelu, "triton": "linear_gelu"},
    "loss": {"torch": lm_loss, "triton": "lm_loss"},
}
DEFAULT = {op: "torch" for op in KERNELS}

# Fusions that follow an op's choice instead of having a keyword of their own: a module that
# runs `op` and names a fused op in `fused_op` gets that function too, as `fused_kernel`.
#   add_layernorm  f(x, residual, weight, bias, eps) -> (LayerNorm(h), h), h = x + residual
FUSED = {
    "add_layernorm": {"torch": add_layer_norm, "triton": "add_layer_norm"},
}


def _triton_ops(op):
    try:
        from . import triton_ops  # imports gpt2_kernels, and through it every Triton kernel
    except ImportError as e:
        others = " or ".join(repr(c) for c in KERNELS[op] if c != "triton")
        raise RuntimeError(f"the Triton {op} kernel is not available (gpt2_kernels: {e}); use {op}={others}") from e
    return triton_ops


def kernel(op, choice):
    """The function for ``op`` under ``choice`` (e.g. ``kernel("layernorm", "triton")``)."""
    table = FUSED if op in FUSED else KERNELS
    if op not in table:
        raise ValueError(f"unknown op {op!r}; the ops are {', '.join(KERNELS)}")
    if choice not in table[op]:
        raise ValueError(f"unknown {op} kernel {choice!r}; choose one of {', '.join(table[op])}")
    f = table[op][choice]
    return getattr(_triton_ops(op), f) if isinstance(f, str) else f


def resolve_kernels(current=None, all=None, *, head_size=None, **choices):
    """The choice after a request, checked; raises ValueError (RuntimeError if Triton is missing)
    naming what is allowed, before anything changes.

    current: {op: choice} now (ops it lacks are "torch"); all: one choice for every op;
    choices: op=choice, overriding ``all``, None meaning unchanged; head_size: the model's,
    checked against what the Triton attention kernel supports. Returns {op: choice} for every op
    of ``KERNELS``, in its order. Used by ``GPT2.set_kernels``; any other patcher calls it too.
    """
    unknown = [op for op in choices if op not in KERNELS]
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(map(repr, unknown))}; the ops are {', '.join(KERNELS)}")
    choice = {**DEFAULT, **(current or {})}
    if all is not None:
        choice = dict.fromkeys(KERNELS, all)
    choice.update({op: c for op, c in choices.items() if c is not None})
    for op, c in choice.items():
        kernel(op, c)  # refuses an unknown choice, and imports the Triton kernels if chosen
    if choice["attention"] == "triton" and head_size is not None:
        supported = _triton_ops("attention").ATTENTION_HEAD_SIZES
        if head_size not in supported:
            raise ValueError(
                f"the Triton attention kernel does not support head size {head_size} (n_embd / n_head); "
                f"supported: {', '.join(map(str, supported))}. Use attention='sdpa' or 'torch'"
            )
    return choice


def bind(module, choice):
    """Point ``module``'s ``kernel`` at ``choice``'s function for the op it runs (``module.op``),
    and its ``fused_kernel``, if it names a ``fused_op``, at that fusion's function."""
    module.kernel = kernel(module.op, choice)
    if getattr(module, "fused_op", None):
        module.fused_kernel = kernel(module.fused_op, choice)
    return module
