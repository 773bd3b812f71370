"""Triton kernels for GPT-2's hot path, each a registered PyTorch op with its autograd.

    gpt2_kernels.layer_norm(x, weight, bias, eps=1e-5)         LayerNorm over the last dim
    gpt2_kernels.gelu(x, bias=None)                            GPT-2's tanh GELU of x + bias
    gpt2_kernels.attention(q, k, v, causal=True, scale=None)   FlashAttention-2 style attention
                      (..., kv_start=, kv_len=, dropout_p=)   per-sequence key ranges (padded batches),
                                                          dropout inside the kernel
    gpt2_kernels.attention_dropout_mask(q, k, dropout_p)       the keep-mask a dropout call drew
    gpt2_kernels.decode_attention(q, k, v, kv_len=None, ...)   split-KV attention of <= 16 queries
                                                          (gpt2_kernels.attention sends decode there)
    gpt2_kernels.add_layer_norm(x, residual, weight, bias, eps=1e-5) -> (y, h)
                                                          h = x + residual, y = LayerNorm(h)
    gpt2_kernels.linear_cross_entropy(x, weight, targets, bias=None, ignore_index=-1, reduction="mean")
                                                          cross-entropy of x weightᵀ (+ bias),
                                                          chunked: no (N, V) logits

On a machine without a GPU the kernels run through Triton's interpreter when
``TRITON_INTERPRET=1`` is set *before* this package is imported (Triton reads it when
``@triton.jit`` decorates a function). Without CUDA and without the interpreter, calling an
op raises a clear error instead of running.

Memory: ``gpt2_kernels.workspace_bytes(name, *args)`` is the scratch an op (by its registered
name, "gpt2_kernels::attention_bwd") holds besides its inputs and outputs for those arguments,
declared beside each op; a fake or meta run adds it to the outputs its fake implementation makes.

Each op lives in a module of the same name (``gpt2_kernels/layer_norm.py`` holds
``layer_norm``). The functions are imported here, eagerly, so that ``gpt2_kernels.layer_norm``
is always the function: a lazy lookup would be shadowed by the submodule as soon as anything
imported it. Reach a module's internals with ``from gpt2_kernels.layer_norm import ...``.
"""

from .add_layer_norm import add_layer_norm
from .attention import attention, attention_dropout_mask
from .decode_attention import decode_attention
from .gelu import gelu
from .layer_norm import layer_norm
from .linear_cross_entropy import linear_cross_entropy
from ._common import workspace_bytes

__all__ = ["add_layer_norm", "attention", "attention_dropout_mask", "decode_attention", "gelu", "layer_norm", "linear_cross_entropy",
           "workspace_bytes"]

