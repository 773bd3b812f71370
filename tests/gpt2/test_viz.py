"""Attention heatmaps: the picture shows the model's attention weights (checked against the
formula on the raw parameters), labelled with the prompt's tokens, for a random model or a
checkpoint; and the command line's errors are clear."""

import math

import pytest
import torch

from gpt2 import GPT2, GPT2Config, Tokenizer, viz
from gpt2.checkpoint import save_pretrained

PROMPT = "The cat sat on\nthe mat."
SMALL = dict(n_layer=2, n_head=3, n_embd=24)  # 3 heads: a grid with an empty cell


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT2(GPT2Config(**SMALL, vocab_size=50257, block_size=32)).eval()


def _manual_layer0_weights(model, ids):
    """softmax(Q K^T / sqrt(hs) + causal mask) of block 0, from the parameter tensors."""
    P = {n: p.detach() for n, p in model.named_parameters()}
    T, d, nh = len(ids), model.config.n_embd, model.config.n_head
    hs = d // nh
    x = P["transformer.wte.weight"][ids] + P["transformer.wpe.weight"][:T]
    x = torch.nn.functional.layer_norm(x, (d,), P["transformer.h.0.ln_1.weight"], P["transformer.h.0.ln_1.bias"])
    qkv = x @ P["transformer.h.0.attn.c_attn.weight"].T + P["transformer.h.0.attn.c_attn.bias"]
    q, k = qkv[:, :d].view(T, nh, hs).transpose(0, 1), qkv[:, d:2 * d].view(T, nh, hs).transpose(0, 1)
    s = q @ k.transpose(1, 2) / math.sqrt(hs)
    s = s.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    return torch.softmax(s, -1)


def test_attention_weights_are_the_model_s(model, tok):
    ids = tok.encode(PROMPT)
    w = viz.attention_weights(model, ids, layer=0)
    assert w.shape == (SMALL["n_head"], len(ids), len(ids)) and w.dtype == torch.float32
    torch.testing.assert_close(w, _manual_layer0_weights(model, ids), rtol=1e-5, atol=1e-6)
    w1 = viz.attention_weights(model, ids, layer=1)
    torch.testing.assert_close(w1.sum(-1), torch.ones(SMALL["n_head"], len(ids)))
    assert torch.all(w1.triu(1) == 0)
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\)"):
        viz.attention_weights(model, ids, layer=2)


def test_one_head_with_token_tick_labels(model, tok):
    ids = tok.encode(PROMPT)
    labels = viz.token_labels(tok, ids)
    assert labels[:3] == ["The", "·cat", "·sat"] and "\\n" in labels
    w = viz.attention_weights(model, ids, layer=1)
    fig = viz.plot_attention(w, labels, head=2, title="my title", layer=1)
    heat = [ax for ax in fig.axes if ax.images and ax.get_xticklabels()]
    assert len(heat) == 1
    ax = heat[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array()), w[2])
    assert fig._suptitle.get_text() == "my title"


def test_grid_of_all_heads(model, tok):
    ids = tok.encode(PROMPT)
    w = viz.attention_weights(model, ids, layer=0)
    fig = viz.plot_attention(w, viz.token_labels(tok, ids), layer=0)
    heat = [ax for ax in fig.axes if ax.images and ax.get_xticklabels()]
    assert [ax.get_title() for ax in heat] == [f"layer 0, head {h}" for h in range(3)]
    for h, ax in enumerate(heat):
        torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array()), w[h])
    with pytest.raises(ValueError, match=r"head must be in \[0, 3\)"):
        viz.plot_attention(w, viz.token_labels(tok, ids), head=3)
    with pytest.raises(ValueError, match="T = len"):
        viz.plot_attention(w, ["just one"])


def test_command_line_random_weights(tmp_path, capsys):
    out = tmp_path / "attn.png"
    rc = viz.main(["attention", "--prompt", "Hello there, world", "--layer", "1", "-o", str(out),
                   "--n-layer", "2", "--n-head", "2", "--n-embd", "16"])
    assert rc == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = viz.attention_figure("Hello there, world", 1, None, None, "gpt2", n_layer=2, n_head=2, n_embd=16)
    assert "random weights (no checkpoint)" in fig._suptitle.get_text()

    rc = viz.main(["attention", "--prompt", "Hi", "--layer", "5", "-o", str(out),
                   "--n-layer", "2", "--n-head", "2", "--n-embd", "16"])
    assert rc == 2 and "layer must be in [0, 2)" in capsys.readouterr().err
    rc = viz.main(["attention", "--prompt", "", "-o", str(out), "--n-layer", "1", "--n-head", "2", "--n-embd", "16"])
    assert rc == 2 and "prompt is empty" in capsys.readouterr().err


def test_command_line_checkpoint(tmp_path, model, tok):
    ckpt = save_pretrained(model, tmp_path / "ckpt")
    fig = viz.attention_figure(PROMPT, 0, 1, str(ckpt))
    title = fig._suptitle.get_text()
    assert "checkpoint ckpt" in title and "random" not in title
    ax = next(ax for ax in fig.axes if ax.images and ax.get_xticklabels())
    want = viz.attention_weights(model, tok.encode(PROMPT), 0)[1]
    torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array()), want)
    out = tmp_path / "h.png"
    assert viz.main(["attention", "--prompt", PROMPT, "--checkpoint", str(ckpt), "--head", "0", "-o", str(out)]) == 0
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit):  # a checkpoint brings its own shape
        viz.main(["attention", "--prompt", "x", "--checkpoint", str(ckpt), "--n-layer", "3", "-o", str(out)])


def test_architecture_needs_tex(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    assert viz.main(["architecture", "-o", str(tmp_path / "a.png")]) == 2
    assert "pdflatex and pdftoppm not found" in capsys.readouterr().err


@pytest.mark.parametrize("seq_q,seq_k,bm,bn", [(512, 512, 128, 64), (37, 37, 16, 16), (5, 70, 16, 32), (1, 33, 16, 16)])
def test_attention_tiles_follow_the_mask(seq_q, seq_k, bm, bn):
    """A tile is skipped iff no query of it sees a key of it, full iff every (valid) query sees every
    key, masked otherwise; checked against the mask itself, cell by cell."""
    tiles = viz.attention_tiles(seq_q, seq_k, bm, bn)
    i = torch.arange(seq_q)[:, None]
    j = torch.arange(seq_k)[None, :]
    sees = j <= i + (seq_k - seq_q)
    for m in range(tiles.shape[0]):
        for n in range(tiles.shape[1]):
            block = sees[m * bm:(m + 1) * bm, n * bn:(n + 1) * bn]
            full_tile = block.shape[1] == bn  # keys past the end need the mask; rows past it are just not stored
            want = (viz.TILE_SKIPPED if not block.any() else
                    viz.TILE_FULL if block.all() and full_tile else viz.TILE_MASKED)
            if want == viz.TILE_FULL or not block.any():
                assert tiles[m, n] == want, (m, n)
            else:  # a tile the mask cuts (or the ragged last tile) must be masked, never full
                assert tiles[m, n] == viz.TILE_MASKED, (m, n)


def test_tiles_figure(tmp_path):
    fig = viz.plot_attention_tiles(512, 512, 128, 64)
    assert "12 of 32 tiles skipped" in fig.axes[0].get_title()
    out = tmp_path / "t.png"
    assert viz.main(["tiles", "-o", str(out), "--seq-q", "64", "--seq-k", "64", "--block-m", "16", "--block-n", "16"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert (viz.REPO / "docs" / "figures" / "tiles.png").is_file()
    with pytest.raises(ValueError, match="seq_q <= seq_k"):
        viz.attention_tiles(8, 4, 4, 4)


def test_heatmaps_that_teach(model, tok):
    """Masked cells are masked (grey, hatched), not zeros; the row scale puts each row's max at 1;
    short prompts get their weights written in the cells; the '·' marker is explained."""
    ids = tok.encode("The cat sat on")
    labels = viz.token_labels(tok, ids)
    T = len(ids)
    w = viz.attention_weights(model, ids, layer=1)
    fig = viz.plot_attention(w, labels, head=1)
    ax = next(ax for ax in fig.axes if ax.images and ax.get_xticklabels())
    shown = ax.images[0].get_array()
    assert (shown.mask == torch.ones(T, T, dtype=torch.bool).triu(1).numpy()).all()
    assert sum(1 for p in ax.patches if p.get_hatch()) == T * (T - 1) // 2
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == T * (T + 1) // 2 and f"{float(w[1, T - 1, 0]):.2f}" in cells
    notes = fig._supxlabel.get_text()
    assert "masked" in notes and "leading space" in notes
    row = viz.plot_attention(w, labels, head=1, scale="row")
    shown = next(ax for ax in row.axes if ax.images and ax.get_xticklabels()).images[0].get_array()
    torch.testing.assert_close(torch.as_tensor(shown.max(axis=1).data), torch.ones(T))
    power = viz.plot_attention(w, labels, scale="power", values=False)
    assert all(not ax.texts for ax in power.axes if ax.images)
    with pytest.raises(ValueError, match="scale must be one of"):
        viz.plot_attention(w, labels, scale="log")
    long = viz.plot_attention(torch.rand(1, 13, 13).softmax(-1), [str(i) for i in range(13)], head=0)
    assert not next(ax for ax in long.axes if ax.images).texts  # too many cells to write in


def test_head_patterns_find_a_planted_head(tmp_path, tok):
    """Plant a previous-token head (its query/key weights made to match each position with the one
    before it) in a random model; head_patterns must find it, and the heads command draws it."""
    torch.manual_seed(0)
    w = torch.rand(2, 3, 6, 6).tril().softmax(-1)
    prev = torch.zeros(6, 6)
    prev[0, 0] = 1.0
    prev[torch.arange(1, 6), torch.arange(0, 5)] = 1.0
    w[1, 2] = prev
    scores = {name: f(w) for name, f in viz.PATTERNS.items()}
    assert scores["previous token"].argmax() == 1 * 3 + 2 and scores["previous token"][1, 2] == 1.0
    assert scores["first token"][1, 2] == pytest.approx(1 / 5)  # query 1's previous key is key 0
    m = GPT2(GPT2Config(**SMALL, vocab_size=50257, block_size=32)).eval()
    found, weights = viz.head_patterns(m, tok.encode(PROMPT))
    assert set(found) == set(viz.PATTERNS) and weights.shape[:2] == (2, 3)
    for name, (layer, head, score) in found.items():
        assert score == pytest.approx(float(viz.PATTERNS[name](weights)[layer, head]))
    ckpt = save_pretrained(m, tmp_path / "ckpt")
    out = tmp_path / "heads.png"
    assert viz.main(["heads", "--checkpoint", str(ckpt), "--prompt", PROMPT, "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert viz.main(["heads", "--checkpoint", str(ckpt), "--prompt", "Hi", "-o", str(out)]) == 2
