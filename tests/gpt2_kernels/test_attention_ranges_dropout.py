"""gpt2_kernels.attention on real batches: per-sequence key ranges (kv_start, kv_len) and dropout
inside the kernel, forward and backward, against a float64 reference built here from indices and
the exact keep-mask; the decode path with the same arguments; the input errors.

Random ranges include an empty one (a sequence with no key: output 0 and zero gradients, never
NaN), a full one, a left-padded and a right-padded one. Without CUDA the kernels run in Triton's
interpreter with small tiles, so these short sequences cross several tiles, and the ranges'
edges fall inside tiles and on their boundaries.
"""

import math

import pytest
import torch

import gpt2_kernels
from gpt2_kernels import attention, attention_dropout_mask, decode_attention
from tests.tolerances import tol

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _tol(op, dtype):
    """(atol, rtol) of the tolerance table; fp32 on a GPU takes its TF32 row."""
    t = tol(op, "tf32" if dtype == torch.float32 and ON_GPU else dtype)
    return t["atol"], t["rtol"]


def _ranges(B, Sk, device, g):
    """(kv_start, kv_len), int32 (B,): full, empty, left-padded, right-padded, then random."""
    lo = [0, Sk // 2, int(torch.randint(1, Sk, (), generator=g)), 0]
    hi = [Sk, Sk // 2, Sk, int(torch.randint(1, Sk, (), generator=g))]
    for _ in range(B - 4):
        a, b = sorted(torch.randint(0, Sk + 1, (2,), generator=g).tolist())
        lo.append(a)
        hi.append(b)
    as32 = lambda x: torch.tensor(x[:B], dtype=torch.int32, device=device)  # noqa: E731
    return as32(lo), as32(hi)


def _visible(B, Sq, Sk, causal, lo, hi, device):
    """(B, 1, Sq, Sk) bool from indices: kv_start <= j < kv_len, and j <= i + Sk - Sq if causal."""
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    ok = (j >= lo.long().view(B, 1, 1, 1)) & (j < hi.long().view(B, 1, 1, 1))
    return ok & (j <= i + Sk - Sq) if causal else ok


def _ref(q, k, v, do, visible, scale, keep=None, p=0.0, dtype=torch.float64):
    """Output and gradients of attention written out in eager PyTorch, in `dtype`: float64 for
    the reference, the inputs' own dtype for flash-attention's error budget."""
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    w = s.masked_fill(~visible, float("-inf")).softmax(-1).nan_to_num(0.0)  # a row with no key: 0
    if keep is not None:
        w = w * keep / (1 - p)
    o = torch.einsum("bhqk,bhkd->bhqd", w, v)
    o.backward(do.to(dtype))
    return o.detach(), q.grad, k.grad, v.grad


def _ref64(q, k, v, do, visible, scale, keep=None, p=0.0):
    return _ref(q, k, v, do, visible, scale, keep, p)


def _run(q, k, v, do, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = attention(q, k, v, **kw)
    o.backward(do)
    return o.detach(), q.grad, k.grad, v.grad


def _inputs(B, H, Sq, Sk, D, dtype, device, g):
    def r(S):
        return torch.randn(B, H, S, D, generator=g).to(device=device, dtype=dtype)

    return r(Sq), r(Sk), r(Sk), r(Sq)


def _close(got, want, dtype, eager=None):
    """fp32: the tolerance table, element by element. fp16/bf16 (`eager` given): flash-attention's
    rule, each tensor's largest error against float64 at most twice eager PyTorch's own in that
    dtype, plus the table's atol. An element-wise bound fails there by chance: a key that is the
    only one its rows see has dK = 0 exactly in float64 (P = 1, so dP - rowsum(dO * O) cancels),
    and the kernel's dK there is the sum of 41 rows' rounding of O, dropout's 1/(1-p) included
    (0.045 against 0.04, bf16, seed 237866254)."""
    names = ("o", "dq", "dk", "dv")
    for i, (name, a, b) in enumerate(zip(names, got, want)):
        atol, rtol = _tol("attention" if name == "o" else "attention_bwd", dtype)
        assert torch.isfinite(a).all(), name
        if eager is None:
            torch.testing.assert_close(a.double(), b, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
        else:
            err = (a.double() - b).abs().max().item()
            budget = (eager[i].double() - b).abs().max().item()
            assert err <= 2 * budget + atol, f"{name}: error {err:.2e} vs eager {dtype} {budget:.2e}"


def _check(got, q, k, v, do, visible, scale, keep=None, p=0.0):
    want = _ref64(q, k, v, do, visible, scale, keep, p)
    low = q.dtype in (torch.float16, torch.bfloat16)
    _close(got, want, q.dtype, _ref(q, k, v, do, visible, scale, keep, p, q.dtype) if low else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D,Sq,Sk", [(16, 37, 37), (32, 20, 45), (64, 33, 33), (128, 9, 24)])
def test_ranges_forward_and_backward(dtype, causal, D, Sq, Sk, device):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    B, H = 6, 2
    q, k, v, do = _inputs(B, H, Sq, Sk, D, dtype, device, g)
    lo, hi = _ranges(B, Sk, device, g)
    got = _run(q, k, v, do, causal=causal, kv_start=lo, kv_len=hi)
    visible = _visible(B, Sq, Sk, causal, lo, hi, device)
    _check(got, q, k, v, do, visible, 1 / math.sqrt(D))
    # Rows that see no key: exactly 0, and so are the gradients of keys no row sees.
    o, dq, dk, dv = got
    none = ~visible.any(-1).expand(B, H, Sq)
    assert (o[none] == 0).all() and (dq[none] == 0).all()
    unseen = ~visible.any(-2).expand(B, H, Sk)
    assert (dk[unseen] == 0).all() and (dv[unseen] == 0).all()


@pytest.mark.parametrize("causal", [True, False])
def test_only_one_bound_given(causal, device):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    B, H, S, D = 4, 2, 29, 16
    q, k, v, do = _inputs(B, H, S, S, D, torch.float32, device, g)
    lo, hi = _ranges(B, S, device, g)
    for kw, (a, b) in (({"kv_start": lo}, (lo, torch.full_like(hi, S))), ({"kv_len": hi}, (torch.zeros_like(lo), hi))):
        got = _run(q, k, v, do, causal=causal, **kw)
        _close(got, _ref64(q, k, v, do, _visible(B, S, S, causal, a, b, device), 1 / math.sqrt(D)), torch.float32)


def test_bounds_outside_the_keys_are_clamped(device):
    # kv_len past Sk counts as Sk and a negative kv_start as 0: read on the device, never refused.
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    B, H, S, D = 2, 1, 21, 16
    q, k, v, do = _inputs(B, H, S, S, D, torch.float32, device, g)
    lo = torch.tensor([-5, 3], dtype=torch.int32, device=device)
    hi = torch.tensor([10, 1000], dtype=torch.int32, device=device)
    got = _run(q, k, v, do, kv_start=lo, kv_len=hi)
    want = _ref64(q, k, v, do, _visible(B, S, S, True, lo.clamp(min=0), hi.clamp(max=S), device), 1 / math.sqrt(D))
    _close(got, want, torch.float32)


def test_tiles_outside_a_range_are_skipped_not_masked(device):
    # NaN in every key tile wholly outside a sequence's range (any tile size up to 128): a
    # masked tile would still multiply its V rows by P = 0 and spread the NaN (0 * NaN); a
    # skipped one is never read. Forward and both backward passes.
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    B, H, S, D = 2, 1, 300, 16
    q, k, v, do = _inputs(B, H, S, S, D, torch.float32, device, g)
    lo = torch.tensor([140, 0], dtype=torch.int32, device=device)
    hi = torch.tensor([250, 100], dtype=torch.int32, device=device)
    k2, v2 = k.clone(), v.clone()
    for b, (a, e) in enumerate(zip(lo.tolist(), hi.tolist())):
        outside = torch.ones(S, dtype=torch.bool)
        outside[a // 128 * 128: -(-e // 128) * 128] = False
        k2[b, :, outside], v2[b, :, outside] = float("nan"), float("nan")
    got = _run(q, k2, v2, do, kv_start=lo, kv_len=hi)
    visible = _visible(B, S, S, True, lo, hi, device)
    o, dq, dk, dv = got
    ref = _ref64(q, k, v, do, visible, 1 / math.sqrt(D))
    torch.testing.assert_close(o.double(), ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dq.double(), ref[1], atol=1e-4, rtol=1e-4)
    inside = visible.any(-2).expand(B, H, S)
    torch.testing.assert_close(dk.double()[inside], ref[2][inside], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dv.double()[inside], ref[3][inside], atol=1e-4, rtol=1e-4)


# ---- dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("deterministic", [True, False])
def test_dropout_equals_the_reference_built_from_its_mask(dtype, causal, deterministic, device):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    B, H, S, D, p = 5, 2, 41, 32, 0.3
    q, k, v, do = _inputs(B, H, S, S, D, dtype, device, g)
    lo, hi = _ranges(B, S, device, g)
    seed = int(torch.randint(0, 2**31, (), generator=g))
    torch.manual_seed(seed)
    got = _run(q, k, v, do, causal=causal, deterministic=deterministic, kv_start=lo, kv_len=hi, dropout_p=p)
    torch.manual_seed(seed)
    keep = attention_dropout_mask(q, k, p)
    assert keep.shape == (B, H, S, S) and keep.dtype == torch.bool
    _check(got, q, k, v, do, _visible(B, S, S, causal, lo, hi, device), 1 / math.sqrt(D), keep, p)


def test_dropout_keep_rate_is_binomial_and_heads_draw_apart(device):
    B, H, S, p = 2, 3, 64, 0.1
    q = torch.empty(B, H, S, 16, device=device)
    keep = attention_dropout_mask(q, q, p, seed=1234)
    n = keep.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * sigma
    per_head = keep.flatten(2).float().mean(-1)  # each head's own rate, 4096 draws each
    assert (per_head - (1 - p)).abs().max() < 5 * math.sqrt(p * (1 - p) / S**2)
    flat = keep.flatten(0, 1)
    assert all(not torch.equal(flat[a], flat[b]) for a in range(B * H) for b in range(a))
    assert not torch.equal(keep, attention_dropout_mask(q, q, p, seed=1235))
    assert torch.equal(keep, attention_dropout_mask(q, q, p, seed=1234))


def test_dropout_repeats_under_manual_seed_and_only_then(device):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    q, k, v, _ = _inputs(1, 2, 24, 24, 16, torch.float32, device, g)
    torch.manual_seed(7)
    a = attention(q, k, v, dropout_p=0.5)
    b = attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(7)
    assert torch.equal(a, attention(q, k, v, dropout_p=0.5)) and not torch.equal(a, b)


def test_no_dropout_draws_no_seed(device):
    # dropout_p = 0 leaves torch's generator alone: turning the kernel on changes no other draw.
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    q, k, v, _ = _inputs(1, 2, 24, 24, 16, torch.float32, device, g)
    state = torch.get_rng_state()
    attention(q, k, v, dropout_p=0.0)
    assert torch.equal(state, torch.get_rng_state())


def test_opcheck_with_ranges_and_dropout(device):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    q, k, v, do = _inputs(3, 2, 19, 19, 16, torch.float32, device, g)
    lo, hi = torch.tensor([0, 4, 9], dtype=torch.int32, device=device), torch.tensor([19, 15, 9], dtype=torch.int32,
                                                                                     device=device)
    args = (True, 0.25, True, None, lo, hi, 0.2, 99)
    torch.library.opcheck(torch.ops.gpt2_kernels.attention_fwd.default,
                          (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), *args))
    o, lse = torch.ops.gpt2_kernels.attention_fwd(q.detach(), k.detach(), v.detach(), *args)
    torch.library.opcheck(torch.ops.gpt2_kernels.attention_bwd.default,
                          (do, q.detach(), k.detach(), v.detach(), o, lse, True, 0.25, True, None, lo, hi, 0.2, 99))


# ---- decode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Sq", [1, 4])
@pytest.mark.parametrize("causal", [True, False])
def test_decode_takes_kv_start(dtype, Sq, causal, device):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    B, H, Sk, D = 5, 2, 140, 32
    q, k, v, _ = _inputs(B, H, Sq, Sk, D, dtype, device, g)
    lo = torch.tensor([0, 17, 64, 139, 140], dtype=torch.int32, device=device)  # the last sees nothing
    o = decode_attention(q, k, v, causal=causal, kv_start=lo, num_splits=3)
    hi = torch.full_like(lo, Sk)
    ref = _ref64(q, k, v, torch.zeros_like(q), _visible(B, Sq, Sk, causal, lo, hi, device), 1 / math.sqrt(D))[0]
    atol, rtol = _tol("attention", dtype)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o.double(), ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("causal", [True, False])
def test_one_query_with_ranges_takes_the_decode_path(causal, device, monkeypatch):
    # Sq = 1 over many keys, no gradient: attention() hands kv_start and kv_len to the split-KV
    # kernel, whose mask is then the same.
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    B, H, Sk, D = 4, 2, 100, 16
    q, k, v, _ = _inputs(B, H, 1, Sk, D, torch.float32, device, g)
    lo, hi = _ranges(B, Sk, device, g)
    calls = []
    original = gpt2_kernels.attention.__globals__["decode_attention"]
    monkeypatch.setitem(gpt2_kernels.attention.__globals__, "decode_attention",
                        lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    o = attention(q, k, v, causal=causal, kv_start=lo, kv_len=hi)
    assert calls and calls[0]["kv_start"] is lo and calls[0]["kv_len"] is hi
    ref = _ref64(q, k, v, torch.zeros_like(q), _visible(B, 1, Sk, causal, lo, hi, device), 1 / math.sqrt(D))[0]
    torch.testing.assert_close(o.double(), ref, atol=1e-5, rtol=1e-5)


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,message", [
    (lambda B, d: torch.zeros(B, dtype=torch.int64, device=d), "int32"),
    (lambda B, d: [0] * B, "int32"),
    (lambda B, d: torch.zeros(B + 1, dtype=torch.int32, device=d), r"shape \(B,\)"),
    (lambda B, d: torch.zeros(B, 1, dtype=torch.int32, device=d), r"shape \(B,\)"),
])
@pytest.mark.parametrize("name", ["kv_start", "kv_len"])
def test_bad_bounds_are_refused(bad, message, name, device):
    q = torch.randn(2, 1, 8, 16, device=device)
    with pytest.raises((TypeError, ValueError), match=f"{name}.*{message}"):
        attention(q, q, q, **{name: bad(2, device)})


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), True, "0.1", None])
def test_bad_dropout_is_refused(p, device):
    q = torch.randn(1, 1, 8, 16, device=device)
    with pytest.raises(ValueError, match="dropout_p must be a number in"):
        attention(q, q, q, dropout_p=p)
    with pytest.raises(ValueError, match="dropout_p must be a number in"):
        attention_dropout_mask(q, q, p)
