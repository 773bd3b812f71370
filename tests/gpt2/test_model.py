"""The eager model: shapes, parameter counts, the kernel switch, input checks, and the seed's
modules against independent references written out here."""

import math

import pytest
import torch
import torch.nn.functional as F

from gpt2 import GPT2, GPT2Config, KVCache, LearnedPositionalEncoding, PositionalEncoding
from gpt2.attention import CausalSelfAttention, MultiHeadAttention, attend, attend_sdpa, record_attention
from gpt2.switch import KERNELS, bind, resolve_kernels

TINY = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=101, block_size=48)


def tiny(**kw):
    return GPT2(GPT2Config(**{**TINY, **kw}))


# ---- config and sizes ---------------------------------------------------------------------

PUBLISHED = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_sizes_and_parameter_count(name):
    cfg = GPT2Config.from_name(name)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == PUBLISHED[name]
    assert cfg.head_size == 64 and cfg.vocab_size == 50257 and cfg.block_size == 1024
    model = GPT2.meta(cfg)
    assert all(p.is_meta for p in model.parameters())
    L, d, V, P = cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.block_size
    # Per block: c_attn d*3d+3d, c_proj d*d+d, c_fc d*4d+4d, mlp c_proj 4d*d+d, two LNs 4d.
    per_block = 12 * d * d + 13 * d
    expected = V * d + P * d + L * per_block + 2 * d  # the LM head is tied: not counted again
    assert model.num_parameters() == expected
    assert model.num_parameters(exclude_embeddings=True) == expected - V * d - P * d


def test_from_name_errors():
    with pytest.raises(ValueError, match="gpt2-medium"):
        GPT2Config.from_name("gpt3")
    with pytest.raises(ValueError, match="n_lyer"):
        GPT2Config.from_name("gpt2", n_lyer=3)
    with pytest.raises(ValueError, match="divisible"):
        GPT2Config(n_head=5, n_embd=32)


# ---- forward and loss ---------------------------------------------------------------------

def test_forward_shapes_loss_and_tied_head():
    model = tiny()
    idx = torch.randint(0, TINY["vocab_size"], (3, 17))
    logits = model(idx)
    assert logits.shape == (3, 17, TINY["vocab_size"])
    targets = torch.randint(0, TINY["vocab_size"], (3, 17))
    targets[0, :5] = -1
    logits2, loss = model(idx, targets)
    torch.testing.assert_close(logits2, logits)
    keep = targets.flatten() != -1
    manual = -F.log_softmax(logits.flatten(0, 1)[keep].double(), -1).gather(1, targets.flatten()[keep, None]).mean()
    torch.testing.assert_close(loss.double(), manual, atol=1e-5, rtol=1e-5)
    assert model.lm_head.weight is model.transformer.wte.weight


def test_causality():
    model = tiny()
    idx = torch.randint(0, TINY["vocab_size"], (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, TINY["vocab_size"], (2, 8))
    torch.testing.assert_close(model(idx)[:, :12], model(changed)[:, :12])


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 5), "integer token ids"),
        (torch.zeros(2, 5, dtype=torch.bool), "integer token ids"),
        (torch.zeros(5, dtype=torch.long), "shape \\(B, T\\)"),
        (torch.zeros(2, 3, 4, dtype=torch.long), "shape \\(B, T\\)"),
        (torch.zeros(1, 49, dtype=torch.long), "exceeds block_size=48"),
        (torch.full((1, 4), 101), "\\[0, 101\\)"),
        (torch.full((1, 4), -1), "\\[0, 101\\)"),
        ([[1, 2, 3]], "tensor"),
    ],
)
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny()(bad)


@pytest.mark.parametrize("where", ["fake", "meta"])
def test_ids_without_values_skip_the_range_check(where):
    # Fake and meta ids (how bench --memory counts, and how torch traces) have no values to read:
    # the range check is skipped and the shapes come out; the shape checks still apply.
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    if where == "meta":
        model, idx = GPT2.meta(GPT2Config(**TINY)), torch.zeros(2, 9, dtype=torch.long, device="meta")
        logits, loss = model(idx, idx)
        assert logits.is_meta and loss.is_meta
    else:
        with FakeTensorMode():
            model, idx = tiny(), torch.full((2, 9), 10**6)  # out of range, were it read
            logits, loss = model(idx, idx)
        assert isinstance(loss, FakeTensor)
    assert logits.shape == (2, 9, TINY["vocab_size"]) and loss.shape == ()
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 49, dtype=torch.long, device=idx.device))


# ---- the kernel switch --------------------------------------------------------------------

def test_set_kernels_choices_and_errors():
    model = tiny()
    assert model.kernels == {"attention": "torch", "layernorm": "torch", "gelu": "torch", "loss": "torch"}
    assert model.set_kernels(attention="sdpa") is model
    assert model.kernels == {"attention": "sdpa", "layernorm": "torch", "gelu": "torch", "loss": "torch"}
    assert all(b.attn.kernel is attend_sdpa for b in model.transformer.h)
    model.set_kernels("torch")
    assert model.kernels == {"attention": "torch", "layernorm": "torch", "gelu": "torch", "loss": "torch"}
    with pytest.raises(ValueError, match="torch, sdpa, triton"):
        model.set_kernels(attention="flash")
    with pytest.raises(ValueError, match="layernorm kernel 'sdpa'.*torch, triton"):
        model.set_kernels("sdpa")
    assert model.kernels["attention"] == "torch"  # a refused call changes nothing
    assert all(b.attn.kernel is attend for b in model.transformer.h)
    assert tiny().set_kernels(attention="triton").kernels["attention"] == "triton"  # head size 16
    with pytest.raises(ValueError, match="head size 8 .*16, 32, 64, 128"):
        tiny(n_embd=40, n_head=5).set_kernels(attention="triton")


def test_sdpa_matches_eager_forward_and_backward():
    model = tiny().double()
    idx = torch.randint(0, TINY["vocab_size"], (2, 23))
    targets = torch.randint(0, TINY["vocab_size"], (2, 23))
    results = {}
    for impl in ("torch", "sdpa"):
        model.set_kernels(attention=impl)
        model.zero_grad()
        logits, loss = model(idx, targets)
        loss.backward()
        results[impl] = (logits, [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results["sdpa"][0], results["torch"][0], atol=1e-10, rtol=1e-10)
    for g1, g2 in zip(results["sdpa"][1], results["torch"][1]):
        torch.testing.assert_close(g1, g2, atol=1e-10, rtol=1e-10)


# ---- KV cache -----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "sdpa"])
def test_cache_prefill_and_decode_match_full_forward(impl):
    model = tiny().set_kernels(attention=impl)
    idx = torch.randint(0, TINY["vocab_size"], (2, 15))
    full = model(idx)
    cache = KVCache(model.config, 2, 15)
    parts = [model(idx[:, :9], cache=cache)]  # prefill 9, then 3 more, then one at a time
    parts.append(model(idx[:, 9:12], cache=cache))
    for t in range(12, 15):
        parts.append(model(idx[:, t : t + 1], cache=cache))
    assert cache.pos == 15
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="KV cache full"):
        model(idx[:, :1], cache=cache)


def test_switch_table_and_its_checks():
    """The table's choices are what set_kernels and resolve_kernels accept; resolve_kernels is the
    one check (others, e.g. a Hugging Face patcher, call it too)."""
    for op, choices in KERNELS.items():  # every choice in the table, and nothing else, is taken
        for choice in choices:
            assert resolve_kernels(None, **{op: choice})[op] == tiny().set_kernels(**{op: choice}).kernels[op] == choice
        with pytest.raises(ValueError, match=f"unknown {op} kernel 'cuda'"):
            tiny().set_kernels(**{op: "cuda"})
    assert resolve_kernels(None) == {"attention": "torch", "layernorm": "torch", "gelu": "torch", "loss": "torch"}
    assert resolve_kernels({"attention": "sdpa"}, gelu="triton") == {"attention": "sdpa", "layernorm": "torch",
                                                                     "gelu": "triton", "loss": "torch"}
    assert resolve_kernels({"gelu": "triton"}, "torch", attention="sdpa")["gelu"] == "torch"
    with pytest.raises(ValueError, match="unknown op.*'logits'.*attention, layernorm, gelu, loss"):
        resolve_kernels(None, logits="triton")
    with pytest.raises(ValueError, match="head size 8"):
        resolve_kernels(None, "triton", head_size=8)
    model = tiny().set_kernels(layernorm="triton", gelu="triton")
    import gpt2_kernels

    for m in model.modules():  # the function each module calls is the table's, bound once
        if isinstance(m, MultiHeadAttention):
            assert m.kernel is attend
        elif getattr(m, "op", None) == "layernorm":
            assert m.kernel is gpt2_kernels.layer_norm and m.fused_kernel is gpt2_kernels.add_layer_norm
        elif getattr(m, "op", None) == "gelu":
            assert m.kernel.__module__ == "gpt2.triton_ops"


def test_record_attention():
    model = tiny().set_kernels(attention="sdpa")
    idx = torch.randint(0, TINY["vocab_size"], (2, 7))
    with record_attention(model) as attn:
        logits = model(idx)
    assert all(b.attn.kernel is attend_sdpa for b in model.transformer.h)  # restored
    torch.testing.assert_close(logits, model(idx))
    assert len(attn) == TINY["n_layer"] and attn[0].shape == (2, TINY["n_head"], 7, 7)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(2, TINY["n_head"], 7))
    assert torch.all(attn[1].triu(diagonal=1) == 0)


# ---- the seed's modules against references written out here ---------------------------------

def reference_mha(mha, query, key, value, mask=None, causal=False):
    """Attention spelled out head by head, with explicit per-head weight slices."""
    d, nh = mha.d_model, mha.num_heads
    hs = d // nh
    W, b = mha.c_attn.weight.double(), mha.c_attn.bias.double()
    q = query.double() @ W[:d].T + b[:d]
    k = key.double() @ W[d : 2 * d].T + b[d : 2 * d]
    v = value.double() @ W[2 * d :].T + b[2 * d :]
    heads, all_w = [], []
    Sq, Sk = query.size(1), key.size(1)
    for h in range(nh):
        sl = slice(h * hs, (h + 1) * hs)
        s = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hs)  # (B, Sq, Sk)
        for i in range(Sq):
            for j in range(Sk):
                blocked = (causal and j > i + Sk - Sq) or (mask is not None and mask[..., i, j].all() == 0)
                if blocked:
                    s[:, i, j] = float("-inf")
        w = torch.softmax(s, -1)
        all_w.append(w)
        heads.append(w @ v[..., sl])
    y = torch.cat(heads, -1) @ mha.c_proj.weight.double().T + mha.c_proj.bias.double()
    return y, torch.stack(all_w, 1)


def test_multi_head_attention_cross_and_masked():
    mha = MultiHeadAttention(d_model=24, num_heads=3)
    q_in, kv_in = torch.randn(2, 5, 24), torch.randn(2, 9, 24)
    mask = (torch.rand(5, 9) > 0.3).int()
    mask[:, 0] = 1  # no fully blocked row
    y, w = mha(q_in, kv_in, kv_in, mask=mask, need_weights=True)
    y_ref, w_ref = reference_mha(mha, q_in, kv_in, kv_in, mask=mask)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.double(), w_ref, atol=1e-6, rtol=1e-5)
    assert mha(q_in, kv_in, kv_in).shape == (2, 5, 24)
    with pytest.raises(ValueError, match="query must have shape"):
        mha(torch.randn(2, 5, 23), kv_in, kv_in)


@pytest.mark.parametrize("impl", ["torch", "sdpa", "triton"])
def test_causal_self_attention_and_causal_mask_path(impl, device):
    csa = CausalSelfAttention(d_model=64, num_heads=4, max_seq_len=32).to(device)
    bind(csa, impl)
    t = dict(atol=1e-5, rtol=1e-5) if device == "cpu" else dict(atol=5e-3, rtol=5e-3)  # TF32 on a GPU
    x = torch.randn(3, 11, 64, device=device)
    y_ref, _ = reference_mha(csa, x, x, x, causal=True)
    torch.testing.assert_close(csa(x).double(), y_ref, **t)
    # A causal mask handed to MultiHeadAttention takes the fused path and gives the same result.
    mask = torch.tril(torch.ones(11, 11, device=device))
    torch.testing.assert_close(MultiHeadAttention.forward(csa, x, x, x, mask=mask).double(), y_ref, **t)
    # Cross-attention without a mask runs non-causal on the fused path.
    kv = torch.randn(3, 7, 64, device=device)
    y_ref, _ = reference_mha(csa, x, kv, kv)
    torch.testing.assert_close(MultiHeadAttention.forward(csa, x, kv, kv).double(), y_ref, **t)
    with pytest.raises(ValueError, match="max_seq_len=32"):
        csa(torch.randn(1, 33, 64, device=device))


def test_positional_encodings():
    pe = PositionalEncoding(d_model=6, max_len=50)
    x = torch.randn(2, 10, 6)
    out = pe(x, offset=3)
    for p in (3, 7, 12):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert math.isclose(float(out[0, p - 3, 2 * i] - x[0, p - 3, 2 * i]), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(float(out[1, p - 3, 2 * i + 1] - x[1, p - 3, 2 * i + 1]), math.cos(angle), abs_tol=1e-6)
    assert not list(pe.parameters())
    lpe = LearnedPositionalEncoding(d_model=6, max_len=20)
    torch.testing.assert_close(lpe(x, offset=4) - x, lpe.weight[4:14].expand(2, 10, 6))
    with pytest.raises(ValueError, match="max_len=20"):
        lpe(torch.randn(1, 18, 6), offset=4)
