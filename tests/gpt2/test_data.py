"""gpt2/data.py: text, folders and token files -> the ids the tokenizer gives, cached once;
the window sampler. The expected ids come from ``Tokenizer.encode`` on the same text."""

import numpy as np
import pytest
import torch

from gpt2 import data as D
from gpt2.tokenizer import EOT_ID, Tokenizer

TEXT = "To be, or not to be,--that is the question:--\nWhether 'tis nobler in the mind to suffer\n"
# Line breaks after spaces, blank lines, tabs, non-ASCII: the places where cutting text into
# pieces could change the tokens (see data._cut_points).
AWKWARD = "Éloge  \n\n  naïve café\t\nline one\nline two   \n\n\nΣ 3.14\r\nend\n" * 40


def ids(text):
    return Tokenizer().encode(text, allowed_special=()) + [EOT_ID]


def all_tokens(d):
    return np.concatenate([d.train, d.val]).tolist()


def test_text_file_is_tokenized_with_an_eot_and_split_at_the_tail(tmp_path):
    f = tmp_path / "play.txt"
    f.write_text(TEXT * 30 + "<|endoftext|>")  # the literal stays text: 7 tokens, not id 50256
    d = D.load_tokens(f, tmp_path / "cache", val_fraction=0.25)
    want = ids(TEXT * 30 + "<|endoftext|>")
    assert all_tokens(d) == want
    assert len(d.val) == int(len(want) * 0.25) and d.val.tolist() == want[len(want) - len(d.val):]
    assert d.train.dtype == np.uint16 and d.max_id == EOT_ID and "tokenized" in d.cached


def test_folder_takes_its_txt_files_sorted_each_followed_by_eot(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second document")
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "README.md").write_text("not training text")
    (tmp_path / ".hidden.txt").write_text("not this either")
    d = D.load_tokens(tmp_path, tmp_path / "cache", val_fraction=0.0)
    assert all_tokens(d) == ids("first document") + ids("second document")
    assert len(d.val) == 0


def test_token_files(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 1000, 500).astype(np.uint16)
    tokens.tofile(tmp_path / "corpus.bin")
    d = D.load_tokens(tmp_path / "corpus.bin", val_fraction=0.1)
    assert d.train.tolist() == tokens[:450].tolist() and d.val.tolist() == tokens[450:].tolist()
    assert d.max_id == int(tokens.max()) and d.cached == ""
    # nanoGPT's layout: train.bin and val.bin side by side, used as they are
    tokens[:300].tofile(tmp_path / "train.bin")
    tokens[300:].tofile(tmp_path / "val.bin")
    for path in (tmp_path / "train.bin", tmp_path):
        d = D.load_tokens(path, val_fraction=0.5)
        assert d.train.tolist() == tokens[:300].tolist() and d.val.tolist() == tokens[300:].tolist()


def test_cache_is_reused_and_renewed_when_the_text_changes(tmp_path, monkeypatch):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    first = D.load_tokens(f, tmp_path / "cache")

    def no_tokenizer(*a, **k):
        raise AssertionError("the tokenizer ran although the cache holds this text")

    monkeypatch.setattr(D, "tokenize", no_tokenizer)
    again = D.load_tokens(f, tmp_path / "cache")
    assert again.cached == "reused" and all_tokens(again) == all_tokens(first)
    monkeypatch.undo()
    f.write_text(TEXT + "And by opposing end them?\n")
    changed = D.load_tokens(f, tmp_path / "cache", val_fraction=0.0)
    assert all_tokens(changed) == ids(TEXT + "And by opposing end them?\n")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_parallel_pieces_give_the_same_ids_as_one_pass(tmp_path):
    f = tmp_path / "big.txt"
    f.write_text(TEXT * 50 + AWKWARD + TEXT * 50)
    pieces = D._cut_points(f, 700)
    assert len(pieces) > 10  # it really was cut
    n, _, _, sha256 = D.tokenize([f], tmp_path / "par.bin", parallel_min_bytes=0, piece_bytes=700, workers=2)
    got = np.fromfile(tmp_path / "par.bin", dtype=np.uint16).tolist()
    assert n == len(got) and got == ids(f.read_bytes().decode())  # bytes: read_text would turn \r\n into \n
    assert sha256 == D._file_sha256(tmp_path / "par.bin")


@pytest.mark.parametrize("path, files, message", [
    ("missing.txt", {}, "no such file"),
    ("e.txt", {"e.txt": ""}, "holds no text"),
    ("w.txt", {"w.txt": " \n\n\t "}, "holds no text"),
    ("d", {"d/notes.md": "hi"}, "no .txt files"),
    ("odd.bin", {"odd.bin": b"\x01\x00\x02"}, "odd number of bytes"),
    ("latin1.txt", {"latin1.txt": b"caf\xe9 au lait"}, "not UTF-8"),
])
def test_bad_data_is_refused_with_a_reason(tmp_path, path, files, message):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        D.load_tokens(tmp_path / path, tmp_path / "cache")


def test_windows_depend_only_on_the_seed_and_step():
    a = D.window_starts(0, D.TRAIN, (5, 0), 8, 1000, 16)
    assert a.tolist() == D.window_starts(0, D.TRAIN, (5, 0), 8, 1000, 16).tolist()
    assert a.tolist() != D.window_starts(0, D.TRAIN, (6, 0), 8, 1000, 16).tolist()
    assert a.tolist() != D.window_starts(1, D.TRAIN, (5, 0), 8, 1000, 16).tolist()
    assert 0 <= a.min() and a.max() < 1000 - 16
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = D.get_batch(tokens, a, 16)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 0], torch.as_tensor(a)) and torch.equal(y, x + 1)


@pytest.mark.parametrize("damage", ["truncated", "byte_changed", "meta_unreadable", "no_digest"])
def test_a_damaged_token_cache_is_noticed_and_rebuilt(tmp_path, damage):
    """A cache whose tokens.bin is not what meta.json says (cut short, a byte changed) is not
    trained on: the first process tokenizes again; the others, which may not write, refuse it."""
    import json

    f = tmp_path / "t.txt"
    f.write_text(TEXT * 20)
    first = all_tokens(D.load_tokens(f, tmp_path / "cache", val_fraction=0.0))  # a copy: the file changes
    (folder,) = (tmp_path / "cache").iterdir()
    tokens, meta = folder / D.TOKENS, folder / D.META
    if damage == "truncated":
        tokens.write_bytes(tokens.read_bytes()[: tokens.stat().st_size // 2])
    elif damage == "byte_changed":
        raw = bytearray(tokens.read_bytes())
        raw[10] ^= 1
        tokens.write_bytes(bytes(raw))
    elif damage == "meta_unreadable":
        meta.write_text("{not json")
    else:  # a cache written before the digest was recorded
        meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "sha256"}))
    with pytest.raises(ValueError, match=rf"the token cache {folder} is damaged \(.+\)"):
        D.load_tokens(f, tmp_path / "cache", val_fraction=0.0, create=False)
    again = D.load_tokens(f, tmp_path / "cache", val_fraction=0.0)
    assert again.cached.startswith("tokenized again: the cache was damaged (")
    assert all_tokens(again) == first == ids(TEXT * 20)
    assert D.load_tokens(f, tmp_path / "cache").cached == "reused"
