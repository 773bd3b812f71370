"""Property-based tests (hypothesis) of the checkpoint loader and the tokenizers.

- Random byte corruptions of a checkpoint that save_pretrained wrote (its config.json and its
  model.safetensors) give an error that names a file, or the very model that was saved:
  never a silently different one.
- The fast tokenizer and the teaching BPE agree on random text (any Unicode, lone surrogates
  included) and on random ids: the same ids, the same text, or the same error; and
  decode(encode(text)) == text whenever encode succeeds.
- generate(eos_token_id=...) ends where the last row of a random batch produced it, whatever
  check_every is.

Examples per test: tests/conftest.py's profiles (HYPOTHESIS_PROFILE=long for a longer run).
"""

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gpt2 import GPT2, GPT2Config  # noqa: E402
from gpt2.bpe import BPETokenizer  # noqa: E402
from gpt2.tokenizer import Tokenizer  # noqa: E402
from tests.conftest import examples  # noqa: E402
from tests.gpt2.test_generate import CountSyncs, tiny  # noqa: E402

FILES = ("config.json", "model.safetensors")


@pytest.fixture(scope="module")
def saved():
    """A tiny model, saved once: (model, its directory, {file: bytes})."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=13, block_size=6)).eval()
    directory = Path(tempfile.mkdtemp(prefix="ckpt-"))
    model.save_pretrained(directory)
    yield model, directory, {f: (directory / f).read_bytes() for f in FILES}
    shutil.rmtree(directory)


@st.composite
def corruptions(draw, sizes):
    """1 to 4 (file, offset, xor mask) byte edits, biased to the safetensors header (its first
    bytes and JSON) where a flip is most likely to parse."""
    edits = []
    for _ in range(draw(st.integers(1, 4))):
        f = draw(st.sampled_from(FILES))
        upper = sizes[f] - 1 if draw(st.booleans()) or f == "config.json" else min(sizes[f] - 1, 400)
        edits.append((f, draw(st.integers(0, upper)), draw(st.integers(1, 255))))
    return edits


@settings(max_examples=examples(25))
@given(data=st.data())
def test_corrupted_checkpoint_is_an_error_or_the_same_model(saved, data):
    model, _, original = saved
    edits = data.draw(corruptions({f: len(b) for f, b in original.items()}), label="edits")
    with tempfile.TemporaryDirectory() as tmp:
        files = {f: bytearray(b) for f, b in original.items()}
        for f, offset, mask in edits:
            files[f][offset] ^= mask
        for f, b in files.items():
            (Path(tmp) / f).write_bytes(bytes(b))
        try:
            back = GPT2.from_pretrained(tmp)
        except (ValueError, TypeError, FileNotFoundError) as e:
            assert any(f in str(e) for f in FILES) or "config.json" in str(e), f"error names no file: {e}"
            return
    assert back.config == model.config
    got, want = back.state_dict(), model.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} loaded different values, silently"


# ---- tokenizers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def both():
    return Tokenizer(), BPETokenizer.from_files()


def _outcome(f, arg):
    try:
        return f(arg)
    except (ValueError, TypeError) as e:
        return type(e)


# Any code point, lone surrogates (category Cs) included, and pieces GPT-2's pattern splits on.
PIECES = ["a", " ", "\n", "'s", "1", "é", "🦄", "<|endoftext|>", "\ud800", "\t", "  ", "'ll"]
TEXT = st.text(st.characters(codec=None), max_size=30) | st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@settings(max_examples=examples(40))
@given(text=TEXT)
def test_tokenizers_agree_on_any_text(both, text):
    fast, teaching = both
    ids = _outcome(fast.encode, text)
    assert ids == _outcome(teaching.encode, text)
    if isinstance(ids, list):
        assert fast.decode(ids) == teaching.decode(ids) == text
    else:  # the only text refused is text with a lone surrogate
        assert ids is ValueError and any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@settings(max_examples=examples(30))
@given(ids=st.lists(st.integers(-3, 50260) | st.sampled_from([True, 1.0, None]), max_size=12))
def test_tokenizers_agree_on_any_ids(both, ids):
    fast, teaching = both
    assert _outcome(fast.decode, ids) == _outcome(teaching.decode, ids)


@settings(max_examples=examples(6))
@given(check_every=st.integers(1, 9), rows=st.integers(1, 3), pick=st.integers(0, 9), seed=st.integers(0, 99))
def test_early_stop_on_eos_cuts_after_the_step_where_the_last_row_finished(check_every, rows, pick, seed):
    """The result ends with the step at which the last row produced eos_token_id, whatever
    check_every is (it sets how often the host looks, not where the result is cut); rows that
    finished earlier are padded with it; one sync a check, and one at the end."""
    torch.manual_seed(seed)
    model = tiny()
    T, n = 4, 24
    idx = torch.randint(0, model.config.vocab_size, (rows, T))
    greedy = model.generate(idx, n, temperature=0)
    eos = int(greedy[0, T + pick])  # a token the first row makes at new position `pick`, or earlier
    firsts = [int(hit[0]) if len(hit := (row[T:] == eos).nonzero()) else None for row in greedy]
    with CountSyncs() as c:
        out = model.generate(idx, n, temperature=0, eos_token_id=eos, check_every=check_every)
    last = n - 1 if None in firsts else max(firsts)
    assert out.shape == (rows, T + last + 1)
    for b, first in enumerate(firsts):
        end = T + (last + 1 if first is None else first + 1)
        assert torch.equal(out[b, :end], greedy[b, :end])
        assert (out[b, end:] == eos).all()  # padded after its eos
    assert c.n <= 1 + -(-(last + 1) // check_every) + 1  # the prompt's range check, the checks, the end
