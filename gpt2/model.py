"""GPT-2: a decoder-only transformer, built up small to large like the architecture diagram.

    ids (B, T) -> token embedding + position embedding -> n_layer x Block -> LayerNorm -> LM head
    Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))        (pre-LayerNorm residual blocks)

Parameter names follow Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``
...), so a checkpoint loads by copying tensors (``gpt2.checkpoint``); HF stores the four linear
layers of a block as ``Conv1D`` with the weight transposed, which the loader undoes.

The kernels are one switch: ``model.set_kernels(attention=..., layernorm=..., gelu=..., loss=...)``
with "torch" (eager PyTorch, the reference), "triton" (this project's kernels) or, for attention,
"sdpa" (PyTorch's fused attention). ``model.set_kernels("triton")`` sets all four. Each
LayerNorm, MLP and attention module, and the model for its loss, calls its ``kernel``, a
function the switch binds once from the table in ``gpt2.switch``. Two fusions come with the
Triton choices: layernorm="triton" also fuses each residual add into the LayerNorm after it
(``gpt2_kernels.add_layer_norm``), and loss="triton" computes the loss without building the logits
(``gpt2_kernels.linear_cross_entropy``), so ``model(idx, targets)`` then returns ``(None, loss)``.
"""

import math

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode

from . import checkpoint
from .attention import CausalSelfAttention
from .config import GPT2Config
from .positional import LearnedPositionalEncoding
from .switch import DEFAULT, add_layer_norm, bind, layer_norm, linear_gelu, lm_loss, resolve_kernels


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension."""

    op = "layernorm"  # this module's row of the kernel table (gpt2.switch.KERNELS)
    fused_op = "add_layernorm"  # the residual add fused in front of it (gpt2.switch.FUSED)

    def __init__(self, n_embd, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd))
        self.eps = eps
        self.kernel = layer_norm  # f(x, weight, bias, eps), set by the switch
        self.fused_kernel = add_layer_norm  # f(x, residual, ...) -> (LN(x + residual), x + residual), likewise

    def forward(self, x):
        return self.kernel(x, self.weight, self.bias, self.eps)

    def add_and_norm(self, branch, x):
        """(LayerNorm(x + branch), x + branch) in one pass; just (LayerNorm(x), x) when branch is None."""
        if branch is None:
            return self(x), x
        return self.fused_kernel(branch, x, self.weight, self.bias, self.eps)


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

    def forward_fused(self, x, branch, cache=None):
        """The same block with each residual add done by the LayerNorm that follows it (one
        pass over the stream instead of two). The stream travels as (x, branch), its value
        x + branch: this block adds the previous block's MLP output, and leaves its own for
        the next block's ln_1 (or the final ln_f) to add. branch is None for the first block."""
        h, x = self.ln_1.add_and_norm(branch, x)  # x = x + branch; h = ln_1(x)
        h, x = self.ln_2.add_and_norm(self.attn(h, cache=cache), x)  # x = x + attn(...); h = ln_2(x)
        return x, self.mlp(h)


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that generating one more
    token costs one token's work instead of the whole prefix's.

    k, v: (n_layer, B, nh, max_len, hs), allocated once at their final length and written in
    place. Two ways to drive it:

    - ``model(idx, cache=cache)``: the position is the host int ``pos`` (checked against the
      length, advanced by the model); attention sees the cache sliced to ``pos + T`` keys.
    - decode steps (``GPT2.generate``): after ``to_device_position()`` the position is
      ``length``, an int32 tensor on the device that the step advances in place. Attention
      sees the whole buffer and ``kv_len`` (= length) masks what is not written yet, so every
      step has the same shapes, reads nothing back on the host, and can be a CUDA graph.

    The model refuses a cache that does not fit it (layers, heads, head size, batch, device)
    before writing anything, and ``update`` one whose dtype is not that of the keys the layers
    make (a cast would round them silently).
    """

    def __init__(self, config, batch_size, max_len, device=None, dtype=torch.float32):
        for name, n in (("batch_size", batch_size), ("max_len", max_len)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"KVCache: {name} must be an int >= 1, got {n!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"KVCache: dtype must be a floating-point dtype, got {dtype!r}")
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.batch_size, self.max_len = batch_size, max_len
        self.pos = 0  # tokens stored by model(idx, cache=...) calls, on the host
        self.length = torch.zeros((), dtype=torch.int32, device=device)  # tokens stored, on the device
        self.on_device = False

    def to_device_position(self):
        """Continue from ``pos`` with the position on the device (decode steps); returns self."""
        self.length.fill_(self.pos)
        self.on_device = True
        return self

    @property
    def kv_len(self):
        """What attention must mask the full buffers to: None in host mode (k, v are sliced)."""
        return self.length if self.on_device else None

    def update(self, layer, k, v):
        """Store this step's k, v (B, nh, T, hs) for a layer; return its keys and values:
        sliced to the tokens so far in host mode, the whole buffers in device mode (where the
        decode step has already advanced ``length`` past these T tokens)."""
        T = k.size(2)
        if k.dtype != self.k.dtype:  # a silent cast here would round the keys, a mismatch later fail
            raise ValueError(f"the KV cache holds {self.k.dtype} keys and values, but layer {layer} makes "
                             f"{k.dtype} ones; make the cache with dtype={k.dtype}")
        if self.on_device:
            where = (self.length - T + torch.arange(T, device=k.device)).long()
            self.k[layer].index_copy_(2, where, k)
            self.v[layer].index_copy_(2, where, v)
            return self.k[layer], self.v[layer]  # (B, nh, max_len, hs), valid up to kv_len
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {T} tokens exceed its {self.max_len}")
        self.k[layer, :, :, self.pos : self.pos + T] = k
        self.v[layer, :, :, self.pos : self.pos + T] = v
        end = self.pos + T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nh, pos+T, hs)


class GPT2(nn.Module):
    op = "loss"  # the model's own row of the kernel table: the LM head and its loss

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
        self._fused_residual = False  # True with the Triton LayerNorm: blocks run forward_fused
        self.kernel = lm_loss  # f(x, weight, targets) -> (logits or None, loss), set by the switch
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 n_layer)
        # (two such writes per block), so the variance all 2L writes add together does not depend
        # on n_layer; the stream's variance still grows block by block.
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
    def set_kernels(self, all=None, *, attention=None, layernorm=None, gelu=None, loss=None):
        """Choose where each op runs: "torch", "triton" or (attention only) "sdpa".

        ``model.set_kernels("triton")`` sets all four; keywords set one each and override it.
        layernorm="triton" also fuses every residual add into the LayerNorm after it, and
        loss="triton" makes ``model(idx, targets)`` return ``(None, loss)`` (see ``forward``).
        Returns the model, so ``GPT2(cfg).set_kernels("triton")`` works. A refused request
        (``gpt2.switch.resolve_kernels`` names what is allowed) changes nothing.
        """
        choice = resolve_kernels(
            self._kernels, all, head_size=self.config.head_size,
            attention=attention, layernorm=layernorm, gelu=gelu, loss=loss,
        )
        for m in self.modules():
            if getattr(m, "op", None) in choice:
                bind(m, choice[m.op])
        self._kernels = choice
        self._fused_residual = choice["layernorm"] == "triton"
        return self

    @property
    def kernels(self):
        """The current choice, e.g. {"attention": "sdpa", "layernorm": "triton", "gelu": "torch", "loss": "torch"}."""
        return dict(self._kernels)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, idx, targets=None, *, cache=None):
        """idx: (B, T) integer token ids. Returns logits (B, T, vocab_size) float.

        With ``targets`` (B, T) ids, returns ``(logits, loss)``, the mean cross-entropy of
        predicting targets[b, t] from idx[b, :t+1]; targets of -1 are ignored (a batch with
        every target ignored has loss NaN in eager PyTorch, 0 with loss="triton"). With
        ``set_kernels(loss="triton")`` it returns ``(None, loss)``: the fused loss never builds
        the (B, T, vocab_size) logits, the largest tensors of a training step. Without targets
        the logits are always returned. With a ``KVCache``, idx holds only the new tokens and
        the cache supplies the ones before. (The attention weights, for heatmaps:
        ``gpt2.attention.record_attention``.)
        """
        offset = cache.pos if cache is not None else 0
        self._check_ids(idx, cache)
        x = self.transformer.wpe(self.transformer.wte(idx), offset)  # (B, T, d)
        x = self.transformer.drop(x)
        if not self._fused_residual:
            for block in self.transformer.h:
                x = block(x, cache=cache)
            x = self.transformer.ln_f(x)
        else:  # the same sum, each residual add fused into the LayerNorm after it (Block.forward_fused)
            branch = None
            for block in self.transformer.h:
                x, branch = block.forward_fused(x, branch, cache=cache)
            x, _ = self.transformer.ln_f.add_and_norm(branch, x)
        if cache is not None:
            cache.pos += idx.size(1)
        if targets is None:
            return self.lm_head(x)  # (B, T, vocab_size)
        return self.kernel(x, self.lm_head.weight, targets)  # (logits or None, loss)

    ID_DTYPES = (torch.int64, torch.int32)  # what nn.Embedding takes; narrower ints would wrap vocab ids

    def _check_ids(self, idx, cache=None):
        """Refuse what is not (B, T) ids in [0, vocab_size) that fit the block (and the cache).
        The range check reads the ids' min and max back: one host sync, once per call."""
        if not isinstance(idx, torch.Tensor):
            raise ValueError(f"idx must be a tensor of token ids, got {type(idx).__name__}")
        if idx.dtype not in self.ID_DTYPES:
            raise ValueError(f"idx must hold integer token ids of dtype torch.long or torch.int32, got {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {idx.dim()} dimension(s): {tuple(idx.shape)}")
        B, T = idx.shape
        if T == 0 or B == 0:
            raise ValueError(f"idx must hold at least one token, got shape {tuple(idx.shape)}")
        offset = 0
        if cache is not None:
            if cache.batch_size != B:
                raise ValueError(f"the KV cache was made for batch size {cache.batch_size}, got ids of batch size {B}")
            if cache.on_device:
                raise ValueError("this KV cache is driven by decode steps (position on the device); "
                                 "model(idx, cache=...) needs a fresh KVCache")
            c = self.config
            layers, _, heads, _, size = cache.k.shape
            if (layers, heads, size) != (c.n_layer, c.n_head, c.head_size):
                raise ValueError(f"the KV cache holds {heads} heads of size {size} in {layers} layers; this model has "
                                 f"{c.n_head} heads of size {c.head_size} in {c.n_layer} layers: make it with "
                                 f"KVCache(model.config, ...)")
            if cache.k.device != idx.device:
                raise ValueError(f"the KV cache is on {cache.k.device}, the ids on {idx.device}")
            offset = cache.pos
        if offset + T > self.config.block_size:
            raise ValueError(
                f"sequence of {offset + T} tokens exceeds block_size={self.config.block_size}"
            )
        # A data-dependent check; torch.compile cannot trace it, so it is skipped while compiling,
        # and ids without values (meta, or FakeTensorMode's, as bench --memory runs) have none to check.
        if not torch.compiler.is_compiling() and not (idx.is_meta or isinstance(idx, FakeTensor)):
            lo, hi = torch.stack([idx.min(), idx.max()]).tolist()
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
    # Below this temperature sampling is greedy: (logits - max) / t no longer fits in float32's
    # normal range, and the limit t -> 0 of softmax(logits / t) is the argmax anyway.
    GREEDY_BELOW = torch.finfo(torch.float32).tiny

    def _decode_step(self, idx, cache):
        """One step over a static cache: idx (B, T) new ids -> (B, vocab) float32 logits of the
        last position. Fixed shapes, no checks and nothing read back on the host, so it can be
        captured once as a CUDA graph and replayed (generate checked everything before)."""
        T = idx.size(1)
        cache.length += T  # in place: the attention layers see kv_len = the new length
        x = self.transformer.wpe(self.transformer.wte(idx), cache.length - T)  # (B, T, d)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache=cache)
        x = self.transformer.ln_f(x[:, -1:])
        return self.lm_head(x)[:, -1].float()  # (B, vocab)

    @staticmethod
    def _sample(logits, temperature, top_k, generator):
        """(B, vocab) float32 -> (B, 1) ids, without a host sync."""
        if temperature < GPT2.GREEDY_BELOW:
            return logits.argmax(dim=-1, keepdim=True)
        # Shift by the max before dividing: at a tiny temperature the best logit stays 0 and the
        # others go to -inf, where dividing first would overflow to inf - inf = NaN.
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        # argmax(p / E) with E ~ Exp(1) draws index i with probability p_i (the exponential race),
        # like torch.multinomial(probs, 1) but with no host sync and graph-safe.
        race = torch.empty_like(probs).exponential_(1, generator=generator)
        return (probs / race).argmax(dim=-1, keepdim=True)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None,
                 *, compile=False, eos_token_id=None, check_every=16):
        """Continue idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        temperature=0 is greedy (argmax), as is any temperature below ``GREEDY_BELOW`` (float32's
        smallest normal, where softmax(logits / t) is the argmax to the last bit); otherwise
        logits are divided by the temperature and, with top_k, cut to the k most likely tokens
        before sampling. The whole sequence must fit in block_size: a longer request is an
        error rather than a silent sliding window.

        With the KV cache (``use_cache``) the prompt is checked once and run once (prefill);
        then each token is one decode step over a static cache allocated at its final length,
        with fixed shapes and no host synchronisation (``_decode_step``).
        compile: run the decode step under ``torch.compile`` (mode "reduce-overhead" on CUDA:
            captured once as a CUDA graph and replayed; the default mode elsewhere). Works with
            every kernel choice. The compiled step and its cache are kept for the next call of
            the same batch size and length. A dict instead of True is passed on to
            ``torch.compile`` over those defaults (e.g. ``{"backend": "aot_eager"}``).
        eos_token_id: stop early once every row has produced it. Checked every ``check_every``
            steps and after the last (the one host sync, amortised); a row that finished earlier
            is padded with eos_token_id, and the result is cut after the step where the last row
            finished, so it may be shorter than T + max_new_tokens. check_every sets how many
            steps may be computed past that point, never where the result ends.
        """
        self._check_ids(idx)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0 (an int), got {max_new_tokens!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (a number; 0 is greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be >= 1 (an int) or None, got {top_k!r}")
        if eos_token_id is not None and not (isinstance(eos_token_id, int) and 0 <= eos_token_id < self.config.vocab_size):
            raise ValueError(f"eos_token_id must be an id in [0, {self.config.vocab_size}) or None, got {eos_token_id!r}")
        if not (isinstance(check_every, int) and check_every >= 1):
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
        if compile and not use_cache:
            raise ValueError("compile=True compiles the cached decode step; it needs use_cache=True")
        B, T = idx.shape
        total = T + max_new_tokens
        if total > self.config.block_size:
            raise ValueError(
                f"prompt ({T}) + max_new_tokens ({max_new_tokens}) = {total} exceeds "
                f"block_size={self.config.block_size}"
            )
        if max_new_tokens == 0:
            return idx
        out = idx.new_empty((B, total))
        out[:, :T] = idx
        if use_cache:
            cache, step = self._decode_setup(B, total, compile)
            logits = self(idx, cache=cache)[:, -1].float()  # prefill: (B, vocab)
            cache.to_device_position()
        else:
            logits = self(idx)[:, -1].float()
        # finished[b]: the step at which row b produced eos_token_id, max_new_tokens while it has
        # not; kept on the device, read back only at the checks.
        finished = None if eos_token_id is None else torch.full((B,), max_new_tokens, device=idx.device)
        for i in range(max_new_tokens):
            if i > 0:
                if use_cache:
                    if compile and idx.device.type == "cuda":
                        torch.compiler.cudagraph_mark_step_begin()
                    logits = step(out[:, T + i - 1 : T + i], cache)
                else:
                    logits = self(out[:, : T + i])[:, -1].float()
            nxt = self._sample(logits, temperature, top_k, generator)  # (B, 1)
            if finished is not None:
                nxt = nxt.masked_fill((finished < max_new_tokens)[:, None], eos_token_id)
                finished = torch.where(nxt[:, 0] == eos_token_id, finished.clamp(max=i), finished)
            out[:, T + i : T + i + 1] = nxt
            if finished is not None and ((i + 1) % check_every == 0 or i + 1 == max_new_tokens):
                last = int(finished.max())
                if last < max_new_tokens:  # every row has finished: end with the last one's step
                    return out[:, : T + last + 1]
        return out

    def _decode_setup(self, batch_size, max_len, compile):
        """(cache, step) for a generation: a fresh static cache and the eager step, or with
        compile the compiled step and the cache it was captured with, kept for the next call of
        the same shape (a new cache would mean new addresses, and so a new capture)."""
        p = self.transformer.wte.weight
        if not compile:
            return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype), self._decode_step
        options = {"fullgraph": True, "dynamic": False, **(compile if isinstance(compile, dict) else {})}
        if "backend" not in options and p.device.type == "cuda":
            options.setdefault("mode", "reduce-overhead")
        # id(self): copy.deepcopy copies this attribute too, and the copy's step would be the
        # original's, bound to the original's weights; the copy's own id tells them apart.
        key = (id(self), batch_size, max_len, p.device, p.dtype, repr(sorted(options.items())))
        kept = getattr(self, "_compiled_decode", None)
        if kept is None or kept[0] != key:
            cache = KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)
            for t in (cache.k, cache.v, cache.length):
                torch._dynamo.mark_static_address(t)  # updated in place inside the graph
            kept = self._compiled_decode = (key, cache, torch.compile(self._decode_step, **options))
        _, cache, step = kept
        cache.pos, cache.on_device = 0, False
        return cache, step

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
