"""Triton kernels for GPT-2's hot path, each a registered PyTorch op with its autograd.

    kernels.layer_norm(x, weight, bias, eps=1e-5)         LayerNorm over the last dim
    kernels.gelu(x, bias=None)                            GPT-2's tanh GELU of x + bias
    kernels.attention(q, k, v, causal=True, scale=None)   FlashAttention-2 style attention
    kernels.decode_attention(q, k, v, kv_len=None, ...)   split-KV attention of <= 16 queries
                                                          (kernels.attention sends decode there)

On a machine without a GPU the kernels run through Triton's interpreter when
``TRITON_INTERPRET=1`` is set *before* this package is imported (Triton reads it when
``@triton.jit`` decorates a function). Without CUDA and without the interpreter, calling an
op raises a clear error instead of running.

Each op lives in a module of the same name (``kernels/layer_norm.py`` holds
``layer_norm``). The functions are imported here, eagerly, so that ``kernels.layer_norm``
is always the function: a lazy lookup would be shadowed by the submodule as soon as anything
imported it. Reach a module's internals with ``from kernels.layer_norm import ...``.
"""

from .attention import attention
from .decode_attention import decode_attention
from .gelu import gelu
from .layer_norm import layer_norm

__all__ = ["attention", "decode_attention", "gelu", "layer_norm"]

