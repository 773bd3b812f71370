"""This project's Triton kernels under the signatures of ``gpt2.switch.KERNELS``.

Imported only when a Triton kernel is chosen (it imports ``gpt2_kernels``, and so Triton).
"""

import torch.nn.functional as F

import gpt2_kernels
from gpt2_kernels.attention import HEAD_DIMS as ATTENTION_HEAD_SIZES  # noqa: F401  (checked by the switch)

layer_norm = gpt2_kernels.layer_norm  # already f(x, weight, bias, eps)
add_layer_norm = gpt2_kernels.add_layer_norm  # already f(x, residual, weight, bias, eps) -> (y, h)


def attention(q, k, v, *, causal, dropout_p=0.0, kv_len=None):
    if kv_len is not None:  # a decode step over a static cache: the length lives on the device
        if dropout_p > 0:
            raise ValueError("the Triton decode kernel (a static KV cache) has no dropout; generate in model.eval()")
        return gpt2_kernels.decode_attention(q, k, v, kv_len=kv_len, causal=causal)
    # Dropout runs inside the kernel, its seed drawn from torch's default generator
    # (gpt2_kernels.attention_dropout_mask gives a call's keep-mask).
    return gpt2_kernels.attention(q, k, v, causal=causal, dropout_p=dropout_p)


def linear_gelu(x, weight, bias):
    # The matmul without its bias: the GELU kernel adds it in the same pass over (..., 4d).
    return gpt2_kernels.gelu(F.linear(x, weight), bias)


def lm_loss(x, weight, targets):
    # No logits: the fused op computes the loss, and while training its gradients, a chunk of
    # rows at a time (gpt2_kernels/linear_cross_entropy.py), so there are none to return.
    return None, gpt2_kernels.linear_cross_entropy(x.flatten(0, 1), weight, targets.flatten(), ignore_index=-1)
