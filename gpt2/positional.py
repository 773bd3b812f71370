"""Position information for the token embeddings.

Attention by itself is blind to order (permute the tokens and every output permutes with
them), so each position gets a vector added to its token's embedding:

- ``PositionalEncoding``: the original Transformer's fixed sinusoids (Vaswani et al., 2017),
  PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)). No parameters,
  and defined for any position.
- ``LearnedPositionalEncoding``: GPT-2's choice, a trained table of ``max_len`` vectors. It
  can learn anything the sinusoids can, but knows nothing beyond ``max_len``.

Both are called as ``pe(x, offset=0)`` with x of shape (B, T, d_model) and return x plus the
encodings of positions offset .. offset+T-1 (``offset`` is where generation with a KV cache
has got to).
"""

import math

import torch
from torch import nn


def _check(x, offset, d_model, max_len, who):
    if x.dim() != 3 or x.size(-1) != d_model:
        raise ValueError(f"{who}: expected x of shape (B, T, {d_model}), got {tuple(x.shape)}")
    if offset < 0 or offset + x.size(1) > max_len:
        raise ValueError(
            f"{who}: positions {offset}..{offset + x.size(1) - 1} exceed max_len={max_len}"
        )


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=5000):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"PositionalEncoding needs an even d_model, got {d_model}")
        self.d_model, self.max_len = d_model, max_len
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        # 1 / 10000^(2i/d) for i = 0 .. d/2-1, computed in log space to stay accurate.
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * inv_freq)
        pe[:, 1::2] = torch.cos(position * inv_freq)
        # A buffer, not a parameter: it moves with .to(device) but is never trained. Not saved
        # in state_dict either, since it is recomputed exactly.
        self.register_buffer("pe", pe, persistent=False)  # (max_len, d_model)

    def forward(self, x, offset=0):
        _check(x, offset, self.d_model, self.max_len, "PositionalEncoding")
        return x + self.pe[offset : offset + x.size(1)].to(x.dtype)


class LearnedPositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=1024):
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        # Named `weight` so that it is `transformer.wpe.weight` in the model, as in Hugging Face's GPT-2.
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        nn.init.normal_(self.weight, std=0.01)  # GPT-2's init for the position table

    def forward(self, x, offset=0):
        if isinstance(offset, torch.Tensor):
            # An offset kept on the device (a static KV cache's): gathered, never read back on
            # the host, so a decode step has fixed shapes and no sync; the cache checked the range.
            return x + self.weight[offset + torch.arange(x.size(1), device=x.device)]
        _check(x, offset, self.d_model, self.max_len, "LearnedPositionalEncoding")
        return x + self.weight[offset : offset + x.size(1)]
