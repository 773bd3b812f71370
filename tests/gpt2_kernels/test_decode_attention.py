"""gpt2_kernels.decode_attention (split-KV flash-decoding) against float64 eager attention.

Without CUDA the kernels run in Triton's interpreter with 16-key tiles, so short caches still
cross several tiles and splits; num_splits is forced where a test needs several split counts
(the interpreter's SM count of 2 would otherwise choose few). Low precision follows
flash-attention's rule as in test_attention: error against float64 within twice eager
PyTorch's own error in that dtype, plus atol.
"""

import importlib

import pytest
import torch

import gpt2_kernels
from gpt2_kernels import registry
from gpt2_kernels.decode_attention import (HEAD_DIMS, MAX_QUERIES, MAX_SPLITS, _launch_config, _num_splits,
                                      decode_attention, decode_attention_reference)
from tests.conftest import repeat_on_gpu
from tests.tolerances import tol

dec_mod = importlib.import_module("gpt2_kernels.decode_attention")
attn_mod = importlib.import_module("gpt2_kernels.attention")

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _ref64(q, k, v, kv_len=None, causal=True):
    """Float64, mask built from indices: query i of Sq sees key j iff j <= i + L - Sq (and j < L)."""
    q, k, v = q.double(), k.double(), v.double()
    B, _, Sq, D = q.shape
    Sk = k.shape[2]
    L = torch.full((B,), Sk) if kv_len is None else kv_len.reshape(-1).expand(B).cpu().long()
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) / D**0.5
    i = torch.arange(Sq)[None, :, None]
    j = torch.arange(Sk)[None, None, :]
    Lb = L[:, None, None]
    hidden = (j >= Lb) | ((j > i + Lb - Sq) if causal else False)
    s = s.masked_fill(hidden[:, None].to(q.device), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)


def _check(got, q, k, v, kv_len=None, causal=True):
    dtype = q.dtype
    want = _ref64(q, k, v, kv_len, causal)
    t = tol("attention", "tf32" if dtype == torch.float32 and ON_GPU else dtype)
    atol = t["atol"]
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.double(), want, **t)
    if dtype != torch.float32:  # flash-attention's rule: within 2x eager's own error
        eager = decode_attention_reference(q, k, v, kv_len, causal).double()
        assert (got.double() - want).abs().max() <= 2 * (eager - want).abs().max() + atol


def _qkv(B, H, Sq, Sk, D, dtype=torch.float32, device="cpu"):
    return [torch.randn(B, H, S, D, device=device).to(dtype) for S in (Sq, Sk, Sk)]


@pytest.mark.parametrize("Sq", [1, 2, 5, 16])
@pytest.mark.parametrize("Sk", [1, 7, 16, 45, 2053])
def test_queries_against_cache_lengths(Sq, Sk, device):
    """Sk below one tile, one tile, not a multiple of any tile, a few thousand keys."""
    if Sk < Sq:
        pytest.skip("causal needs Sq <= Sk")
    q, k, v = _qkv(1, 2, Sq, Sk, 16, device=device)
    splits = None if Sk < 100 else 5
    _check(decode_attention(q, k, v, num_splits=splits), q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_head_dims_and_dtypes(D, dtype, device):
    q, k, v = _qkv(2, 2, 3, 77, D, dtype, device)
    _check(decode_attention(q, k, v, num_splits=3), q, k, v)


@repeat_on_gpu
def test_bitwise_reproducible(device):
    # No atomics and a fixed-order combine: a repeat gives the same bits. Only a GPU, whose
    # programs run at once, could break that; GPT-2 small's heads over a 4096-key cache.
    q, k, v = _qkv(4, 12, 1, 4096, 64, torch.bfloat16, device)
    assert torch.equal(decode_attention(q, k, v), decode_attention(q, k, v))


@pytest.mark.parametrize("causal", [True, False])
def test_split_counts(causal, device):
    """One split up to one split per tile: every count gives the float64 answer, and a split
    whose rows see none of its keys (causal, Sq > 1 at the end) is handled."""
    q, k, v = _qkv(1, 1, 16, 200, 32, device=device)  # 13 tiles of 16 keys in the interpreter
    block_n = _launch_config("split", 32, torch.float32).constexprs["BLOCK_N"]
    seen = set()
    for n in (1, 3, 7, 13, 40):
        out = decode_attention(q, k, v, causal=causal, num_splits=n)
        _check(out, q, k, v, causal=causal)
        seen.add(min(n, -(-200 // block_n)))
    assert len(seen) >= 4


def test_static_cache_views_and_lengths_on_the_device(device):
    """A cache allocated at its final length in the model's (layer, B, H, S, D) layout: strided
    views of it, with the valid length passed as a tensor (one per row, or one for all)."""
    B, H, S, D, Sq = 3, 2, 96, 32, 2
    cache_k = torch.randn(2, B, S, H, D, device=device).transpose(2, 3)  # (layer, B, H, S, D), strided
    cache_v = torch.randn(2, B, S, H, D, device=device).transpose(2, 3)
    k, v = cache_k[1], cache_v[1]
    q = torch.randn(B, S, H, D, device=device).transpose(1, 2)[:, :, :Sq]  # a strided (B, H, Sq, D) view
    assert not k.is_contiguous() and not q.is_contiguous()
    lens = torch.tensor([2, 50, 96], dtype=torch.int32, device=device)
    _check(decode_attention(q, k, v, kv_len=lens, num_splits=4), q, k, v, lens)
    one = torch.tensor(33, dtype=torch.int64, device=device)
    _check(decode_attention(q, k, v, kv_len=one, num_splits=4), q, k, v, one)
    # The same answer as the cache sliced to its length (what gpt2_kernels.attention would get).
    _check(decode_attention(q, k[:, :, :33], v[:, :, :33], num_splits=2), q, k[:, :, :33], v[:, :, :33])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lens", [[200], [3, 41, 40, 1000]], ids=["one", "per_row"])
def test_kv_len_past_the_cache_is_clamped_to_it(lens, causal, device):
    """kv_len > Sk (a caller's length past its buffer) counts as Sk, on the device: no key past
    the cache is read. The cache is a view of a longer buffer whose rows past Sk are NaN, so a
    read past Sk would show, where on a GPU it could be an illegal access."""
    B, H, Sk, D = len(lens), 2, 40, 16
    buffers = [torch.randn(B, H, Sk + 200, D, device=device) for _ in range(2)]
    for buf in buffers:
        buf[:, :, Sk:] = float("nan")
    k, v = (buf[:, :, :Sk] for buf in buffers)
    q = torch.randn(B, H, 3, D, device=device)
    kv_len = torch.tensor(lens, dtype=torch.int64, device=device)
    got = decode_attention(q, k, v, kv_len=kv_len, causal=causal, num_splits=2)
    _check(got, q, k, v, kv_len.clamp(max=Sk), causal=causal)
    torch.testing.assert_close(decode_attention_reference(q, k, v, kv_len, causal),
                               decode_attention_reference(q, k, v, kv_len.clamp(max=Sk), causal))


def test_split_heuristic_fills_the_gpu():
    """On 132 SMs: at least one program per SM wherever the cache has enough tiles, splits
    start on tile boundaries and cover every key, and never more than MAX_SPLITS."""
    for heads in (12, 25, 96, 200):
        for Sk in (1, 100, 1024, 8192):
            for block_n in (32, 64):
                splits, per = _num_splits(heads, Sk, block_n, 132)
                assert per % block_n == 0 and 1 <= splits <= MAX_SPLITS
                assert (splits - 1) * per < Sk <= splits * per
                tiles = -(-Sk // block_n)
                assert heads * splits >= min(132, heads * tiles) or splits == MAX_SPLITS
    assert _num_splits(12, 8192, 64, 132)[0] * 12 >= 2 * 132 - 12


def test_attention_dispatches_decode_by_shape(monkeypatch, device):
    calls = []
    real = attn_mod.decode_attention
    monkeypatch.setattr(attn_mod, "decode_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _qkv(1, 2, 1, 80, 16, device=device)
    _check(gpt2_kernels.attention(q, k, v), q, k, v)
    assert calls == [1]
    gpt2_kernels.attention(*_qkv(1, 2, 1, 20, 16, device=device))  # a short cache: the training kernel
    assert calls == [1]
    # A gradient is wanted: the training kernel, which has a backward.
    q.requires_grad_()
    gpt2_kernels.attention(q, k, v).sum().backward()
    assert calls == [1] and q.grad is not None


def test_errors(device):
    q, k, v = _qkv(1, 2, MAX_QUERIES + 1, 40, 16, device=device)
    with pytest.raises(ValueError, match="Sq=17 queries; this kernel takes 1 to 16"):
        decode_attention(q, k, v)
    q, k, v = _qkv(1, 2, 1, 40, 16, device=device)
    with pytest.raises(TypeError, match="kv_len must be an int32 or int64 tensor"):
        decode_attention(q, k, v, kv_len=torch.tensor([3.0], device=device))
    with pytest.raises(ValueError, match="kv_len must hold 1 or B=1 lengths"):
        decode_attention(q, k, v, kv_len=torch.tensor([3, 4], device=device))
    with pytest.raises(ValueError, match="num_splits must be an int"):
        decode_attention(q, k, v, num_splits=0)
    with pytest.raises(ValueError, match="head dim D=24"):
        decode_attention(*_qkv(1, 1, 1, 4, 24, device=device))
    with pytest.raises(RuntimeError, match="inference-only"):
        decode_attention(q.requires_grad_(), k, v)


def test_compile_configs_registered():
    """Every GPU launch the heuristics can pick is registered for python -m gpt2_kernels.sass."""
    cfgs = registry.configs("decode_attention")
    labels = {c.label for c in cfgs}
    for dtype, ty in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        for D in HEAD_DIMS:
            for arch in (80, 90, 100):
                cfg = _launch_config("split", D, dtype, interpret=False, arch=arch)
                t = cfg.constexprs
                assert f"split D={D} {ty} causal {t['BLOCK_M']}x{t['BLOCK_N']} s{cfg.num_stages} sm_{arch}" in labels
            # sm_100 keeps the tile and prefetches deeper (see _launch_config).
            deep = _launch_config("split", D, dtype, interpret=False, arch=100).num_stages
            assert deep == (3 if (D, dtype) == (128, torch.float32) else 5)
    for c in cfgs:
        c.signature()  # every name it sets is an argument of its kernel


def test_gpt2_decode_configs_compile_without_spills():
    """GPT-2's decode configs (D=64, bf16) compile for sm_80, sm_90 and sm_100 with no spills and
    run their dots on tensor cores; ``python -m gpt2_kernels.sass --op decode_attention`` checks all."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "gpt2_kernels.sass", "--arch", "all", "--json", "--op", "decode_attention",
                           "--match", "split D=64 bf16 causal", "--match", "combine D=64 bf16 S<=16"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    rows = json.loads(proc.stdout)["kernels"]
    assert {(r["kernel"], r["arch"]) for r in rows} == {(k, a) for k in ("_decode_split_kernel", "_decode_combine_kernel")
                                                         for a in (80, 90, 100)}
    for r in rows:
        assert "error" not in r and r["spills"] == 0 and r["local_loads"] == 0 and r["local_stores"] == 0, r
        if r["kernel"] == "_decode_split_kernel":
            assert r["hmma"] > 0, r  # 16-row tiles: mma.sync on every arch (wgmma and tcgen05 need 64 rows)
