"""GPT-2 in clear PyTorch, with a switch that swaps Triton kernels into its hot path.

    from gpt2 import GPT2, GPT2Config, Tokenizer
    model = GPT2(GPT2Config.from_name("gpt2")).set_kernels("triton")
"""

from .attention import CausalSelfAttention, MultiHeadAttention
from .config import GPT2Config
from .model import GPT2, KVCache
from .positional import LearnedPositionalEncoding, PositionalEncoding

__all__ = [
    "GPT2", "GPT2Config", "KVCache", "Tokenizer",
    "MultiHeadAttention", "CausalSelfAttention", "PositionalEncoding", "LearnedPositionalEncoding",
]


def __getattr__(name):
    if name == "Tokenizer":
        from .tokenizer import Tokenizer

        return Tokenizer
    raise AttributeError(f"module 'gpt2' has no attribute {name!r}")
