"""The fast tokenizer (tiktoken) and the teaching BPE behave the same on invalid input
(issue 16), by one documented policy (gpt2/bpe.py, "Invalid input"):

- encode: a str only (TypeError otherwise); a lone surrogate, which has no UTF-8 bytes, is a
  ValueError naming its position (tiktoken alone would quietly encode it as U+FFFD);
- decode: ids must be ints in [0, vocab_size) (ValueError naming the first bad one); bytes
  that are not valid UTF-8 decode to U+FFFD in both.
"""

import pytest

from gpt2.bpe import BPETokenizer
from gpt2.tokenizer import Tokenizer


@pytest.fixture(scope="module", params=["tiktoken", "teaching_bpe"])
def tok(request):
    return Tokenizer() if request.param == "tiktoken" else BPETokenizer.from_files()


@pytest.mark.parametrize("text, index", [("\ud800", 0), ("ab\udfff", 2), ("x \ud83e\udd84", 2)])
def test_lone_surrogates_are_refused(tok, text, index):
    with pytest.raises(ValueError, match=rf"surrogate U\+{ord(text[index]):04X} at index {index}"):
        tok.encode(text)


@pytest.mark.parametrize("text", [b"bytes", None, 3, ["a"]])
def test_encode_takes_a_str(tok, text):
    with pytest.raises(TypeError, match="encode takes a str"):
        tok.encode(text)


@pytest.mark.parametrize("ids", [[50257], [-1], [1.0], [True], [15496, None], [10**20]])
def test_decode_refuses_ids_outside_the_vocabulary(tok, ids):
    with pytest.raises(ValueError, match=r"token ids must be ints in \[0, 50257\)"):
        tok.decode(ids)


def test_unknown_special_token(tok):
    with pytest.raises(ValueError, match="unknown special token"):
        tok.encode("a", allowed_special={"<|im_start|>"})


def test_invalid_utf8_decodes_to_replacement_character(tok):
    assert tok.decode([172]) == "\ufffd"  # id 172 is the lone byte 0xF0, a truncated 4-byte character


def test_decode_takes_integers_of_any_integral_type(tok):
    # A list of numpy integers (list(np.array(...))) or of 0-d integer tensors holds ids too.
    import numpy as np
    import torch

    ids = tok.encode("Hello world")
    assert tok.decode(list(np.array(ids))) == "Hello world"
    assert tok.decode([np.int32(i) for i in ids]) == "Hello world"
    assert tok.decode(list(torch.tensor(ids))) == "Hello world"
    assert tok.decode(list(torch.tensor(ids, dtype=torch.int32))) == "Hello world"
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "Hello world"
    for bad in ([np.float64(15496.0)], [torch.tensor(15496.0)], [np.bool_(True)], [torch.tensor(True)],
                [np.int64(-1)], [torch.tensor([15496])]):
        with pytest.raises(ValueError, match=r"token ids must be ints in \[0, 50257\)"):
            tok.decode(bad)
