"""GPT-2: a decoder-only transformer, built up small to large like the architecture diagram.

    ids (B, T) -> token embedding + position embedding -> n_layer x Block -> LayerNorm -> LM head
    Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))        (pre-LayerNorm residual blocks)

Parameter names follow Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``
...), so a checkpoint loads by copying tensors (``gpt2.checkpoint``); HF stores the four linear
layers of a block as ``Conv1D`` with the weight transposed, which the loader undoes.

The kernels are one switch: ``model.set_kernels(attention=..., layernorm=..., gelu=...)`` with
"torch" (eager PyTorch, the reference), "triton" (this project's kernels) or, for attention,
"sdpa" (PyTorch's fused attention). ``model.set_kernels("triton")`` sets all three.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_IMPLS, CausalSelfAttention
from .config import GPT2Config
from .positional import LearnedPositionalEncoding

KERNEL_CHOICES = {
    "attention": ATTENTION_IMPLS,
    "layernorm": ("torch", "triton"),
    "gelu": ("torch", "triton"),
}


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension."""

    def __init__(self, n_embd, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd))
        self.eps = eps
        self.impl = "torch"

    def forward(self, x):
        if self.impl == "triton":
            import kernels

            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(d -> 4d) -> GELU (tanh form) -> Linear(4d -> d)."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.impl = "torch"

    def forward(self, x):  # (B, T, d) -> (B, T, d)
        if self.impl == "triton":
            import kernels

            # The matmul without its bias; the Triton GELU adds c_fc's bias in the same pass.
            h = kernels.gelu(F.linear(x, self.c_fc.weight), self.c_fc.bias)  # (B, T, 4d)
        else:
            h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4d)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.block_size, config.dropout)
        self.attn.layer_idx = layer_idx
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, need_weights=False):  # (B, T, d) -> (B, T, d)
        a = self.attn(self.ln_1(x), cache=cache, need_weights=need_weights)
        a, weights = a if need_weights else (a, None)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return (x, weights) if need_weights else x


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that generating one more
    token costs one token's work instead of the whole prefix's.

    k, v: (n_layer, B, nh, max_len, hs), filled up to ``pos``.
    """

    def __init__(self, config, batch_size, max_len, device=None, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def update(self, layer, k, v):
        """Store this step's k, v (B, nh, T, hs) for a layer; return all of its keys and values."""
        T = k.size(2)
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {T} tokens exceed its {self.max_len}")
        self.k[layer, :, :, self.pos : self.pos + T] = k
        self.v[layer, :, :, self.pos : self.pos + T] = v
        end = self.pos + T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nh, pos+T, hs)


class GPT2(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=LearnedPositionalEncoding(config.n_embd, config.block_size),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=LayerNorm(config.n_embd, config.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): the same matrix maps ids to vectors and vectors to
        # logits, which saves vocab_size x n_embd parameters (38.6M in gpt2) and is what GPT-2 did.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 n_layer),
        # so the stream's variance does not grow with depth (two such writes per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ---- kernels -------------------------------------------------------------------------
    def set_kernels(self, all=None, *, attention=None, layernorm=None, gelu=None):
        """Choose where each op runs: "torch", "triton" or (attention only) "sdpa".

        ``model.set_kernels("triton")`` sets all three; keywords set one each and override it.
        Returns the model, so ``GPT2(cfg).set_kernels("triton")`` works.
        """
        choice = dict(self.kernels)
        if all is not None:
            for op in choice:
                choice[op] = all
        for op, name in (("attention", attention), ("layernorm", layernorm), ("gelu", gelu)):
            if name is not None:
                choice[op] = name
        for op, name in choice.items():
            if name not in KERNEL_CHOICES[op]:
                raise ValueError(f"unknown {op} kernel {name!r}; choose one of {', '.join(KERNEL_CHOICES[op])}")
            if name == "triton":
                _require_triton_kernels(op)
                if op == "attention":
                    from kernels.attention import HEAD_DIMS

                    if self.config.head_size not in HEAD_DIMS:
                        raise ValueError(
                            f"the Triton attention kernel does not support head size {self.config.head_size} "
                            f"(n_embd / n_head); supported: {', '.join(map(str, HEAD_DIMS))}. "
                            "Use attention='sdpa' or 'torch'"
                        )
        for m in self.modules():
            if isinstance(m, CausalSelfAttention):
                m.impl = choice["attention"]
            elif isinstance(m, LayerNorm):
                m.impl = choice["layernorm"]
            elif isinstance(m, MLP):
                m.impl = choice["gelu"]
        return self

    @property
    def kernels(self):
        """The current choice, e.g. {"attention": "sdpa", "layernorm": "triton", "gelu": "torch"}."""
        block = self.transformer.h[0]
        return {"attention": block.attn.impl, "layernorm": block.ln_1.impl, "gelu": block.mlp.impl}

    # ---- forward -------------------------------------------------------------------------
    def forward(self, idx, targets=None, *, cache=None, return_attention=False):
        """idx: (B, T) integer token ids. Returns logits (B, T, vocab_size) float.

        With ``targets`` (B, T) ids, returns ``(logits, loss)``, the mean cross-entropy of
        predicting targets[b, t] from idx[b, :t+1]; targets of -1 are ignored. With a
        ``KVCache``, idx holds only the new tokens and the cache supplies the ones before.
        With ``return_attention=True``, also returns every layer's attention weights, a list
        of (B, nh, T, T_total) tensors (computed by the eager path).
        """
        offset = cache.pos if cache is not None else 0
        self._check_ids(idx, offset)
        x = self.transformer.wpe(self.transformer.wte(idx), offset)  # (B, T, d)
        x = self.transformer.drop(x)
        attentions = []
        for block in self.transformer.h:
            x = block(x, cache=cache, need_weights=return_attention)
            if return_attention:
                x, w = x
                attentions.append(w)
        if cache is not None:
            cache.pos += idx.size(1)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        out = logits
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
            out = (logits, loss)
        if return_attention:
            return (*out, attentions) if isinstance(out, tuple) else (out, attentions)
        return out

    def _check_ids(self, idx, offset=0):
        if not isinstance(idx, torch.Tensor):
            raise ValueError(f"idx must be a tensor of token ids, got {type(idx).__name__}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {idx.dim()} dimension(s): {tuple(idx.shape)}")
        B, T = idx.shape
        if T == 0 or B == 0:
            raise ValueError(f"idx must hold at least one token, got shape {tuple(idx.shape)}")
        if offset + T > self.config.block_size:
            raise ValueError(
                f"sequence of {offset + T} tokens exceeds block_size={self.config.block_size}"
            )
        # A data-dependent check; torch.compile cannot trace it, so it is skipped while compiling.
        if not torch.compiler.is_compiling():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(
                    f"token ids must be in [0, {self.config.vocab_size}), got values in [{lo}, {hi}]"
                )

    def num_parameters(self, exclude_embeddings=False):
        """Parameters counted once each (the tied LM head is the token embedding)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    # ---- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None):
        """Continue idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        temperature=0 is greedy (argmax); otherwise logits are divided by the temperature and,
        with top_k, cut to the k most likely tokens before sampling. With the KV cache the
        prompt is run once (prefill) and then one token per step. The whole sequence must fit
        in block_size: a longer request is an error rather than a silent sliding window.
        """
        self._check_ids(idx)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        total = idx.size(1) + max_new_tokens
        if total > self.config.block_size:
            raise ValueError(
                f"prompt ({idx.size(1)}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                f"block_size={self.config.block_size}"
            )
        if max_new_tokens == 0:
            return idx
        cache = None
        if use_cache:
            p = self.transformer.wte.weight
            cache = KVCache(self.config, idx.size(0), total, device=p.device, dtype=p.dtype)
        out, step_input = idx, idx
        for _ in range(max_new_tokens):
            logits = self(step_input if use_cache else out, cache=cache)[:, -1, :].float()  # (B, vocab)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)
            step_input = nxt
        return out

    @classmethod
    def from_name(cls, name, **overrides):
        """A randomly initialised model of a published size ("gpt2" ... "gpt2-xl")."""
        return cls(GPT2Config.from_name(name, **overrides))

    @classmethod
    def from_pretrained(cls, path_or_name, **kwargs):
        """Load a Hugging Face GPT-2 checkpoint; see ``gpt2.checkpoint.load_pretrained``."""
        from .checkpoint import load_pretrained

        return load_pretrained(path_or_name, model_cls=cls, **kwargs)


def _require_triton_kernels(op):
    try:
        import kernels  # noqa: F401  (imports every op; one that fails to import fails here)
    except ImportError as e:
        raise RuntimeError(
            f"the Triton {op} kernel is not available (kernels: {e}); "
            f"use {op}='torch'" + (" or 'sdpa'" if op == "attention" else "")
        ) from e
