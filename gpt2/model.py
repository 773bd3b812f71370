"""GPT-2: a decoder-only transformer, built up small to large like the architecture diagram.

    ids (B, T) -> token embedding + position embedding -> n_layer x Block -> LayerNorm -> LM head
    Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))        (pre-LayerNorm residual blocks)

Parameter names follow Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``
...), so a checkpoint loads by copying tensors (``gpt2.checkpoint``); HF stores the four linear
layers of a block as ``Conv1D`` with the weight transposed, which the loader undoes.

The kernels are one switch: ``model.set_kernels(attention=..., layernorm=..., gelu=...)`` with
"torch" (eager PyTorch, the reference), "triton" (this project's kernels) or, for attention,
"sdpa" (PyTorch's fused attention). ``model.set_kernels("triton")`` sets all three. Each
LayerNorm, MLP and attention module calls its ``kernel``, a function the switch binds once from
the table in ``gpt2.switch``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import checkpoint
from .attention import CausalSelfAttention
from .config import GPT2Config
from .positional import LearnedPositionalEncoding
from .switch import DEFAULT, bind, layer_norm, linear_gelu, resolve_kernels


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension."""

    op = "layernorm"  # this module's row of the kernel table (gpt2.switch.KERNELS)

    def __init__(self, n_embd, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd))
        self.eps = eps
        self.kernel = layer_norm  # f(x, weight, bias, eps), set by the switch

    def forward(self, x):
        return self.kernel(x, self.weight, self.bias, self.eps)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(d -> 4d) -> GELU (tanh form) -> Linear(4d -> d)."""

    op = "gelu"  # this module's row of the kernel table (gpt2.switch.KERNELS)

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.kernel = linear_gelu  # f(x, weight, bias) = gelu(x weightᵀ + bias), set by the switch

    def forward(self, x):  # (B, T, d) -> (B, T, d)
        h = self.kernel(x, self.c_fc.weight, self.c_fc.bias)  # gelu(c_fc(x)): (B, T, 4d)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.block_size, config.dropout)
        self.attn.layer_idx = layer_idx
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):  # (B, T, d) -> (B, T, d)
        x = x + self.attn(self.ln_1(x), cache=cache)
        x = x + self.mlp(self.ln_2(x))
        return x


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
        self._kernels = dict(DEFAULT)  # what set_kernels chose; every module starts on torch
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
        Returns the model, so ``GPT2(cfg).set_kernels("triton")`` works. A refused request
        (``gpt2.switch.resolve_kernels`` names what is allowed) changes nothing.
        """
        choice = resolve_kernels(
            self._kernels, all, head_size=self.config.head_size,
            attention=attention, layernorm=layernorm, gelu=gelu,
        )
        for m in self.modules():
            if getattr(m, "op", None) in choice:
                bind(m, choice[m.op])
        self._kernels = choice
        return self

    @property
    def kernels(self):
        """The current choice, e.g. {"attention": "sdpa", "layernorm": "triton", "gelu": "torch"}."""
        return dict(self._kernels)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, idx, targets=None, *, cache=None):
        """idx: (B, T) integer token ids. Returns logits (B, T, vocab_size) float.

        With ``targets`` (B, T) ids, returns ``(logits, loss)``, the mean cross-entropy of
        predicting targets[b, t] from idx[b, :t+1]; targets of -1 are ignored. With a
        ``KVCache``, idx holds only the new tokens and the cache supplies the ones before.
        (The attention weights, for heatmaps: ``gpt2.attention.record_attention``.)
        """
        offset = cache.pos if cache is not None else 0
        self._check_ids(idx, offset)
        x = self.transformer.wpe(self.transformer.wte(idx), offset)  # (B, T, d)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache=cache)
        if cache is not None:
            cache.pos += idx.size(1)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

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
    def meta(cls, config):
        """``cls(config)`` on the meta device: every shape, no memory, no random init. For counting
        parameters, and as the empty shell a checkpoint's tensors are loaded into."""
        with torch.device("meta"), _SkipInitOnMeta():
            return cls(config)

    @classmethod
    def from_pretrained(cls, path_or_name, **kwargs):
        """Load a Hugging Face GPT-2 checkpoint; see ``gpt2.checkpoint.load_pretrained``."""
        return checkpoint.load_pretrained(path_or_name, cls, **kwargs)

    def save_pretrained(self, directory):
        """Write the model as a Hugging Face checkpoint; see ``gpt2.checkpoint.save_pretrained``."""
        return checkpoint.save_pretrained(self, directory)


class _SkipInitOnMeta(TorchFunctionMode):
    """Turns the weight-init fills into no-ops on meta tensors, which have no values to fill.

    PyTorch runs a fill on a meta tensor through its Python reference implementation, which costs
    ~0.5 s for gpt2-xl's parameters and, the first time, imports torch._dynamo (seconds more).
    """

    FILLS = {
        nn.init.normal_, nn.init.uniform_, nn.init.trunc_normal_, nn.init.kaiming_uniform_,
        nn.init.kaiming_normal_, nn.init.xavier_uniform_, nn.init.xavier_normal_,
        nn.init.zeros_, nn.init.ones_, nn.init.constant_,
        torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = args[0] if args else kwargs.get("tensor")  # nn.init.* pass the tensor by keyword
        if func in self.FILLS and isinstance(t, torch.Tensor) and t.is_meta:
            return t
        return func(*args, **kwargs)
