"""The GPU subset (``pytest -m gpu``): every kernel at GPT-2's own shapes and dtype, forward and
backward, against float64 eager PyTorch: bf16, head size 64 with 12 heads (gpt2) and 25
(gpt2-xl), S = 1024 and a ragged 1000, widths 768 and 1600, the 50,257-token vocabulary, a
decode step over a 1024-token cache.

It compiles little: one dtype and head size, so a few configs per kernel, and the attention
tuner's choices are read back from its cache file by every process after the first. Without
CUDA it is skipped; the same checks at small shapes run everywhere in the other files of this
folder, whose helpers (and tolerances) these tests share.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import gpt2_kernels
from gpt2_kernels.attention import attention
from gpt2_kernels.decode_attention import decode_attention
from tests.conftest import ON_GPU
from tests.gpt2_kernels.test_attention import _check, _inputs
from tests.gpt2_kernels.test_linear_cross_entropy import _assert_matches_float64
from tests.tolerances import tol

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="GPT-2's shapes need a CUDA GPU")]
BF16 = torch.bfloat16
HEADS = {"gpt2": 12, "gpt2-xl": 25}
WIDTHS = {"gpt2": 768, "gpt2-xl": 1600}


@pytest.mark.parametrize("S", [1024, 1000])
@pytest.mark.parametrize("size", list(HEADS))
def test_attention_forward_backward(size, S):
    q, k, v, do = _inputs(2, HEADS[size], S, S, 64, BF16, "cuda")
    _check(q, k, v, do, causal=True)


def test_attention_is_bitwise_deterministic_and_the_atomic_backward_agrees():
    q, k, v, do = (t.requires_grad_() if i < 3 else t for i, t in enumerate(_inputs(4, 12, 1024, 1024, 64, BF16, "cuda")))
    grads = []
    for deterministic in (True, True, False):
        o = attention(q, k, v, deterministic=deterministic)
        grads.append(torch.autograd.grad(o, (q, k, v), do))
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]))
    for name, a, b in zip("qkv", grads[0], grads[2]):
        torch.testing.assert_close(b.float(), a.float(), **tol("attention_bwd", BF16), msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("Sq", [1, 4])
def test_decode_step_over_a_static_cache(Sq):
    B, H, Sk, D = 4, 12, 1024, 64
    q, k, v = (torch.randn(B, H, s, D, device="cuda").to(BF16) for s in (Sq, Sk, Sk))
    kv_len = torch.tensor([Sk, 700, 333, Sq], device="cuda", dtype=torch.int32)
    got = decode_attention(q, k, v, kv_len=kv_len)
    j = torch.arange(Sk, device="cuda")
    last = kv_len[:, None] - Sq + torch.arange(Sq, device="cuda")[None, :]  # (B, Sq) the newest visible key
    s = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(D)
    s = s.masked_fill((j[None, None, :] > last[:, :, None])[:, None], float("-inf"))
    want = s.softmax(-1) @ v.double()
    torch.testing.assert_close(got.double(), want, **tol("attention", BF16))


def _rows(n, width):
    return torch.randn(n, width, device="cuda").to(BF16).requires_grad_()


def _run(fn, leaves, dy, dtype):
    """fn's output and its gradients on copies of ``leaves`` in ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in leaves]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, dy.to(dtype))]


def _assert_within_2x_eager(fn, ref_fn, leaves, dy, names, ops):
    """flash-attention's rule: the kernel's error against float64 at most twice eager PyTorch's
    own error in bf16, plus the tolerance table's atol (relative to the largest value, for the
    parameter gradients summed over thousands of rows)."""
    got, eager, want = _run(fn, leaves, dy, BF16), _run(ref_fn, leaves, dy, BF16), _run(ref_fn, leaves, dy, torch.float64)
    for name, op, g, e, r in zip(names, ops, got, eager, want):
        assert g.dtype == BF16 and g.shape == r.shape, name
        err, budget = (g.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
        atol = tol(op, BF16)["atol"] * max(1.0, r.abs().max().item())
        assert err <= 2 * budget + atol, f"{name}: error {err:.3e}, eager bf16's {budget:.3e}"


@pytest.mark.parametrize("size", list(WIDTHS))
def test_layer_norm_and_add_layer_norm(size):
    n, N = 8 * 1024, WIDTHS[size]
    x, r = _rows(n, N), _rows(n, N)
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(BF16)
    b = (0.1 * torch.randn(N, device="cuda")).to(BF16)
    dy = torch.randn(n, N, device="cuda").to(BF16)
    ops = ("layer_norm", "layer_norm_bwd", "layer_norm_bwd", "layer_norm_bwd")
    _assert_within_2x_eager(gpt2_kernels.layer_norm, lambda x, w, b: F.layer_norm(x, (N,), w, b),
                            (x, w, b), dy, ("y", "dx", "dw", "db"), ops)
    # The fused residual add: h = x + r, one bf16 rounding of the exact sum (at most one ulp from
    # eager's), y = LayerNorm(h).
    y, h = gpt2_kernels.add_layer_norm(x.detach(), r.detach(), w, b)
    torch.testing.assert_close(h, x.detach() + r.detach(), atol=0, rtol=2**-7)
    _assert_within_2x_eager(lambda x, r, w, b: gpt2_kernels.add_layer_norm(x, r, w, b)[0],
                            lambda x, r, w, b: F.layer_norm(x + r, (N,), w, b),
                            (x, r, w, b), dy, ("y", "dx", "dresidual", "dw", "db"), ("layer_norm",) + ops)


@pytest.mark.parametrize("size", list(WIDTHS))
def test_gelu_with_bias(size):
    n, N = 8 * 1024, 4 * WIDTHS[size]
    x = _rows(n, N)
    bias = (0.1 * torch.randn(N, device="cuda")).to(BF16)
    dy = torch.randn(n, N, device="cuda").to(BF16)
    _assert_within_2x_eager(gpt2_kernels.gelu, lambda x, b: F.gelu(x + b, approximate="tanh"), (x, bias), dy,
                            ("y", "dx", "dbias"), ("gelu", "gelu_bwd", "gelu_bwd"))


def test_linear_cross_entropy_over_gpt2s_vocabulary():
    n, d, V = 2048, 768, 50257
    x = torch.randn(n, d, device="cuda").to(BF16)
    w = (0.02 * torch.randn(V, d, device="cuda")).to(BF16)
    t = torch.randint(0, V, (n,), device="cuda")
    t[:100] = -1

    def run(fn, dtype):
        xs, ws = (a.detach().to(dtype).requires_grad_() for a in (x, w))
        loss = fn(xs, ws, t)
        return [loss.detach(), *torch.autograd.grad(loss, (xs, ws))]

    def eager(x, w, t):
        return F.cross_entropy(x @ w.T, t, ignore_index=-1)

    got = run(lambda x, w, t: gpt2_kernels.linear_cross_entropy(x, w, t, ignore_index=-1), BF16)
    _assert_matches_float64(got, run(eager, BF16), run(eager, torch.float64), BF16, ("loss", "dx", "dw"))
