"""gpt2_kernels.attention against float64 eager attention: forward, backward, the saved logsumexp,
the GPU tile shapes, strided and broadcast inputs, determinism, torch.library.opcheck,
torch.compile, every input error, and that every GPU launch config is registered.

Low precision follows flash-attention's test rule as well as the tolerance table: the
kernel's error against float64 must be at most twice eager PyTorch's own error in the same
dtype (plus atol). Without CUDA the kernels run in Triton's interpreter, with small tiles
(so short sequences still cross several tiles and the diagonal); shapes stay small there.
"""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from gpt2_kernels import registry
from gpt2_kernels.attention import ARCHS, HEAD_DIMS, KERNELS, attention, attention_reference
from tests.conftest import repeat_on_gpu, value_errors_without_interpreter
from tests.tolerances import tol

# The module itself (the package's `gpt2_kernels.attention` is the function).
attn_mod = importlib.import_module("gpt2_kernels.attention")

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LOW = (torch.float16, torch.bfloat16)


def _tol(op, dtype):
    # On a GPU fp32 dots run in TF32 (see gpt2_kernels/attention.py); the interpreter's are exact.
    return tol(op, "tf32" if dtype == torch.float32 and ON_GPU else dtype)


def _ref64(q, k, v, causal, scale, do):
    """Float64 output and gradients: scores materialised, the end-aligned mask built from
    indices (independently of the module's reference)."""
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    Sq, Sk = q.shape[-2], k.shape[-2]
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    if causal:
        i = torch.arange(Sq, device=q.device)[:, None]
        j = torch.arange(Sk, device=q.device)[None, :]
        s = s.masked_fill(j > i + (Sk - Sq), float("-inf"))
    o = torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)
    o.backward(do.double())
    return o.detach(), q.grad, k.grad, v.grad


def _eager(q, k, v, causal, scale, do):
    """Eager PyTorch in the inputs' own dtype: the error budget of flash-attention's rule."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = attention_reference(q, k, v, causal, scale)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


def _kernel(q, k, v, causal, scale, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = attention(q, k, v, causal=causal, scale=scale)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


def _inputs(B, H, Sq, Sk, D, dtype, device):
    q = torch.randn(B, H, Sq, D, device=device).to(dtype)
    k = torch.randn(B, H, Sk, D, device=device).to(dtype)
    v = torch.randn(B, H, Sk, D, device=device).to(dtype)
    do = torch.randn(B, H, Sq, D, device=device).to(dtype)
    return q, k, v, do


def _check(q, k, v, do, causal, scale=None, backward=True):
    dtype = q.dtype
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    got = _kernel(q, k, v, causal, scale, do) if backward else (attention(q, k, v, causal, scale),)
    want = _ref64(q, k, v, causal, scale, do)
    eager = _eager(q, k, v, causal, scale, do) if dtype in LOW else None
    for i, name in enumerate(("o", "dq", "dk", "dv")[:len(got)]):
        op = "attention" if i == 0 else "attention_bwd"
        assert got[i].dtype == dtype and got[i].shape == want[i].shape, name
        torch.testing.assert_close(got[i].double(), want[i], **_tol(op, dtype), msg=lambda m: f"{name}: {m}")
        if eager is not None:
            err = (got[i].double() - want[i]).abs().max().item()
            budget = (eager[i].double() - want[i]).abs().max().item()
            assert err <= 2 * budget + _tol(op, dtype)["atol"], f"{name}: error {err:.2e} vs eager {budget:.2e}"


# ----------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_and_head_dim(dtype, D, causal, device):
    # Sq < Sk, neither a multiple of any tile: ragged query and key tiles, an end-aligned
    # diagonal that crosses tiles at an offset, two batches and two heads.
    shape = (2, 4, 300, 333) if ON_GPU else (2, 2, 37, 45)
    q, k, v, do = _inputs(*shape, D, dtype, device)
    _check(q, k, v, do, causal)


# (B, H, Sq, Sk): one token; decode (one query against a cache); prime and ragged lengths;
# Sq < Sk (chunked prefill); exact tile multiples; a single head and several.
CPU_SHAPES = [(1, 1, 1, 1), (2, 1, 1, 50), (1, 3, 53, 53), (1, 1, 17, 61), (1, 2, 64, 64), (1, 1, 80, 80),
              (3, 1, 5, 33)]
GPU_SHAPES = [(1, 1, 1, 1), (4, 12, 1, 1024), (4, 12, 1024, 1024), (2, 12, 2048, 2048), (1, 3, 997, 1499),
              (4, 12, 127, 2048)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES if ON_GPU else CPU_SHAPES, ids=str)
def test_shapes(shape, dtype, causal, device):
    q, k, v, do = _inputs(*shape, 64, dtype, device)
    _check(q, k, v, do, causal)


def test_every_diagonal_offset(device):
    # Sk fixed and Sq = 1..Sk: the end-aligned diagonal (offset Sk - Sq) takes every position
    # relative to the interpreter's 16- and 32-row tiles, so each way a tile can straddle it,
    # and every split into masked and unmasked tiles, is exercised in all three kernels.
    Sk = 33
    k, v = torch.randn(2, 1, 1, Sk, 16, device=device)
    for Sq in range(1, Sk + 1):
        q, do = torch.randn(2, 1, 1, Sq, 16, device=device)
        try:
            _check(q, k, v, do, True)
        except AssertionError as e:
            raise AssertionError(f"Sq={Sq}, Sk={Sk}: {e}") from None


def test_forward_only_gpt2_sizes(device):
    # GPT-2 small's attention (12 heads of 64) on a whole context, forward only.
    shape = (4, 12, 1024, 1024) if ON_GPU else (1, 12, 48, 48)
    q, k, v, do = _inputs(*shape, 64, torch.float16, device)
    _check(q, k, v, do, True, backward=False)


def test_noncausal_more_queries_than_keys(device):
    q, k, v, do = _inputs(1, 2, 41, 19, 32, torch.float32, device)
    _check(q, k, v, do, causal=False)


@pytest.mark.parametrize("scale", [None, 0.03, 1.7])
def test_scale(scale, device):
    q, k, v, do = _inputs(1, 2, 33, 40, 16, torch.float32, device)
    _check(q, k, v, do, True, scale)
    if scale is None:
        assert torch.equal(attention(q, k, v), attention(q, k, v, scale=0.25))


def test_online_softmax_with_growing_scores(device):
    # Key norms grow along the sequence, so almost every key tile raises the running max
    # and the accumulated sums and outputs must be rescaled; large scores also test that
    # nothing overflows (softmax(s) = softmax(s - max)).
    q, k, v, do = _inputs(1, 2, 70, 70, 32, torch.float32, device)
    k = k * torch.linspace(0.5, 8, 70, device=device)[:, None]
    _check(q * 3, k, v, do, True)
    _check(q * 3, k, v, do, False)


def test_saved_logsumexp_is_base_2(device):
    q, k, v, _ = _inputs(2, 2, 23, 57, 64, torch.float32, device)
    o, lse2 = torch.ops.gpt2_kernels.attention_fwd(q, k, v, True, 0.2, True)
    assert lse2.dtype == torch.float32 and lse2.shape == (2, 2, 23)
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * 0.2
    s = s.masked_fill(torch.ones(23, 57, dtype=torch.bool, device=device).tril(57 - 23).logical_not(), float("-inf"))
    torch.testing.assert_close(lse2.double() * math.log(2), torch.logsumexp(s, -1), **_tol("attention", torch.float32))


def test_gpu_tile_configs_under_the_interpreter(monkeypatch, device):
    # The interpreter normally runs small tiles; here each architecture's first candidates
    # (sm_90: 128x128 pipelined TMA forward, 64x128 dK/dV; sm_80: 128x64 and 32x128 with
    # pointer loads; sm_100: 128x128 dK/dV with the statistics by TMA, fp32 by TMA, and the
    # 64x64 deterministic=False dK/dV) run too, over lengths that cross several tiles with
    # ragged ends and an offset diagonal.
    if ON_GPU:
        pytest.skip("on a GPU every test runs the GPU's own tiles")
    for arch, D, dtype, (Sq, Sk) in ((90, 64, torch.bfloat16, (150, 270)), (90, 128, torch.float16, (131, 131)),
                                     (80, 64, torch.float16, (150, 270)), (100, 64, torch.bfloat16, (150, 270)),
                                     (100, 64, torch.float32, (150, 270))):
        monkeypatch.setattr(attn_mod, "_arch", lambda device: arch)
        q, k, v, do = _inputs(1, 1, Sq, Sk, D, dtype, device)
        for causal in (True, False):
            _check(q, k, v, do, causal)
        if arch == 100:
            q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
            attention(q, k, v, deterministic=False).backward(do)
            want = _ref64(q, k, v, True, 1 / math.sqrt(D), do)
            for got, ref in zip((q.grad, k.grad, v.grad), want[1:]):
                torch.testing.assert_close(got.double(), ref, **_tol("attention_bwd", dtype))


# ----------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------


def test_views_of_a_fused_qkv_projection(device):
    # What GPT-2 hands in: q, k, v as (B, H, T, D) views of one (B, T, 3, H, D) tensor
    # (strides (3*T*H*D, D, 3*H*D, 1)), and the output transposed back to (B, T, H*D).
    B, T, H, D = 2, 29, 3, 32
    qkv = torch.randn(B, T, 3, H, D, device=device, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous() and q.stride(-1) == 1
    y = attention(q, k, v).transpose(1, 2).reshape(B, T, H * D)
    dy = torch.randn_like(y)
    y.backward(dy)
    ref = qkv.detach().double().requires_grad_()
    qr, kr, vr = ref.permute(2, 0, 3, 1, 4).unbind(0)
    yr = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True).transpose(1, 2).reshape(B, T, H * D)
    yr.backward(dy.double())
    torch.testing.assert_close(y.double(), yr, **_tol("attention", torch.float32))
    torch.testing.assert_close(qkv.grad.double(), ref.grad, **_tol("attention_bwd", torch.float32))


def test_strided_views_on_the_tma_path(device):
    # 16-bit inputs take the descriptor (TMA) path: q, k, v as views of one (B, T, 3, H, D)
    # projection (row stride 3*H*D), K/V heads broadcast (stride 0), a single query row.
    B, T, H, D = 2, 29, 2, 32
    qkv = torch.randn(B, T, 3, H, D, device=device).to(torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    do = torch.randn(B, H, T, D, device=device).to(torch.bfloat16)
    _check(q, k, v, do, True)
    _check(q, k[:, :1].expand(B, H, T, D), v[:, :1].expand(B, H, T, D), do, False)
    _check(q[:, :, -1:], k, v, do[:, :, -1:], True)


@pytest.mark.parametrize("layout", ["transposed_last_dim", "odd_row_stride", "heads_broadcast", "row_broadcast_grad",
                                    "scalar_grad"])
def test_other_layouts(layout, device):
    B, H, S, D = 1, 2, 21, 16
    q, k, v, do = _inputs(B, H, S, S, D, torch.float32, device)
    if layout == "transposed_last_dim":  # last dim not contiguous: copied first
        q = q.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "odd_row_stride":  # rows of a wider buffer, stride 17: copied first
        k = torch.randn(B, H, S, D + 1, device=device)[..., :D]
    elif layout == "heads_broadcast":  # one K/V head shared by all query heads (stride 0): read in place
        k, v = k[:, :1].expand(B, H, S, D), v[:, :1].expand(B, H, S, D)
    elif layout == "row_broadcast_grad":  # dO with stride 0 over rows, as from o.sum(dim=2)
        do = do[:, :, :1].expand(B, H, S, D)
    else:  # dO with every stride 0, as from o.sum(): the last dim too, so it is copied
        do = torch.tensor(0.7, device=device).expand(B, H, S, D)
    _check(q, k, v, do, True)


# ----------------------------------------------------------------------------------------
# Determinism, registration, compilation
# ----------------------------------------------------------------------------------------


@repeat_on_gpu
def test_backward_is_bitwise_deterministic(device):
    # deterministic=True's promise, at GPT-2 small's shape. On the CPU the forced-family test
    # checks the launches it rests on: deterministic=True runs the bwd_dq kernel, no atomic dK/dV.
    q, k, v, do = _inputs(4, 12, 1024, 1024, 64, torch.bfloat16, device)
    first = _kernel(q, k, v, True, 0.125, do)
    second = _kernel(q, k, v, True, 0.125, do)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype, causal", [(torch.bfloat16, True), (torch.float32, False)], ids=str)
def test_atomic_dq_backward(dtype, causal, device):
    # deterministic=False: dQ by fp32 atomic adds inside the dK/dV kernel, same tolerances.
    shape = (2, 4, 300, 333) if ON_GPU else (1, 2, 37, 45)
    q, k, v, do = _inputs(*shape, 64, dtype, device)
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    attention(q, k, v, causal=causal, deterministic=False).backward(do)
    want = _ref64(q, k, v, causal, 1 / 8, do)
    for got, ref, name in zip((q.grad, k.grad, v.grad), want[1:], ("dq", "dk", "dv")):
        torch.testing.assert_close(got.double(), ref, **_tol("attention_bwd", dtype), msg=lambda m: f"{name}: {m}")


def test_opcheck_forward_and_backward_ops(device):
    q, k, v, do = _inputs(1, 2, 19, 27, 16, torch.float32, device)
    torch.library.opcheck(torch.ops.gpt2_kernels.attention_fwd.default,
                          (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), True, 0.25, True))
    o, lse = torch.ops.gpt2_kernels.attention_fwd(q.detach(), k.detach(), v.detach(), True, 0.25, True)
    torch.library.opcheck(torch.ops.gpt2_kernels.attention_bwd.default,
                          (do, q.detach(), k.detach(), v.detach(), o, lse, True, 0.25, True))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()

    def block(qkv):  # the op between a reshape/permute and a projection, as in GPT-2
        B, T, _, H, D = qkv.shape
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return attention(q, k, v).transpose(1, 2).reshape(B, T, H * D).tanh()

    qkv = torch.randn(2, 20, 3, 2, 16, device=device)
    dy = torch.randn(2, 20, 32, device=device)
    results = []
    for fn in (block, torch.compile(block, backend=backend, fullgraph=True)):
        x = qkv.clone().requires_grad_()
        y = fn(x)
        y.backward(dy)
        results.append((y.detach(), x.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, **_tol("attention_bwd", torch.float32))


def test_every_gpu_candidate_is_registered():
    # What `python -m gpt2_kernels.sass` compiles must be every launch the launchers can pick:
    # each architecture's candidates, and the deterministic=False dK/dV kernel.
    registered = {(c.kernel, c.arch, tuple(sorted(c.constexprs.items())), c.num_warps, c.num_stages)
                  for c in registry.configs("attention")}
    combos = [(d, dt) for dt in (torch.bfloat16, torch.float16) for d in HEAD_DIMS] + [(64, torch.float32)]
    for kernel in KERNELS:
        for arch in ARCHS:
            for D, dtype in combos:
                for causal in (True, False):
                    launches = [(cfg, False) for cfg in attn_mod._candidates(kernel, arch, D, dtype, causal)]
                    if kernel == "bwd_dkdv":
                        launches += [(cfg, True) for cfg in attn_mod._candidates(kernel, arch, D, dtype, causal, True)]
                    for cfg, atomic in launches:
                        cx = {"HEAD_DIM": D, **cfg.constexprs}
                        if kernel != "bwd_preprocess":
                            cx.update(CAUSAL=causal, INTERPRET=False, RANGES=False, DROPOUT=False)
                        if kernel == "bwd_dkdv":
                            cx["ATOMIC_DQ"] = atomic
                        # The preprocess launch is registered for every arch at once (None) when
                        # the families share it.
                        keys = [(attn_mod._JIT[kernel], a, tuple(sorted(cx.items())), cfg.num_warps, cfg.num_stages)
                                for a in ((arch, None) if kernel == "bwd_preprocess" else (arch,))]
                        assert any(key in registered for key in keys), \
                            f"{kernel} sm_{arch} D={D} {dtype} causal={causal}: {cfg} {atomic}"
    # The optional paths (key ranges, dropout), causal: every candidate with them, dropout's own
    # lists included, and the deterministic=False dK/dV.
    optional = ((True, False), (False, True), (True, True))
    for D, dtype, variants in ((64, torch.bfloat16, optional), (128, torch.bfloat16, optional[2:]),
                               (64, torch.float32, optional[2:])):
        for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
            for arch in ARCHS:
                for ranges, dropout in variants:
                    launches = [(cfg, False) for cfg in attn_mod._candidates(kernel, arch, D, dtype, True, dropout=dropout)]
                    if kernel == "bwd_dkdv":
                        launches += [(cfg, True) for cfg in
                                     attn_mod._candidates(kernel, arch, D, dtype, True, True, dropout=dropout)]
                    for cfg, atomic in launches:
                        cx = {"HEAD_DIM": D, **cfg.constexprs, "CAUSAL": True, "INTERPRET": False, "RANGES": ranges,
                              "DROPOUT": dropout}
                        if kernel == "bwd_dkdv":
                            cx["ATOMIC_DQ"] = atomic
                        key = (attn_mod._JIT[kernel], arch, tuple(sorted(cx.items())), cfg.num_warps, cfg.num_stages)
                        assert key in registered, f"{kernel} sm_{arch} D={D} {dtype} ranges={ranges} " \
                                                  f"dropout={dropout}: {cfg} {atomic}"


def test_sm90_candidates_use_tma_and_the_pipelined_forward_comes_first():
    for D in HEAD_DIMS:
        for dtype in (torch.bfloat16, torch.float16):
            fwd = attn_mod._candidates("fwd", 90, D, dtype, True)
            assert fwd[0].constexprs["PIPELINE"] and fwd[0].constexprs["TMA"] and fwd[0].num_warps == 8
            assert all(c.constexprs["TMA"] for c in attn_mod._candidates("bwd_dq", 90, D, dtype, True))
            assert attn_mod._candidates("bwd_dkdv", 90, D, dtype, True)[0].constexprs["TMA"]
            assert not any(c.constexprs["TMA"] for c in attn_mod._candidates("fwd", 80, D, dtype, True))
            # The pointer-load tiles that the H200 measured faster are candidates on sm_90 too.
            for kernel in ("fwd", "bwd_dkdv"):
                (pointer,) = attn_mod._candidates(kernel, 80, D, dtype, True)
                assert pointer in attn_mod._candidates(kernel, 90, D, dtype, True)
    # Nothing was timed without a GPU.
    if not ON_GPU:
        assert attn_mod.chosen_configs() == []


def test_sm100_candidates_fit_tcgen05_and_use_tma():
    # A tcgen05 MMA has 64 or 128 rows: every product of every sm_100 candidate gets a tile
    # side of at least 64 where it is the MMA's M (the forward's and dQ's query tile, the dK/dV
    # key tile, and the query tile too when dK/dV also adds dQ), and its operands by TMA.
    for D in HEAD_DIMS:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for kernel, atomic in (("fwd", False), ("bwd_dkdv", False), ("bwd_dkdv", True), ("bwd_dq", False)):
                for c in attn_mod._candidates(kernel, 100, D, dtype, True, atomic_dq=atomic):
                    rows = c.constexprs["BLOCK_N" if kernel == "bwd_dkdv" else "BLOCK_M"]
                    if dtype == torch.float32 and atomic:
                        continue  # the other families' fp32 launch (HMMA for its 16-row dQ)
                    assert rows >= 64 and c.constexprs["TMA"], (kernel, D, dtype, c)
                    if atomic:
                        assert c.constexprs["BLOCK_M"] >= 64, (kernel, D, dtype, c)
    assert attn_mod._candidates("fwd", 100, 64, torch.bfloat16, True)[0].constexprs["PIPELINE"]


@pytest.mark.parametrize("capability, arch", [((10, 0), 100), ((10, 3), 100), ((9, 0), 90), ((12, 0), 80),
                                              ((8, 9), 80), ((8, 0), 80)])
def test_arch_family(monkeypatch, capability, arch):
    # Blackwell's data-centre parts (10.x) get the sm_100 family; consumer Blackwell (12.x,
    # no tcgen05) the sm_80 one.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert attn_mod._arch(torch.device("cuda", 0)) == arch
    assert attn_mod._arch(torch.device("cpu")) is None


def test_reference_matches_sdpa_with_end_aligned_mask():
    q, k, v = (torch.randn(2, 3, s, 16, dtype=torch.float64) for s in (7, 19, 19))
    mask = torch.ones(7, 19, dtype=torch.bool).tril(19 - 7)
    torch.testing.assert_close(attention_reference(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(attention_reference(q, k, v, causal=False, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, scale=0.3))


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(device):
    q, k, v, _ = _inputs(1, 2, 8, 8, 64, torch.float32, device)
    cases = [
        ((q.double(), k.double(), v.double()), {}, TypeError, "q has dtype float64; supported: float32, float16"),
        ((q.long(), k.long(), v.long()), {}, TypeError, "q has dtype int64"),
        ((q, k.half(), v), {}, TypeError, "share one dtype, got q=float32, k=float16, v=float32"),
        ((q, k, None), {}, TypeError, "v must be a torch.Tensor"),
        ((q[0], k[0], v[0]), {}, ValueError, r"q must be 4-D \(B, H, S, D\), got shape \(2, 8, 64\)"),
        ((q, k[:, :1], v[:, :1]), {}, ValueError, r"k must be \(B, H, Sk, D\) = \(1, 2, Sk, 64\)"),
        ((q, k, v[..., :32]), {}, ValueError, r"v must have k's shape \(1, 2, 8, 64\)"),
        ((q, k, v[:, :, :5]), {}, ValueError, "v must have k's shape"),
        ((q[..., :48], k[..., :48], v[..., :48]), {}, ValueError, "D=48 is not supported; supported: 16, 32, 64, 128"),
        ((torch.randn(1, 1, 4, 256), torch.randn(1, 1, 4, 256), torch.randn(1, 1, 4, 256)), {}, ValueError,
         "D=256 is not supported"),
        ((q[:, :, :0], k, v), {}, ValueError, "empty input"),
        ((q, k[:, :, :0], v[:, :, :0]), {}, ValueError, "empty input"),
        ((q, k[:, :, :5], v[:, :, :5]), {}, ValueError, "causal attention needs Sq <= Sk.*Sq=8, Sk=5"),
        ((q, k, v), {"scale": 0.0}, ValueError, "scale must be a positive finite number"),
        ((q, k, v), {"scale": float("nan")}, ValueError, "scale must be a positive finite number"),
        ((q, k.to("meta"), v), {}, ValueError, "one device"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            attention(*args, **kwargs)
    # Without the mask, more queries than keys is fine.
    assert attention(q, k[:, :, :5], v[:, :, :5], causal=False).shape == q.shape


def test_cpu_without_interpreter_raises():
    out = value_errors_without_interpreter("from gpt2_kernels.attention import attention\nq = torch.randn(1, 1, 4, 16)",
                                           "attention(q, q, q)")
    assert "ValueError: gpt2_kernels.attention: got CPU tensors" in out, out
    assert "TRITON_INTERPRET=1" in out, out


# ----------------------------------------------------------------------------------------
# A forced candidate family (the benchmark's triton-sm80 line)
# ----------------------------------------------------------------------------------------


def test_family_is_validated(device, monkeypatch):
    q, k, v, _ = _inputs(1, 2, 8, 8, 16, torch.float32, device)
    for bad in (70, 89, "80", 80.0, True):
        with pytest.raises(ValueError, match="family must be None or one of"):
            attention(q, k, v, family=bad)
    # A family newer than the device's: its tiles would not fit an older GPU.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ValueError, match="family=90 needs a GPU of that family or newer; NVIDIA A100 takes family 80"):
        attn_mod._family(torch.device("cuda", 0), 90)
    assert attn_mod._family(torch.device("cuda", 0), 80) == 80


def test_family_80_on_hopper_picks_among_the_sm80_candidates_only(monkeypatch):
    # A mocked capability-9 device; the tuner records what it is offered instead of timing it.
    offered = []

    class Recorder:
        def pick(self, key, candidates, run, compile=None, device=None):
            offered.append((key, candidates))
            return candidates[0]

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(attn_mod, "_TUNER", Recorder())
    hopper = torch.device("cuda", 0)
    for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
        for D in HEAD_DIMS:
            for family, arch in ((80, 80), (None, 90)):
                offered.clear()
                attn_mod._pick(kernel, hopper, D, torch.bfloat16, True, 1000, None, family)
                ((key, candidates),) = offered
                assert candidates == attn_mod._candidates(kernel, arch, D, torch.bfloat16, True)
                # The family is in the tuner's key: forced and native choices are kept apart.
                assert key == (kernel, arch, D, "bfloat16", True, 1024)
            sm80 = attn_mod._candidates(kernel, 80, D, torch.bfloat16, True)
            assert not any(c.constexprs["TMA"] for c in sm80)
            assert len(sm80) < len(attn_mod._candidates(kernel, 90, D, torch.bfloat16, True))


def test_a_forced_family_reaches_every_kernel_and_runs(device, monkeypatch):
    # The device is mocked as Hopper; the candidates asked for are recorded, and the real
    # device's own (the interpreter's without a GPU) run in their place.
    asked = []
    candidates, own = attn_mod._candidates, attn_mod._arch(torch.device(device))

    def record(kernel, arch, *args, **kwargs):
        asked.append((kernel, arch, kwargs.get("atomic_dq", False)))
        return candidates(kernel, own, *args, **kwargs)

    monkeypatch.setattr(attn_mod, "_arch", lambda device: 90)
    monkeypatch.setattr(attn_mod, "_candidates", record)
    for dtype, deterministic in ((torch.float32, True), (torch.bfloat16, False)):
        q, k, v, do = _inputs(1, 2, 37, 45, 16, dtype, device)
        q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
        asked.clear()
        o = attention(q, k, v, deterministic=deterministic, family=80)
        o.backward(do)
        bwd = ["bwd_dkdv"] if not deterministic else ["bwd_dkdv", "bwd_dq"]
        assert sorted(asked) == sorted([("fwd", 80, False), ("bwd_preprocess", 80, False)]
                                       + [(kernel, 80, not deterministic) for kernel in bwd])
        want = _ref64(q, k, v, True, 1 / 4, do)
        for got, ref in zip((o, q.grad, k.grad, v.grad), want):
            torch.testing.assert_close(got.double(), ref, **_tol("attention_bwd", dtype))


def test_public_function_is_exported():
    import gpt2_kernels

    assert gpt2_kernels.attention is attention and "attention" in gpt2_kernels.__all__
