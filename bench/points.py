"""What is measured: the sizes, sequence lengths and dtypes, one *point* (a shape of one
benchmark) and the batch that fills the GPU at it.

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

