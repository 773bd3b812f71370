"""Triton kernels for GPT-2's hot path, each a registered PyTorch op with its autograd.

    kernels.layer_norm(x, weight, bias, eps=1e-5)   LayerNorm over the last dim
    kernels.gelu(x, bias=None)                      GPT-2's tanh GELU of x + bias
    kernels.attention(q, k, v, causal=True, scale=None)   FlashAttention-2 style attention

On a machine without a GPU the kernels run through Triton's interpreter when
``TRITON_INTERPRET=1`` is set *before* this package is imported (Triton reads it when
``@triton.jit`` decorates a function). Without CUDA and without the interpreter, calling an
op raises a clear error instead of running.

The ops are imported lazily so that ``import kernels`` stays cheap and a missing op file
does not break the others.
"""

from importlib import import_module

_PUBLIC = {
    "layer_norm": "kernels.layer_norm",
    "gelu": "kernels.gelu",
    "attention": "kernels.attention",
}

__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


def load_all():
    """Import every op module, so that their kernels and configs are registered."""
    for module in dict.fromkeys(_PUBLIC.values()):
        import_module(module)
