"""gpt2.Tokenizer (tiktoken) and gpt2.bpe (plain Python) against each other and against
Hugging Face's tokenizers library built from the same two files: three implementations of
GPT-2's byte-level BPE that must give the same ids."""

import hashlib
import random

import pytest

from gpt2 import Tokenizer
from gpt2.bpe import BPETokenizer, bytes_to_unicode
from gpt2.tokenizer import data_files, encoding

VARIED = [
    "Hello world",
    "hello World HELLO wORLD",
    "",
    " ",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've said it's what we'd do, aren't we? 'tis",
    "I'M SURE YOU'LL — upper-case contractions are not split: DON'T",
    "don’t (curly apostrophe) vs don't",
    "Numbers: 0 7 42 3.14159 1,000,000 -17 2024-06-01 0x1F 1e-9 ² ٣٤ 一二三",
    "Punctuation!!! ??? ... --- ((nested)) [x] {y} <z> @#$%^&*_+=|\\/~`",
    "Whitespace:  two   three    four\t\ttabs\nnewline\n\n\nthree newlines \r\n crlf   ",
    "   leading spaces and trailing spaces   ",
    "\n\n\n",
    "\t \t \n  \u00a0nbsp\u3000ideographic space\u2009thin space",
    "Accents: café naïve résumé Ångström Zürich São Paulo Dvořák ñandú",
    "Combining: e\u0301 vs é, a\u0308 vs ä",
    "CJK: 我爱自然语言处理。日本語のテキスト、한국어 텍스트",
    "Cyrillic Ελληνικά العربية עברית हिन्दी ไทย",
    "Emoji: 🙂👍🏽 👩‍👩‍👧‍👦 🇫🇷 ❤️ 🦄🦄🦄",
    "Mixed: abc123def 4ever e=mc² ½ Ⅻ",
    "code: def f(x):\n    return x ** 2  # square\n",
    "URL https://example.com/a?b=c&d=e#f and e-mail a.b@c.org",
    "<|endoftext|>",
    "one<|endoftext|>two",
    "Doc A.<|endoftext|>\n\nDoc B <|endoftext|><|endoftext|> end",
    "almost special: <|endoftext| <endoftext|> <|ENDOFTEXT|>",
    "\x00\x01\x07 control \x1b[31m red \x7f",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    " 's 't 're 've 'm 'll 'd ' s",
]

# An alphabet of awkward pieces for random strings: letters of several scripts, digits of several
# systems, combining marks, emoji and ZWJ, every kind of whitespace, apostrophes, the special token.
ALPHABET = [
    *"abcxyzABCXYZ", *"éüñßøÅ", *"жЯλΩ", *"世界中文日本語한", *"0123456789", *"٣²½Ⅻ",
    "\u0301", "\u0308", *"🙂👍🏽🦄🇫🇷", "\u200d", "\ufe0f",
    " ", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2009", "\u0085", "\x0b", "\x0c",
    *".,;:!?-_()[]{}<>|/\\\"'`~@#$%^&*+=", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "’",
    "<|endoftext|>", "<|", "|>", "endoftext", "\x00", "\x7f",
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.from_files()


@pytest.fixture(scope="module")
def hf():
    """Hugging Face's Rust BPE built from the same files (not via transformers: its v5
    tokenizer classes take a vocab dict, and the library is the thing under comparison)."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab_bpe, encoder_json = data_files()
    t = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(encoder_json, vocab_bpe))
    t.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", special=True)])
    return t


def random_strings(n, max_len=40):
    rng = random.Random()  # fresh each run; the failing string is printed by the assert
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, max_len))) for _ in range(n)]


def test_hello_world(tok, bpe, hf):
    assert tok.encode("Hello world") == [15496, 995]
    assert bpe.encode("Hello world") == [15496, 995]
    assert hf.encode("Hello world").ids == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"


def test_vocabulary(tok, bpe):
    assert tok.vocab_size == bpe.vocab_size == 50257
    assert tok.eot_token == bpe.eot_token == 50256
    assert tok.decode([50256]) == "<|endoftext|>"
    # Ids 0..255 are single bytes, in the data-gym order: printable characters first.
    assert tok.decode([0]) == "!" and tok.decode([ord("A") - ord("!")]) == "A"
    single = [tok._enc.decode_single_token_bytes(i) for i in range(256)]
    assert sorted(single) == [bytes([b]) for b in range(256)]


def test_data_files_are_openais():
    """The files hash to what tiktoken's own "gpt2" encoding (which downloads them from OpenAI)
    expects: the hashes are read from tiktoken's source, not from ours."""
    import inspect
    import re

    openai_public = pytest.importorskip("tiktoken_ext.openai_public")
    source = inspect.getsource(openai_public.gpt2)
    for path, name in zip(data_files(), ("vocab_bpe", "encoder_json")):
        (want,) = re.findall(rf'{name}_hash="([0-9a-f]{{64}})"', source)
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == want, path


def test_a_file_that_is_not_openais_is_refused(tmp_path, monkeypatch):
    import importlib.util
    import shutil
    from types import SimpleNamespace

    (tmp_path / "data").mkdir()
    for path in data_files():
        shutil.copy(path, tmp_path / "data")
    damaged = tmp_path / "data" / "encoder.json"
    body = damaged.read_bytes()
    damaged.write_bytes(body[:-2] + bytes([body[-2] ^ 1]) + body[-1:])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(submodule_search_locations=[tmp_path]))
    with pytest.raises(ValueError, match="is not OpenAI's GPT-2 encoder.json: sha256"):
        data_files()


def test_encoding_is_built_once():
    assert Tokenizer()._enc is Tokenizer()._enc is encoding()


@pytest.mark.parametrize("text", VARIED)
def test_varied_text(text, tok, bpe, hf):
    ids = tok.encode(text)
    assert bpe.encode(text) == ids
    assert hf.encode(text).ids == ids
    assert tok.decode(ids) == text and bpe.decode(ids) == text


def test_random_strings(tok, bpe, hf):
    for text in random_strings(1000):
        ids = tok.encode(text)
        assert bpe.encode(text) == ids, text
        assert hf.encode(text).ids == ids, text
        assert tok.decode(ids) == text and bpe.decode(ids) == text, text


def test_random_strings_without_special(tok, bpe):
    for text in random_strings(100):
        ids = tok.encode(text, allowed_special=())
        assert 50256 not in ids
        assert bpe.encode(text, allowed_special=()) == ids, text
        assert tok.decode(ids) == text


def test_special_token_policy(tok, bpe):
    text = "a<|endoftext|>b"
    assert tok.encode(text) == [64, 50256, 65]  # default: recognised
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    plain = tok.encode(text, allowed_special=set())  # as text: "<", "|", "endoftext", ...
    assert 50256 not in plain and len(plain) > 3 and tok.decode(plain) == text
    assert plain == tok.encode("a") + tok.encode("<|endoftext|>", allowed_special=()) + tok.encode("b")
    assert bpe.encode(text, allowed_special=()) == plain
    with pytest.raises(ValueError, match="unknown special token"):
        tok.encode(text, allowed_special={"<|im_start|>"})


def test_errors(tok):
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    for bad in ([50257], [-1], [1.0], [True]):
        with pytest.raises(ValueError, match=r"\[0, 50257\)"):
            tok.decode(bad)


def test_decode_tensor_and_partial_utf8(tok):
    import torch

    ids = tok.encode("🦄 ok")
    assert tok.decode(torch.tensor(ids)) == "🦄 ok"
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.tensor([ids]))
    # The unicorn's four UTF-8 bytes span several tokens: a cut inside it decodes to U+FFFD.
    assert len(tok._enc.decode_single_token_bytes(ids[0])) < 4
    assert tok.decode(ids[:1]).startswith("\ufffd")


def test_bytes_to_unicode():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_merge_steps(bpe, tok):
    steps = bpe.merge_steps(" world")
    assert steps[0] == ["Ġ", "w", "o", "r", "l", "d"]
    assert steps[-1] == ["Ġworld"] and bpe.encoder["Ġworld"] == 995
    # Each step joins exactly one kind of pair, so it is one to n/2 symbols shorter.
    for a, b in zip(steps, steps[1:]):
        assert "".join(a) == "".join(b) and len(b) < len(a)
    assert [bpe.encoder[s] for s in bpe.merge_steps(" Zürich")[-1]] == tok.encode(" Zürich")
