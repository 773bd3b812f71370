"""Multi-head attention, and GPT-2's causal self-attention built on it.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k + M) V

Q, K, V are the inputs projected by learned matrices and split into ``num_heads`` heads of
size d_k = d_model / num_heads; each head attends on its own, and the heads' outputs are
concatenated and projected back to d_model. Dividing by √d_k keeps the scores' variance near
1 whatever d_k is, so the softmax does not saturate. M is the mask: 0 where a query may look,
-inf where it may not; GPT-2 is causal, so query i sees keys 0..i only.

Where the arithmetic runs is one switch, ``model.set_kernels(attention=...)``, which sets the
module's ``kernel`` to one function of the table in ``gpt2.switch``:

- ``"torch"``: ``attend``, the textbook formula above, with the (Sq, Sk) score matrix
  materialised. It is the reference every fused kernel is tested against, and the only path that
  can return the attention weights (heatmaps, ``record_attention``) or take an arbitrary mask.
- ``"sdpa"``: ``attend_sdpa``, PyTorch's fused ``scaled_dot_product_attention``.
- ``"triton"``: ``gpt2_kernels.attention``, this project's FlashAttention-2 kernel, which never
  forms the scores.

A fused kernel is used only when the mask is none or causal; an arbitrary ``mask`` (or a
request for the weights) takes ``attend``, whatever the switch says.

With a KV cache (generation), the queries are the newest Sq tokens and the keys are all Sk
tokens so far, so the causal mask is aligned to the end: query i sees keys j <= i + Sk - Sq.
"""

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(Sq, Sk, device=None):
    """(Sq, Sk) bool, True where query i may attend to key j: j <= i + (Sk - Sq)."""
    return torch.ones(Sq, Sk, dtype=torch.bool, device=device).tril(diagonal=Sk - Sq)


def valid_keys(Sq, Sk, kv_len, causal):
    """(Sq, Sk) bool (or (B, 1, Sq, Sk) for per-row lengths): the keys a query may see when
    only the first kv_len of Sk keys hold data (a static KV cache; kv_len a tensor on the
    device, never read on the host). Causal: query i is at position kv_len - Sq + i."""
    j = torch.arange(Sk, device=kv_len.device)
    last = kv_len.reshape(-1, 1, 1, 1) - 1  # (B or 1, 1, 1, 1)
    if causal:
        last = last - (Sq - 1) + torch.arange(Sq, device=kv_len.device)[:, None]  # (.., Sq, 1)
    visible = j <= last
    return visible[0, 0] if kv_len.numel() == 1 else visible


def _is_causal(mask, Sq, Sk):
    """Whether a user mask (broadcastable to (B, nh, Sq, Sk)) is exactly the causal one."""
    m = mask
    while m.dim() > 2 and m.size(0) == 1:
        m = m[0]
    return m.shape == (Sq, Sk) and torch.equal(m != 0, causal_mask(Sq, Sk, m.device))


def _check_causal(causal, Sq, Sk):
    if causal and Sq > Sk:
        raise ValueError(f"causal attention needs Sq <= Sk, got Sq={Sq}, Sk={Sk}")


def attend(q, k, v, *, causal=False, mask=None, dropout_p=0.0, need_weights=False, kv_len=None):
    """Scaled dot-product attention over heads, the formula written out (the eager reference).

    q: (B, nh, Sq, hs); k, v: (B, nh, Sk, hs), Sq <= Sk when causal; one floating dtype.
    mask: optional, broadcastable to (B, nh, Sq, Sk); 0/False marks a blocked position.
    kv_len: optional tensor, one length or one per row: only keys j < kv_len hold data (see
    ``valid_keys``). Returns y (B, nh, Sq, hs), and the weights (B, nh, Sq, Sk) too when need_weights.
    """
    Sq, Sk = q.size(-2), k.size(-2)
    _check_causal(causal, Sq, Sk)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, nh, Sq, Sk)
    if kv_len is not None:
        scores = scores.masked_fill(~valid_keys(Sq, Sk, kv_len, causal), float("-inf"))
    elif causal:
        scores = scores.masked_fill(~causal_mask(Sq, Sk, q.device), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(mask == 0, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, nh, Sq, Sk); a fully masked row gives NaN
    y = F.dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v  # (B, nh, Sq, hs)
    return (y, weights) if need_weights else y


def attend_sdpa(q, k, v, *, causal=False, dropout_p=0.0, kv_len=None):
    """``attend`` (no mask, no weights) by PyTorch's fused ``scaled_dot_product_attention``."""
    Sq, Sk = q.size(-2), k.size(-2)
    _check_causal(causal, Sq, Sk)
    if kv_len is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=valid_keys(Sq, Sk, kv_len, causal),
                                              dropout_p=dropout_p)
    # SDPA's is_causal aligns the mask to the top-left corner; ours is aligned to the end,
    # which is the same only when Sq == Sk (otherwise pass the mask explicitly).
    attn_mask = causal_mask(Sq, Sk, q.device) if causal and Sq != Sk else None
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal and Sq == Sk
    )


class MultiHeadAttention(nn.Module):
    """Multi-head attention: ``mha(query, key, value, mask=None)``.

    query: (B, Sq, d_model); key, value: (B, Sk, d_model). Returns (B, Sq, d_model), or
    (output, weights (B, num_heads, Sq, Sk)) with ``need_weights=True``.

    The Q, K and V projections are stored stacked in one ``c_attn`` Linear (d_model -> 3 d_model),
    as in GPT-2's checkpoints: self-attention (query is key is value) does one matmul for all
    three, cross-attention uses the three slices of the weight separately.
    """

    op = "attention"  # this module's row of the kernel table (gpt2.switch.KERNELS)

    def __init__(self, d_model, num_heads, dropout=0.0, bias=True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.d_model, self.num_heads, self.head_size = d_model, num_heads, d_model // num_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        # f(q, k, v, *, causal, dropout_p) -> y: the attention without mask or weights; set by
        # the model's switch (gpt2.switch), eager by default.
        self.kernel = attend
        self.layer_idx = 0  # which slot of a KVCache this module uses; set by the model

    def _project(self, query, key, value):
        if query is key and key is value:
            return self.c_attn(query).split(self.d_model, dim=2)
        w = self.c_attn.weight.split(self.d_model, dim=0)  # W_q, W_k, W_v: (d_model, d_model) each
        b = self.c_attn.bias.split(self.d_model) if self.c_attn.bias is not None else (None,) * 3
        return [F.linear(x, wi, bi) for x, wi, bi in zip((query, key, value), w, b)]

    def _heads(self, x):  # (B, S, d_model) -> (B, nh, S, hs)
        B, S, _ = x.shape
        return x.view(B, S, self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, query, key, value, mask=None, *, is_causal=False, need_weights=False, cache=None):
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.size(-1) != self.d_model:
                raise ValueError(f"{name} must have shape (B, S, {self.d_model}), got {tuple(t.shape)}")
        B, Sq, _ = query.shape
        q, k, v = (self._heads(t) for t in self._project(query, key, value))  # (B, nh, S, hs) each
        kv_len = None
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # all keys so far: (B, nh, Sk, hs)
            kv_len = cache.kv_len  # a static cache's length on the device, or None (k, v are all valid)
        Sk = k.size(-2)
        _check_causal(is_causal, Sq, Sk)
        if mask is not None and not is_causal and _is_causal(mask, Sq, Sk):
            mask, is_causal = None, True  # a causal mask: the fused kernels can take it
        dropout_p = self.dropout if self.training else 0.0
        if mask is None and not need_weights:
            lengths = {} if kv_len is None else {"kv_len": kv_len}
            out = self.kernel(q, k, v, causal=is_causal, dropout_p=dropout_p, **lengths)
        else:
            out = attend(q, k, v, causal=is_causal, mask=mask, dropout_p=dropout_p, need_weights=need_weights,
                         kv_len=kv_len)
        y, weights = out if need_weights else (out, None)
        y = y.transpose(1, 2).reshape(B, Sq, self.d_model)  # re-assemble the heads side by side
        y = self.resid_dropout(self.c_proj(y))
        return (y, weights) if need_weights else y


class CausalSelfAttention(MultiHeadAttention):
    """GPT-2's attention: ``csa(x)`` with x (B, S, d_model) -> (B, S, d_model), each position
    attending to itself and the positions before it. S (plus any cached tokens) must not exceed
    ``max_seq_len``."""

    def __init__(self, d_model, num_heads, max_seq_len=1024, dropout=0.0, bias=True):
        super().__init__(d_model, num_heads, dropout=dropout, bias=bias)
        self.max_seq_len = max_seq_len

    def forward(self, x, *, need_weights=False, cache=None):
        total = x.size(1) + (cache.pos if cache is not None else 0)
        if total > self.max_seq_len:
            raise ValueError(f"sequence of {total} tokens exceeds max_seq_len={self.max_seq_len}")
        return super().forward(x, x, x, is_causal=True, need_weights=need_weights, cache=cache)


@contextmanager
def record_attention(model):
    """Record the attention weights of every attention module in ``model`` (a GPT2, or any module).

        with record_attention(model) as weights:
            model(idx)
        weights[layer]  # (B, nh, Sq, Sk), one entry per attention call, in call order

    Inside the block each module computes its attention with ``attend``, the eager formula (the
    only one that forms the weights), whatever kernel the switch chose; the kernels come back
    on exit. The forward pass itself is not changed, so this is how the heatmaps see inside.
    """
    weights = []

    def recording(q, k, v, *, causal, dropout_p=0.0, kv_len=None):
        y, w = attend(q, k, v, causal=causal, dropout_p=dropout_p, need_weights=True, kv_len=kv_len)
        weights.append(w)
        return y

    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    saved = [m.kernel for m in modules]
    for m in modules:
        m.kernel = recording
    try:
        yield weights
    finally:
        for m, kernel in zip(modules, saved):
            m.kernel = kernel
