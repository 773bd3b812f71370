"""GPT-2's hyper-parameters, and the four published sizes."""

import math
import numbers
from dataclasses import dataclass, fields, replace

COUNTS = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")


@dataclass
class GPT2Config:
    n_layer: int = 12  # decoder blocks stacked
    n_head: int = 12  # attention heads per block; head size is n_embd // n_head (64 in every GPT-2)
    n_embd: int = 768  # the residual stream's width (d_model)
    # 50,000 BPE merges + 256 byte tokens + <|endoftext|>. Not a multiple of 64, which costs the
    # LM-head matmul a little; we keep the real number so checkpoints load as they are.
    vocab_size: int = 50257
    block_size: int = 1024  # the longest context the learned position table covers
    layer_norm_epsilon: float = 1e-5  # GPT-2's value (PyTorch's LayerNorm default too)
    # GPT-2 was trained with dropout 0.1; 0 makes the model deterministic, which fine-tuning
    # small data rarely needs to change and the kernel tests rely on.
    dropout: float = 0.0

    def __post_init__(self):
        # Checked here, where every config is built (in code, by from_name, from a checkpoint's
        # config.json): a nonsense value would otherwise surface far away, e.g. a NaN epsilon as
        # NaN logits on the eager path and an error on the Triton one.
        for f in COUNTS:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):  # 12.0 is not a count
                raise TypeError(f"GPT2Config.{f} must be an int >= 1, got {type(v).__name__} {v!r}")
            if v < 1:
                raise ValueError(f"GPT2Config.{f} must be an int >= 1, got {v}")
            setattr(self, f, int(v))  # numpy ints become plain ints, so configs compare and serialise
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        # epsilon >= 0 as torch's LayerNorm and gpt2_kernels.layer_norm accept; dropout in [0, 1).
        for f, ok, allowed in (("layer_norm_epsilon", lambda x: 0 <= x < math.inf, "a finite number >= 0"),
                               ("dropout", lambda x: 0 <= x < 1, "a number in [0, 1)")):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"GPT2Config.{f} must be {allowed}, got {type(v).__name__} {v!r}")
            if not ok(v):  # also refuses NaN, for which every comparison is False
                raise ValueError(f"GPT2Config.{f} must be {allowed}, got {v!r}")
            setattr(self, f, float(v))

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    @property
    def matmul_weights(self):
        """Weights a token meets in a matmul: 12 * n_layer * n_embd^2 in the blocks (qkv,
        attention projection, MLP up and down) and n_embd * vocab_size in the LM head (tied to
        wte, so counted here once, as a matmul; the embedding lookups are not matmuls)."""
        return 12 * self.n_layer * self.n_embd**2 + self.n_embd * self.vocab_size

    def flops_per_token(self, seq_len, train=True):
        """Model FLOPs per token of a seq_len-token sequence (6N-style, causal attention halved):
        2 per matmul weight, plus the attention matmuls QK^T and PV, 4 * n_layer * n_embd *
        seq_len of which the causal mask leaves half; a training step is 3x the forward (the
        backward's two matmuls per forward one). Biases, LayerNorm, GELU, softmax, the optimizer
        and any recomputation are not counted (PaLM's appendix B). The one count behind both the
        trainer's and the benchmark's MFU."""
        forward = 2 * self.matmul_weights + 2 * self.n_layer * self.n_embd * seq_len
        return 3 * forward if train else forward

    @classmethod
    def from_name(cls, name, **overrides):
        """One of "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", optionally with fields changed."""
        if name not in SIZES:
            raise ValueError(f"unknown GPT-2 size {name!r}; choose one of {', '.join(SIZES)}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown GPT2Config field(s): {', '.join(sorted(unknown))}")
        return replace(cls(**SIZES[name]), **overrides)


# The shapes OpenAI published (Radford et al., 2019, Table 2 and the released checkpoints).
SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}
