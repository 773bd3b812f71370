"""The worked example: its numbers are right (checked against the formulas written out here from
the raw parameters) and it really runs the model. That docs/worked-example.md shows exactly what
it prints today is checked with the other generated parts, in tests/test_docs.py."""

import math
import runpy
import sys

import pytest
import torch

import gpt2.model
from gpt2 import worked_example as we
from gpt2.config import SIZES, GPT2Config

@pytest.fixture(scope="module")
def model():
    return we.build_model()


@pytest.fixture(scope="module")
def trace(model):
    return we.trace(model)


def _ln(x, gamma, beta, eps=1e-5):
    n = x.shape[-1]
    mu = x.sum(-1, keepdim=True) / n
    var = ((x - mu) ** 2).sum(-1, keepdim=True) / n
    return (x - mu) / torch.sqrt(var + eps) * gamma + beta


def _gelu_tanh(u):
    return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))


def test_every_intermediate_matches_the_formulas(model, trace):
    """Recompute the walk-through from the parameter tensors with nothing but arithmetic."""
    P = {n: p.detach() for n, p in model.named_parameters()}
    h0 = "transformer.h.0."
    ids = trace["ids"]
    T, d, nh = len(ids), model.config.n_embd, model.config.n_head
    hs = d // nh
    x0 = P["transformer.wte.weight"][ids] + P["transformer.wpe.weight"][:T]
    a = _ln(x0, P[h0 + "ln_1.weight"], P[h0 + "ln_1.bias"])
    qkv = a @ P[h0 + "attn.c_attn.weight"].T + P[h0 + "attn.c_attn.bias"]
    q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
    heads = torch.zeros(T, d, dtype=torch.float64)
    for h in range(nh):
        cols = slice(h * hs, (h + 1) * hs)
        for i in range(T):
            # softmax over the keys j <= i only: the causal mask written as a loop bound
            s = torch.stack([(q[i, cols] * k[j, cols]).sum() / math.sqrt(hs) for j in range(i + 1)])
            w = torch.exp(s - s.max())
            w = w / w.sum()
            expect_row = torch.zeros(T, dtype=torch.float64)
            expect_row[: i + 1] = w
            torch.testing.assert_close(trace["weights"][0, h, i], expect_row, rtol=0, atol=1e-12)
            heads[i, cols] = (w[:, None] * v[: i + 1, cols]).sum(0)
    attn = heads @ P[h0 + "attn.c_proj.weight"].T + P[h0 + "attn.c_proj.bias"]
    x1 = x0 + attn
    pre = _ln(x1, P[h0 + "ln_2.weight"], P[h0 + "ln_2.bias"]) @ P[h0 + "mlp.c_fc.weight"].T + P[h0 + "mlp.c_fc.bias"]
    x2 = x1 + _gelu_tanh(pre) @ P[h0 + "mlp.c_proj.weight"].T + P[h0 + "mlp.c_proj.bias"]
    logits = _ln(x2, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"]) @ P["transformer.wte.weight"].T
    probs = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    for key, want in (("x0", x0), ("ln1", a), ("qkv", qkv), ("concat", heads), ("attn_out", attn),
                      ("x1", x1), ("mlp_pre", pre), ("mlp_act", _gelu_tanh(pre)), ("x2", x2),
                      ("logits", logits), ("probs", probs)):
        torch.testing.assert_close(trace[key][0], want, rtol=0, atol=1e-12, msg=lambda m: f"{key}: {m}")
    torch.testing.assert_close(trace["probs"][0].sum(-1), torch.ones(T, dtype=torch.float64))


def test_the_example_runs_the_real_model_and_notices_a_difference(monkeypatch):
    """The trace checks itself against the model's forward: break the model, and it must fail."""
    original = gpt2.model.MLP.forward
    monkeypatch.setattr(gpt2.model.MLP, "forward", lambda self, x: original(self, x) * 1.001)
    with pytest.raises(AssertionError):
        we.trace()


def test_weights_are_seeded_and_rounded(model):
    again = we.build_model()
    other = we.build_model(seed=we.SEED + 1)
    assert model.lm_head.weight is model.transformer.wte.weight
    differs = False
    for (name, p), q, r in zip(model.named_parameters(), again.parameters(), other.parameters()):
        assert p.dtype == torch.float64
        assert torch.equal(p, q), name
        assert torch.equal(p * 10, (p * 10).round()), f"{name} is not rounded to one decimal"
        differs |= not torch.equal(p, r)
    assert differs


def test_printed_numbers_are_the_traced_ones(trace):
    """Spot-check the rendering: the doc's logits and attention rows are the traced values."""
    text = we.markdown()
    for row in trace["logits"][0]:
        assert "".join(f"{we.fmt(v):>9}" for v in row) in text
    for row in trace["weights"][0, 1]:
        assert "".join(f"{we.fmt(v):>11}" for v in row) in text
    assert we.fmt(-0.00001) == "0.0000" and we.fmt(float("-inf")) == "-inf" and we.fmt(1.23456) == "1.2346"


@pytest.mark.filterwarnings("ignore:'gpt2.worked_example' found in sys.modules:RuntimeWarning")
def test_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpt2.worked_example"])
    runpy.run_module("gpt2.worked_example", run_name="__main__", alter_sys=False)
    text = capsys.readouterr().out
    assert "13. Probabilities and the next token" in text and "```" not in text

    we.main(["--walkthrough"])
    assert capsys.readouterr().out == we.markdown()
    we.main(["--sizes", "--bpe"])
    assert capsys.readouterr().out == we.sizes_markdown() + we.bpe_markdown()


def test_toy_tokenizer():
    assert we.encode(we.PROMPT) == [1, 2, 3]
    with pytest.raises(ValueError, match="toy vocabulary"):
        we.encode(" the cow")


def test_model_sizes_follow_the_parameter_formula():
    """V d + T d (embeddings, the LM head tied) + L (12 d^2 + 13 d) + 2 d (final LayerNorm)."""
    sizes = we.model_sizes()
    assert list(sizes) == list(SIZES)
    for name, (cfg, n) in sizes.items():
        V, T, L, d = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
        assert n == V * d + T * d + L * (12 * d * d + 13 * d) + 2 * d, name
    # Hugging Face's GPT2LMHeadModel("gpt2").num_parameters(), an independent count
    assert sizes["gpt2"][1] == 124_439_808
    table = we.sizes_markdown()
    for name, (cfg, n) in sizes.items():
        assert f"| `{name}` | {cfg.n_layer} | {cfg.n_embd} | {cfg.n_head} | 64 | {n:,} |" in table


def test_bpe_example_is_the_tokenizer_s_answer():
    from gpt2 import Tokenizer

    ids = Tokenizer().encode(we.BPE_WORD)
    text = we.bpe_markdown()
    assert all(f"= {i}" in text for i in ids)
    assert f"as {len(ids)} tokens" in text


def test_decode_step_equals_the_full_forward():
    """Prefill + one cached decode step give the full pass's logits; the cache's size formula is
    what a KVCache really allocates."""
    from gpt2.model import KVCache

    d = we.decode_trace()
    assert d["cache_shape"] == (1, 1, 2, 3, 2) and d["pos"] == 3
    torch.testing.assert_close(d["step_logits"], d["full_logits"], rtol=0, atol=1e-12)
    text = we.decode_markdown()
    assert "".join(f"{we.fmt(v):>9}" for v in d["step_logits"]) in text
    cfg = GPT2Config.from_name("gpt2")
    cache = KVCache(cfg, 1, cfg.block_size, device="meta", dtype=torch.bfloat16)
    nbytes = (cache.k.numel() + cache.v.numel()) * 2
    assert we.kv_cache_bytes(cfg, 1, cfg.block_size, 2) == nbytes
    assert f"{nbytes:,} bytes, 37.7 MB per sequence" in text


def test_loss_gradient_is_softmax_minus_one_hot():
    t = we.training_trace()
    assert t["inputs"] == t["ids"][:-1] and t["targets"] == t["ids"][1:]
    n = len(t["targets"])
    torch.testing.assert_close(t["dlogits"].sum(-1), torch.zeros(n, dtype=torch.float64), rtol=0, atol=1e-12)
    assert t["loss"] == pytest.approx(-sum(math.log(p) for p in t["picked"].tolist()) / n)
    text = we.training_markdown()
    assert f"= {we.fmt(t['loss'])}." in text
    for row in t["dlogits"]:
        assert "".join(f"{we.fmt(v):>9}" for v in row) in text
