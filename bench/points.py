"""What is measured: the sizes, sequence lengths and dtypes, one *point* (a shape of one
benchmark), the batch that fills the GPU at it, and the point's FLOP and byte counts.

Batch sizes (every point fills the GPU)
---------------------------------------
A point is one shape; its batch B is chosen from the sequence length S so that the launch has
enough work to fill the chip and run well past launch overhead:

- LayerNorm and GELU are row-wise: B = ceil(ROWS_TARGET / S), so B*S >= 65,536 rows (the
  kernel targets ask for >= 8,192). At width 768 one bf16 tensor is then 100 MB, about twice
  an H100's or H200's L2, and the L2 is flushed between runs anyway (``bench.timing.Timer``).
  Since the op only sees rows x width, every S <= 65,536 gives the same shape; it is measured once and
  the other S reuse that measurement (their rows say so).
- Attention: B = ceil(ATTN_TOKENS_TARGET / S) (B*S >= 16,384 tokens), then raised until the
  FlashAttention grid, B * heads * ceil(S / 128) query tiles, is at least 4 per multiprocessor.
- The model: B = ceil(MODEL_TOKENS_TARGET / S), 8,192 tokens a step, GPT-2 style.
- Generation: batch 1 (the target is stated at batch 1), a 128-token prompt, 256 new tokens.

Every batch is then halved while its fused-path working set would exceed a quarter of the
GPU's memory; a shape that still does not fit an implementation is recorded as "oom".

FLOP and byte counts (the same for every implementation of a point)
-------------------------------------------------------------------
The op families (bench/families.py) count with the functions at the end of this module;
``model_counts`` counts the whole models'. Bytes are what a one-pass implementation must move at
least (inputs read once, outputs written once); GB/s from them is an *effective* bandwidth,
comparable across implementations.

- LayerNorm, rows R, width N, element size e:
  fwd  = R*N*e (read x) + R*N*e (write y) + 2*N*e (weight, bias) + 8*R (fp32 mean, rstd)
  bwd  = 2*R*N*e (read x, dy) + N*e (weight) + 8*R (mean, rstd) + R*N*e (write dx) + 2*N*e
         (write dweight, dbias); a kernel's per-block partial sums are not counted.
- GELU with bias, rows R, width N: fwd = 2*R*N*e + N*e; bwd = 2*R*N*e (read x, dy) + N*e
  (bias) + R*N*e (dx) + N*e (dbias).
- add + LayerNorm: LayerNorm's bytes plus reading the residual and writing h once each:
  fwd = LayerNorm fwd + 2*R*N*e; bwd = LayerNorm bwd + 2*R*N*e (read dh, write the second
  input's gradient, which is the same tensor here but a separate write for an eager add).
- Linear cross-entropy, rows R, width d, vocabulary V: 2*R*V*d FLOPs per matmul, one forward
  (logits), three fwd+bwd (logits, dx, dweight); bytes are not counted (matmul-bound).
- Attention, causal, q (B,H,S,D): fwd FLOPs = 4*B*H*S*S*D / 2 (two matmuls, QK^T and PV, of
  2*S*S*D each per head, half of them masked); backward = 2.5 x forward (FlashAttention's
  convention: five matmuls of which one recomputes QK^T), so fwd+bwd = 3.5 x forward.
  Bytes fwd = (q, k, v, o) 4*B*H*S*D*e + 4*B*H*S (fp32 logsumexp); bwd = read q,k,v,o,dO and
  write dq,dk,dv: 8*B*H*S*D*e + 4*B*H*S.
- The model (model FLOPs, no recomputation; PaLM's appendix B): per token, 2 FLOPs per weight of
  every matmul, 12*L*d^2 (attention qkv and projection, MLP up and down) + d*V (LM head), plus
  causal attention 2*L*S*d (QK^T and PV, halved); a training step is 3x the forward. Biases,
  LayerNorm, GELU, softmax and the optimizer are not counted. The count is
  ``gpt2.GPT2Config.flops_per_token``, which the trainer's MFU uses too. MFU = achieved /
  measured matmul rate.
"""

import math
import platform
from dataclasses import dataclass

from gpt2.config import SIZES as _GPT2_SIZES

SIZES = tuple(_GPT2_SIZES)  # "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl": gpt2.config's table
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
DTYPES = ("bf16", "fp16", "fp32")
ROW_WISE = ("layer_norm", "gelu", "add_layer_norm")  # ops that see only rows x width

# Batch-size rules (see the module docstring).
ROWS_TARGET = 65536
ATTN_TOKENS_TARGET = 16384
ATTN_TILE_M = 128
PROGRAMS_PER_SM = 4
MODEL_TOKENS_TARGET = 8192
GEN_BATCH, GEN_PROMPT, GEN_NEW = 1, 128, 256
MEM_FRACTION = 0.25

# What a run without a GPU plans for (``--dry-run``): an H100 SXM.
DEFAULT_DEVICE = dict(name="(no GPU: planned for an H100)", sm_count=132, total_mem=80 * 2**30)

# A tiny GPT-2 for the interpreter smoke run; D = 64 as in every real GPT-2.
SMOKE_SIZE = "tiny"
SMOKE_CONFIG = dict(n_layer=2, n_head=2, n_embd=128, vocab_size=512, block_size=64)
SMOKE_SEQ_LENS = (16, 32)
SMOKE_MODEL_SEQ_LENS = (16,)
SMOKE_TARGETS = dict(rows=32, attn_tokens=32, model_tokens=16, gen_prompt=4, gen_new=4)

SMOKE_LABEL = "interpreter smoke run — not performance"


def dtype_bytes(dtype):
    return {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]


def torch_dtype(dtype):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def model_config(size, **overrides):
    """The GPT2Config of a size name (or the smoke run's tiny one)."""
    from gpt2.config import GPT2Config

    if size == SMOKE_SIZE:
        return GPT2Config(**{**SMOKE_CONFIG, **overrides})
    return GPT2Config.from_name(size, **overrides)


@dataclass(frozen=True)
class Point:
    """One shape of one benchmark; every implementation is measured on it."""

    family: str  # a name in bench.families.FAMILIES
    op: str  # "layer_norm", "gelu_bias", "attention_causal", "gpt2_forward", ...
    pass_: str  # "fwd" | "bwd" | "fwd+bwd" | "train" | "generate"
    size: str  # a GPT-2 size name
    width: int  # the row width the op sees (n_embd; 4*n_embd for GELU; head size for attention)
    heads: int
    seq_len: int
    batch: int
    dtype: str
    extra: tuple = ()  # (key, value) pairs, e.g. (("prompt", 128), ("new", 256)) for generation

    @property
    def rows(self):
        return self.batch * self.seq_len

    def get(self, key, default=None):
        return dict(self.extra).get(key, default)

    def key(self):
        """Rows of one point share this key (speedups compare within it)."""
        return (self.family, self.op, self.pass_, self.size, self.width, self.heads, self.seq_len,
                self.batch, self.dtype)

    def shape_key(self):
        """What the measured kernel actually sees; row-wise ops at different S can share it."""
        if self.family in ROW_WISE or self.family == "loss":  # the loss sees (rows, d) and (V, d)
            return (self.family, self.op, self.pass_, self.width, self.rows, self.dtype)
        return self.key()

    def label(self):
        return f"{self.family} {self.pass_} {self.size} S={self.seq_len} B={self.batch}"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    sm_count: int
    total_mem: int


def without_compile_in_smoke(impls, point):
    """A family's implementations, less torch.compile in the smoke run (the tiny size):
    compiling on the CPU costs more than the rest of the family, and the other families' smoke
    points already cover it."""
    return tuple(i for i in impls if i[0] != "compile") if point.size == SMOKE_SIZE else impls


def family_points(family, ops, sizes, seq_lens, dtype, info, smoke=False, width=lambda cfg: cfg.n_embd):
    """A point per size, S and pass; ops maps each pass to its op name, width(cfg) is the row
    width the op sees."""
    out = []
    for size in sizes:
        cfg = model_config(size)
        w = width(cfg)
        for S in seq_lens:
            B = batch_for(family, S, width=w, heads=cfg.n_head, dtype=dtype, device=info, smoke=smoke)
            out += [Point(family, op, p, size, w, cfg.n_head, S, B, dtype) for p, op in ops.items()]
    return out


def batch_for(family, seq_len, *, width, heads, dtype, device, smoke=False):
    """The batch B for a point (module docstring: "Batch sizes"); at least 1."""
    elem = dtype_bytes(dtype)
    if family in ROW_WISE:
        target = SMOKE_TARGETS["rows"] if smoke else ROWS_TARGET
        b = max(1, math.ceil(target / seq_len))
        working = lambda b: 4 * b * seq_len * width * elem  # noqa: E731 (x, y, dy, dx)
    elif family == "attention":
        target = SMOKE_TARGETS["attn_tokens"] if smoke else ATTN_TOKENS_TARGET
        b = max(1, math.ceil(target / seq_len))
        tiles = math.ceil(seq_len / ATTN_TILE_M)
        min_programs = PROGRAMS_PER_SM * device.sm_count
        while b * heads * tiles < min_programs:
            b += 1
        working = lambda b: 8 * b * heads * seq_len * width * elem  # noqa: E731 (q,k,v,o + grads)
    elif family in ("model", "hf", "loss"):  # the loss: the LM head of a training step's tokens
        target = SMOKE_TARGETS["model_tokens"] if smoke else MODEL_TOKENS_TARGET
        return max(1, math.ceil(target / seq_len))
    else:
        raise ValueError(f"unknown family {family!r}")
    while b > 1 and working(b) > MEM_FRACTION * device.total_mem:
        b //= 2
    return b


def device_info(smoke=False):
    import torch

    if smoke or not torch.cuda.is_available():
        if smoke:
            return DeviceInfo(name=f"CPU ({platform.processor() or platform.machine()}), Triton interpreter",
                              sm_count=1, total_mem=8 * 2**30)
        return DeviceInfo(**DEFAULT_DEVICE)
    p = torch.cuda.get_device_properties(0)
    return DeviceInfo(name=p.name, sm_count=p.multi_processor_count, total_mem=p.total_memory)


# ---- FLOP and byte counts (the module docstring has the formulas) ---------------------------


def layer_norm_bytes(rows, width, elem, pass_):
    fwd = 2 * rows * width * elem + 2 * width * elem + 8 * rows
    bwd = 3 * rows * width * elem + 3 * width * elem + 8 * rows
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def add_layer_norm_bytes(rows, width, elem, pass_):
    extra = {"fwd": 2, "bwd": 2, "fwd+bwd": 4}[pass_] * rows * width * elem
    return layer_norm_bytes(rows, width, elem, pass_) + extra


def gelu_bytes(rows, width, elem, pass_):
    fwd = 2 * rows * width * elem + width * elem
    bwd = 3 * rows * width * elem + 2 * width * elem
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def linear_cross_entropy_flops(rows, width, vocab, pass_):
    return {"fwd": 1, "fwd+bwd": 3}[pass_] * 2 * rows * vocab * width


def attention_flops(batch, heads, seq_q, seq_k, head_dim, pass_, causal=True):
    fwd = 4 * batch * heads * seq_q * seq_k * head_dim
    if causal:
        fwd //= 2
    return {"fwd": fwd, "bwd": fwd * 5 // 2, "fwd+bwd": fwd * 7 // 2}[pass_]


def attention_bytes(batch, heads, seq_q, seq_k, head_dim, elem, pass_):
    bh = batch * heads
    fwd = bh * (2 * seq_q + 2 * seq_k) * head_dim * elem + 4 * bh * seq_q
    bwd = bh * (4 * seq_q + 4 * seq_k) * head_dim * elem + 4 * bh * seq_q
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def model_flops(cfg, batch, seq_len, pass_):
    """Model FLOPs of a forward ("fwd") or training step ("train"): GPT2Config.flops_per_token,
    the count the trainer's MFU uses too."""
    return batch * seq_len * cfg.flops_per_token(seq_len, train={"fwd": False, "train": True}[pass_])


def generation_bytes(cfg, batch, prompt, new, elem):
    """Bytes a decode step must read, summed over the new tokens: every weight once per step
    (the parameters, counted once: the LM head is tied to the token embedding), and the
    keys and values cached so far."""
    params = cfg.matmul_weights  # 12*L*d^2 in the blocks, d*V: the tied embedding read once, as the LM head
    total = 0
    for step in range(new):
        cached = prompt + step
        total += params * elem + 2 * cfg.n_layer * batch * cached * cfg.n_embd * elem
    return total


def model_counts(point):
    """(flops, bytes) of a point of the whole-model families (model, hf, generation); None where
    the count does not apply."""
    elem = dtype_bytes(point.dtype)
    if point.family in ("model", "hf"):
        cfg = model_config(point.size, block_size=max(1024, point.seq_len))
        if point.pass_ == "generate":
            prompt, new = point.get("prompt"), point.get("new")
            return None, generation_bytes(cfg, point.batch, prompt, new, elem)
        return model_flops(cfg, point.batch, point.seq_len, point.pass_), None
    if point.family == "generation":
        cfg = model_config(point.size)
        if point.pass_ == "generate":
            # per new token, as the row's ms is
            return None, generation_bytes(cfg, point.batch, point.get("prompt"), point.get("new"), elem) // point.get("new")
        # decode attention, Sq = 1: K and V read once, q read and o written
        B, H, Sk, D = point.batch, point.heads, point.seq_len, point.width
        return 4 * B * H * Sk * D, (2 * Sk + 2) * B * H * D * elem
    raise ValueError(f"{point.family!r} is not a whole-model family")
