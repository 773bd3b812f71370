"""This project's kernels inside Hugging Face's GPT-2: one call patches a ``GPT2LMHeadModel``.

    from transformers import GPT2LMHeadModel
    from gpt2.hf import apply_kernels
    model = apply_kernels(GPT2LMHeadModel.from_pretrained("gpt2"), "triton")
    model = apply_kernels(model, "torch")         # Hugging Face's own behaviour again

or, for the attention alone, at load time (``import gpt2.hf`` registers the name):

    model = GPT2LMHeadModel.from_pretrained("gpt2", attn_implementation="gpt2_triton")

``apply_kernels`` takes the choices and rules of ``GPT2.set_kernels`` (``gpt2.switch``):
"torch", "triton", or "sdpa" for attention; a refused request changes nothing. What it changes:

- attention: the model's ``attn_implementation``. "triton" is ``ATTN_IMPLEMENTATION``, this
  module's ``attention_forward`` registered in transformers' attention-interface registry (with
  ``sdpa_mask`` as its mask builder, so padding is never dropped); "sdpa" is HF's "sdpa"; "torch"
  is the implementation the model had before it was first patched. Needs transformers >= 4.53;
  on transformers < 4.48 each ``GPT2Attention``'s forward is patched instead (``_legacy``), and
  the versions between (whose masks a registered implementation cannot read) refuse it.
- layernorm: every ``nn.LayerNorm``'s forward calls ``gpt2_kernels.layer_norm``.
- gelu: every ``GPT2MLP``'s forward calls the fused GELU(x W + b) of the switch (the model's
  ``activation_function`` must be a tanh GELU: "gelu_new" or "gelu_pytorch_tanh").

Forwards are swapped on the instances, so the modules, their parameters, ``state_dict()`` and
``save_pretrained`` are Hugging Face's, untouched; "torch" deletes the swapped forwards.

Padding and attention dropout run on the kernel; what it does not cover is handed back to
Hugging Face, per call:

=============================================  ==============================================
call                                           runs
=============================================  ==============================================
no mask (HF drops the mask when it is purely   our kernel: causal for self-attention,
causal: prefill, one-token decode, training)   non-causal for cross-attention
a padding mask: a padded training batch, a     our kernel, the mask read as per-sequence key
left-padded ``generate``, a padded encoder, a  ranges (``kv_start``, ``kv_len``): see
StaticCache's decode steps                     ``_key_ranges``; one host sync per forward
attention dropout (``model.train()`` with      our kernel, dropping inside it (its seed from
``attn_pdrop > 0``)                            torch's default generator)
any other mask: a StaticCache's padded         HF's ``sdpa`` (reason "attention_mask")
prefill (causal from its first slot), a 4D
mask of another pattern, a float mask, any
mask under ``torch.compile``
``output_attentions=True``                     HF's ``eager``, which forms the weights
                                               ("output_attentions"; on 4.53 - 4.57 seen only
                                               on a model patched by ``apply_kernels``)
a head mask (transformers 4)                   HF's ``eager`` ("head_mask")
head size outside {16, 32, 64, 128}, or a      HF's ``sdpa`` ("head_size", "dtype"); only
dtype the kernel lacks (load-time use)         reachable by ``attn_implementation=``
=============================================  ==============================================

A query that sees no key (a left pad's own row) gets 0 from the kernel, as from HF's sdpa. On
transformers < 4.48 (``_legacy``) a padding mask still falls back ("attention_mask"): those
versions hand the attention an additive float mask.

Each fallback adds one to ``FALLBACKS[reason]`` (a ``collections.Counter``; one count per
attention layer per call) and logs at DEBUG on the ``gpt2.hf`` logger, so a run that silently
stopped using the kernel shows. Under ``torch.compile`` the branch is chosen while tracing and
nothing is counted. LayerNorm and GELU have no fallback: their kernels take every input a GPT-2
gives them (any leading shape; fp32, fp16, bf16).

transformers is imported here, and only here: ``import gpt2`` never imports it.
"""

import contextvars
import logging
import types
from collections import Counter

import torch
from torch import nn
from transformers import __version__ as transformers_version
from transformers.models.gpt2 import modeling_gpt2

from .attention import causal_mask
from .checkpoint import TANH_GELU
from .switch import kernel, resolve_kernels

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "gpt2_triton"  # the name transformers' registry knows our attention by
FALLBACKS = Counter()  # reason -> attention calls handed back to Hugging Face
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Two ways in, by what the installed transformers has:
# - a registry of attention implementations by name, with a mask builder per name, and a GPT-2
#   that builds its masks through them (transformers >= 4.53): ours is registered by name;
# - transformers < 4.48: GPT2Attention computes in its ``_attn`` method, patched per module.
# The versions between pass a custom implementation masks it cannot read (padding-only, causal
# implied) and keep no flag for output_attentions; there the Triton attention is refused.
try:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    REGISTRY = hasattr(modeling_gpt2, "create_causal_mask")
except ImportError:
    REGISTRY = False
LEGACY = hasattr(modeling_gpt2.GPT2Attention, "_attn")


# ---- the attention ----------------------------------------------------------------------


def _fallback(reason):
    if not torch.compiler.is_compiling():
        FALLBACKS[reason] += 1
        logger.debug("gpt2.hf: attention falls back to Hugging Face's path (%s)", reason)


try:  # transformers 5 records attention weights with hooks and keeps the request here
    from transformers.utils.output_capturing import _active_collector
except ImportError:  # 4.53 - 4.57: the module's forward gets output_attentions (see _noting_weights)
    _active_collector = None
_WEIGHTS_ASKED = contextvars.ContextVar("gpt2_hf_output_attentions", default=False)


def _weights_requested():
    """Whether the running forward wants the attention weights (``output_attentions=True``),
    which the attention function is not told: read from transformers' collector, or from the
    note ``_noting_weights`` leaves."""
    if _active_collector is not None:
        return "attentions" in (_active_collector.get() or {})
    return _WEIGHTS_ASKED.get()


def _noting_weights(self, *args, **kwargs):
    """GPT2Attention.forward for transformers 4.53 - 4.57, noting output_attentions for the call."""
    if not kwargs.get("output_attentions"):
        return type(self).forward(self, *args, **kwargs)
    token = _WEIGHTS_ASKED.set(True)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        _WEIGHTS_ASKED.reset(token)


def _why_not_kernel(query, kwargs):
    """The reason this attention call cannot run on our kernel whatever its mask, or None."""
    if kwargs.get("head_mask") is not None:
        return "head_mask"
    if query.size(-1) not in _triton().ATTENTION_HEAD_SIZES:
        return "head_size"
    if query.dtype not in DTYPES:
        return "dtype"
    if not torch.compiler.is_compiling() and (kwargs.get("output_attentions") or _weights_requested()):
        return "output_attentions"
    return None


def _key_ranges(mask, query, key, causal):
    """The mask as the kernel's per-sequence key ranges: {"kv_start": lo, "kv_len": hi}, int32
    (B,) tensors on the device, when ``mask`` is exactly "key lo[b] <= j < hi[b]" (and, when
    causal, the causal mask aligned to the end of the keys); None when it is anything else.

    That is the form of every padding mask ``sdpa_mask`` builds over a DynamicCache or none (a
    padded training batch, a left-padded ``generate``, one-token decode over a StaticCache, a
    padded encoder). lo and hi are the first and last key any query sees; the mask they imply is
    compared with HF's, which costs one host sync. The answer is kept on the mask tensor, which
    HF passes to every layer of one forward, so a forward syncs once, not once per layer.
    Under torch.compile nothing is read back: the mask falls back (None)."""
    B, Sq, Sk = query.size(0), query.size(2), key.size(2)
    if (mask.dtype != torch.bool or mask.dim() != 4 or mask.size(0) not in (1, B) or mask.size(1) != 1
            or tuple(mask.shape[2:]) != (Sq, Sk) or torch.compiler.is_compiling()):
        return None
    asked = (causal, B, Sq, Sk, mask._version)  # _version: an in-place edit of the mask asks again
    known = getattr(mask, "_gpt2_key_ranges", None)
    if known is not None and known[0] == asked:
        return known[1]
    j = torch.arange(Sk, device=mask.device)
    seen = mask[:, 0].any(dim=1)  # (B or 1, Sk): the keys some query sees
    lo = torch.where(seen, j, Sk).amin(dim=1)
    hi = torch.where(seen, j + 1, 0).amax(dim=1)
    lo = torch.minimum(lo, hi)  # a sequence that sees no key: lo = hi = 0
    implied = (j >= lo[:, None, None, None]) & (j < hi[:, None, None, None])  # (B or 1, 1, 1, Sk)
    if causal:
        implied = implied & causal_mask(Sq, Sk, mask.device)
    ranges = None
    if torch.equal(implied.expand(mask.shape), mask):
        ranges = {name: t.to(torch.int32).expand(B).contiguous() for name, t in (("kv_start", lo), ("kv_len", hi))}
    mask._gpt2_key_ranges = (asked, ranges)
    return ranges


def _causal(module, query, is_causal):
    # Hugging Face's convention for a call without a mask: a decoder's self-attention is causal
    # unless it is one query (decode: it sees every key); cross-attention never is.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return bool(causal) and query.size(2) > 1


def _eager_with_weights(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs):
    # HF's eager attention adds its mask to the scores, so the boolean mask sdpa_mask built (or,
    # without one, the causal mask HF would have implied) becomes 0 / dtype-min.
    Sq, Sk = query.size(2), key.size(2)
    if attention_mask is None and _causal(module, query, is_causal):
        attention_mask = torch.ones(1, 1, Sq, Sk, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        blocked = torch.finfo(query.dtype).min
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attention_mask, blocked
        )
    return modeling_gpt2.eager_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Hugging Face's attention-interface signature, run by this project's Triton kernel.

    query (B, nh, Sq, hs); key, value (B, nh, Sk, hs); attention_mask None or bool (B, 1, Sq, Sk)
    from ``sdpa_mask``. Returns (output (B, Sq, nh, hs), None): the kernel never forms the
    weights. What it cannot take falls back per call (module docstring), counted in FALLBACKS.
    """
    reason = _why_not_kernel(query, kwargs)
    causal = _causal(module, query, is_causal)
    ranges = {}
    if reason is None and attention_mask is not None:
        ranges = _key_ranges(attention_mask, query, key, causal)
        reason = "attention_mask" if ranges is None else None
    if reason in ("output_attentions", "head_mask"):  # only HF's eager forms (and masks) the weights
        _fallback(reason)
        return _eager_with_weights(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    if reason is not None:
        _fallback(reason)
        sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
        return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    Sq = query.size(2)
    if causal and attention_mask is None and key.size(2) > Sq:
        # No mask with more keys than queries is HF's upper-left causal (a StaticCache's prefill:
        # the keys past Sq are empty slots), as its sdpa path does; our kernel aligns to the end.
        # (A mask states its own alignment: _key_ranges took it only if it is the kernel's.)
        key, value = key[:, :, :Sq], value[:, :, :Sq]
    out = _triton().gpt2_kernels.attention(query, key, value, causal=causal, scale=scaling, dropout_p=dropout,
                                           **ranges)  # (B, nh, Sq, hs)
    return out.transpose(1, 2), None


def _triton():
    # gpt2/triton_ops.py stays the one module of gpt2 that imports gpt2_kernels (and Triton): on the
    # first call, never at ``import gpt2.hf``.
    from . import triton_ops

    return triton_ops


def register():
    """Make ``attn_implementation="gpt2_triton"`` known to transformers (done at import)."""
    if not REGISTRY:
        return False
    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    # Without a registered mask builder transformers passes no mask at all to an unknown
    # implementation (it assumes a server backend), which would drop every padding mask.
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return True


register()


def _set_attn_implementation(model, name):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # before set_attn_implementation existed, the config field was read at every call
        model.config._attn_implementation = name


# ---- transformers < 4.48: patch each GPT2Attention -----------------------------------------


def _legacy_attn(self, query, key, value, attention_mask=None, head_mask=None):
    """``GPT2Attention._attn`` of transformers < 4.48, on our kernel where it can run, dropout
    included (HF's own ``_attn`` for a padding mask or a head mask)."""
    dropout = self.attn_dropout.p if self.training else 0.0
    # These versions hand _attn an additive float padding mask: not read, it falls back.
    reason = "attention_mask" if attention_mask is not None else _why_not_kernel(query, {"head_mask": head_mask})
    if reason is not None:
        _fallback(reason)
        return modeling_gpt2.GPT2Attention._attn(self, query, key, value, attention_mask, head_mask)
    scale = value.size(-1) ** -0.5 if self.scale_attn_weights else 1.0
    if self.scale_attn_by_inverse_layer_idx:
        scale /= float(self.layer_idx + 1)
    # Old caches append the new keys to the old ones, so the causal mask is aligned to the end.
    out = _triton().gpt2_kernels.attention(query, key, value, causal=not self.is_cross_attention, scale=scale,
                                           dropout_p=dropout)
    return out, None


def _legacy_forward(self, *args, **kwargs):
    """Runs HF's eager ``GPT2Attention.forward`` (which calls ``self._attn``: ours), or this
    module.s own forward, untouched, when the weights are asked for."""
    if kwargs.get("output_attentions"):
        _fallback("output_attentions")
        own = self.__dict__.pop("_attn")  # HF's _attn for this call (not thread-safe; legacy only)
        try:
            return type(self).forward(self, *args, **kwargs)
        finally:
            self._attn = own
    return modeling_gpt2.GPT2Attention.forward(self, *args, **kwargs)


def _legacy(model, choice):
    for m in model.modules():
        if isinstance(m, modeling_gpt2.GPT2Attention):
            _unpatch(m, "forward", "_attn")
            if choice == "triton":
                _patch(m, forward=_legacy_forward, _attn=_legacy_attn)


# ---- LayerNorm and GELU -----------------------------------------------------------------


def _layer_norm_forward(f):
    def forward(self, x):
        return f(x, self.weight, self.bias, self.eps)

    return forward


def _mlp_forward(f):
    def forward(self, hidden_states):  # (B, T, d) -> (B, T, d)
        # HF's Conv1D stores W as (in, out); the switch's functions take nn.Linear's (out, in).
        h = f(hidden_states, self.c_fc.weight.t(), self.c_fc.bias)  # gelu(c_fc(x)): (B, T, 4d)
        return self.dropout(self.c_proj(h))

    return forward


def _patch(module, **methods):
    for name, f in methods.items():
        setattr(module, name, types.MethodType(f, module))  # an instance attribute shadows the class's


def _unpatch(module, *names):
    for name in names:
        module.__dict__.pop(name, None)


# ---- the public call --------------------------------------------------------------------


def _current(model):
    if hasattr(model, "_gpt2_kernels"):
        return model._gpt2_kernels
    loaded_ours = getattr(model.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION
    return {"attention": "triton" if loaded_ours else "torch"}


def apply_kernels(model, all=None, *, attention=None, layernorm=None, gelu=None):
    """Run this project's kernels inside a Hugging Face GPT-2, in place; returns the model.

    model: a ``GPT2LMHeadModel`` or ``GPT2Model`` (any ``GPT2PreTrainedModel``). Choices as
    ``GPT2.set_kernels``: ``all`` sets every op, keywords set one each and override it, None
    leaves an op as it is; "torch" is Hugging Face's own behaviour, "triton" this project's
    kernel, "sdpa" (attention only) HF's "sdpa". A refused request (unknown choice, a head size
    or activation the kernel lacks) raises ValueError and changes nothing. Parameters are not
    copied. See the module docstring for the calls that fall back to HF's path.
    """
    if not isinstance(model, modeling_gpt2.GPT2PreTrainedModel):
        raise TypeError(
            f"apply_kernels patches a Hugging Face GPT-2 (GPT2LMHeadModel, GPT2Model), got {type(model).__name__}"
        )
    config = model.config
    choice = _patched_ops(resolve_kernels(
        _current(model), all, head_size=config.n_embd // config.n_head,
        attention=attention, layernorm=layernorm, gelu=gelu,
    ))
    if choice["gelu"] == "triton" and config.activation_function not in TANH_GELU:
        raise ValueError(
            f"the Triton GELU kernel computes the tanh GELU ({' or '.join(TANH_GELU)}); this model's "
            f"activation_function is {config.activation_function!r}. Use gelu='torch'"
        )
    if choice["attention"] != "torch" and not REGISTRY and not (LEGACY and choice["attention"] == "triton"):
        raise ValueError(
            f"attention={choice['attention']!r} needs transformers >= 4.53 (or < 4.48 for 'triton'); "
            f"this is {transformers_version}. Use attention='torch' (HF's own)"
        )
    original = model.__dict__.setdefault("_gpt2_hf_attn", _original_attn(config))
    if REGISTRY:
        names = {"torch": original, "sdpa": "sdpa", "triton": ATTN_IMPLEMENTATION}
        _set_attn_implementation(model, names[choice["attention"]])
        for m in model.modules():
            if isinstance(m, modeling_gpt2.GPT2Attention):
                _unpatch(m, "forward")
                if choice["attention"] == "triton" and _active_collector is None:
                    _patch(m, forward=_noting_weights)
    else:
        _legacy(model, choice["attention"])
    layer_norm = kernel("layernorm", choice["layernorm"]) if choice["layernorm"] != "torch" else None
    linear_gelu = kernel("gelu", choice["gelu"]) if choice["gelu"] != "torch" else None
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            _unpatch(m, "forward")
            if layer_norm is not None and m.weight is not None and m.bias is not None and len(m.normalized_shape) == 1:
                _patch(m, forward=_layer_norm_forward(layer_norm))
        elif isinstance(m, modeling_gpt2.GPT2MLP):
            _unpatch(m, "forward")
            if linear_gelu is not None:
                _patch(m, forward=_mlp_forward(linear_gelu))
    model._gpt2_kernels = choice
    return model


def _original_attn(config):
    name = getattr(config, "_attn_implementation", None) or "eager"
    return "sdpa" if name == ATTN_IMPLEMENTATION else name  # loaded with ours: HF's default is sdpa


def kernels_of(model):
    """What ``apply_kernels`` chose for ``model``, e.g. {"attention": "triton", "layernorm": "torch", ...}."""
    return _patched_ops(resolve_kernels(_current(model)))


# The ops this patcher swaps in. The switch's table also has the model's own fused loss, which
# has no place here: Hugging Face computes its loss itself, from the logits it returns.
PATCHED_OPS = ("attention", "layernorm", "gelu")


def _patched_ops(choice):
    return {op: choice[op] for op in PATCHED_OPS}


__all__ = ["apply_kernels", "kernels_of", "attention_forward", "register", "ATTN_IMPLEMENTATION", "FALLBACKS"]
