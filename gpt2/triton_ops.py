"""This project's Triton kernels under the signatures of ``gpt2.switch.KERNELS``.

Imported only when a Triton kernel is chosen (it imports ``kernels``, and so Triton).
"""

import torch.nn.functional as F

import kernels
from kernels.attention import HEAD_DIMS as ATTENTION_HEAD_SIZES  # noqa: F401  (checked by the switch)

layer_norm = kernels.layer_norm  # already f(x, weight, bias, eps)


def attention(q, k, v, *, causal, dropout_p=0.0):
    if dropout_p > 0:
        raise ValueError("the Triton attention kernel has no dropout; use dropout=0 or attention='sdpa'/'torch'")
    return kernels.attention(q, k, v, causal=causal)


def linear_gelu(x, weight, bias):
    # The matmul without its bias: the GELU kernel adds it in the same pass over (..., 4d).
    return kernels.gelu(F.linear(x, weight), bias)
