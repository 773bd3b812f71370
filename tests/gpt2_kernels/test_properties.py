"""Property-based tests of the three kernels (hypothesis): random shapes, dtypes, layouts
(slices, transposes, stride-0 broadcasts) and values (tiny, large, NaN, inf), each compared
with the float64 eager reference, forward and backward; and the linear cross-entropy's loss
and gradients at logits offset by up to 2^24.

Special values are checked forward only, NaN where the reference has NaN: their gradients are
NaN or inf by either route, and agreeing on which is not a property of the math. Examples per
test are set by tests/conftest.py's profiles (HYPOTHESIS_PROFILE=long for a longer run).
"""

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import gpt2_kernels  # noqa: E402
from gpt2_kernels.attention import attention_reference  # noqa: E402
from gpt2_kernels.gelu import gelu_reference  # noqa: E402
from gpt2_kernels.layer_norm import layer_norm_reference  # noqa: E402
from gpt2_kernels.linear_cross_entropy import linear_cross_entropy_reference  # noqa: E402
from tests.conftest import examples  # noqa: E402
from tests.tolerances import tol  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
# Orders of magnitude of the values; finite in every dtype's range (fp16 ends at 65504).
SCALES = st.sampled_from([1e-6, 1e-2, 1.0, 30.0, 1e3])
SPECIALS = st.sampled_from([math.nan, math.inf, -math.inf])


class Drawn:
    """A drawn input: a contiguous ``base`` and the ``view`` of it the kernel gets, so that a
    gradient leaf can be made of the base and the layout survive (a clone of a view would be
    dense)."""

    def __init__(self, base, view=lambda t: t):
        self.base, self.view = base, view

    @property
    def value(self):
        return self.view(self.base)

    def double(self):
        return Drawn(self.base.double(), self.view)


@st.composite
def randn(draw, *shape):
    """Standard normal values from a seed hypothesis draws, so that a failure replays exactly."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1))))


@st.composite
def tensors(draw, shape, dtype, scale, layout=None):
    """A random Drawn of ``shape`` in one of several layouts (``layout`` None draws one)."""
    layout = layout or draw(st.sampled_from(["contiguous", "slice", "transposed", "broadcast"]))
    shape = tuple(shape)
    rand = lambda *dims: draw(randn(*dims))  # noqa: E731
    if layout == "slice" and shape:  # every other element of a tensor twice as long in the last dim
        base, view = rand(*shape[:-1], 2 * shape[-1]), lambda t: t[..., ::2]
    elif layout == "transposed" and len(shape) >= 2:  # the two last dims swapped in memory
        base, view = rand(*shape[:-2], shape[-1], shape[-2]), lambda t: t.transpose(-1, -2)
    elif layout == "broadcast" and shape:  # stride 0 along the first dim
        base, view = rand(1, *shape[1:]), lambda t: t.expand(shape)
    else:
        base, view = rand(*shape), lambda t: t
    drawn = Drawn((base.to(DEVICE) * scale).to(dtype), view)
    assert drawn.value.shape == shape
    return drawn


def _with_specials(draw, x):
    """x (a Drawn) with a NaN or an inf written at a few random places of its base."""
    base = x.base.clone()
    flat = base.view(-1)
    for _ in range(draw(st.integers(1, 3))):
        if flat.numel():
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(SPECIALS)
    return Drawn(base, x.view)


def _close(got, want, tolerance, what):
    torch.testing.assert_close(got.double(), want, **tolerance, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _run(fn, inputs, dy):
    """fn's output and its gradients with respect to ``inputs`` (Drawn or None) as fn sees them,
    the views: what the kernel computes, before autograd sums a broadcast's gradient."""
    views = []
    for d in inputs:
        views.append(None if d is None else d.view(d.base.detach().clone().requires_grad_()))
        if views[-1] is not None:
            views[-1].retain_grad()
    y = fn(*views)
    y.backward(dy)
    return y.detach(), [None if v is None else v.grad for v in views]


# ---- LayerNorm ---------------------------------------------------------------------------
@settings(max_examples=examples(12))
@given(data=st.data(), dtype=DTYPES, scale=SCALES, special=st.booleans(),
       lead=st.lists(st.integers(0, 4), min_size=0, max_size=2), N=st.integers(1, 70))
def test_layer_norm_matches_float64(data, dtype, scale, special, lead, N):
    shape = (*lead, N) if lead else (1, N)
    x = data.draw(tensors(shape, dtype, scale), label="x")
    w = data.draw(tensors((N,), dtype, 1.0, data.draw(st.sampled_from(["contiguous", "slice", "broadcast"]))), "w")
    b = data.draw(tensors((N,), dtype, 1.0, data.draw(st.sampled_from(["contiguous", "slice", "broadcast"]))), "b")
    if special:
        x = _with_specials(data.draw, x)
    want = layer_norm_reference(x.double().value, w.double().value, b.double().value)
    if special:
        _close(gpt2_kernels.layer_norm(x.value, w.value, b.value), want, tol("layer_norm", dtype), "y")
        return
    dy = data.draw(randn(*shape), label="dy").to(DEVICE, dtype)
    y, (dx, dw, db) = _run(gpt2_kernels.layer_norm, [x, w, b], dy)
    _, (dx_ref, dw_ref, db_ref) = _run(layer_norm_reference, [t.double() for t in (x, w, b)], dy.double())
    _close(y, want, tol("layer_norm", dtype), "y")
    # dx scales as 1/std(x): compare it relative to that scale, as tolerances are for O(1) values
    big = max(1.0, dx_ref.abs().max().item()) if dx_ref.numel() else 1.0
    _close(dx / big, dx_ref / big, tol("layer_norm_bwd", dtype), "dx")
    for g, g_ref, name in ((dw, dw_ref, "dweight"), (db, db_ref, "dbias")):
        size = max(1.0, g_ref.abs().max().item())  # a sum over rows
        _close(g / size, g_ref / size, tol("layer_norm_bwd", dtype), name)


# ---- GELU ----------------------------------------------------------------------------------
@settings(max_examples=examples(15))
@given(data=st.data(), dtype=DTYPES, scale=SCALES, special=st.booleans(), with_bias=st.booleans(),
       shape=st.lists(st.integers(0, 9), min_size=1, max_size=3))
def test_gelu_matches_float64(data, dtype, scale, special, with_bias, shape):
    x = data.draw(tensors(tuple(shape), dtype, scale), label="x")
    bias = None
    if with_bias:
        layout = data.draw(st.sampled_from(["contiguous", "slice", "broadcast"]))
        bias = data.draw(tensors((shape[-1],), dtype, 1.0, layout), label="bias")
    if special:
        x = _with_specials(data.draw, x)
    want = gelu_reference(x.double().value, None if bias is None else bias.double().value)
    if special or scale > 100:  # huge |x|: the derivative's cancellations differ by route
        _close(gpt2_kernels.gelu(x.value, None if bias is None else bias.value), want, tol("gelu", dtype), "y")
        return
    dy = data.draw(randn(*shape), label="dy").to(DEVICE, dtype)
    y, grads = _run(gpt2_kernels.gelu, [x, bias], dy)
    _, grads_ref = _run(gelu_reference, [x.double(), None if bias is None else bias.double()], dy.double())
    _close(y, want, tol("gelu", dtype), "y")
    _close(grads[0], grads_ref[0], tol("gelu_bwd", dtype), "dx")
    if bias is not None:
        size = max(1.0, grads_ref[1].abs().max().item()) if grads_ref[1].numel() else 1.0
        _close(grads[1] / size, grads_ref[1] / size, tol("gelu_bwd", dtype), "dbias")


# ---- attention -------------------------------------------------------------------------------
@st.composite
def qkv_layout(draw, B, H, S, D, dtype, scale):
    """(B, H, S, D) as a model makes it: a head split of (B, S, H, D) rows, a contiguous tensor,
    or one head broadcast to all (stride 0)."""
    layout = draw(st.sampled_from(["heads_split", "contiguous", "head_broadcast"]))
    if layout == "heads_split":
        base, view = draw(randn(B, S, H, D)), lambda t: t.transpose(1, 2)
    elif layout == "head_broadcast":
        base, view = draw(randn(B, 1, S, D)), lambda t: t.expand(B, H, S, D)
    else:
        base, view = draw(randn(B, H, S, D)), lambda t: t
    return Drawn((base.to(DEVICE) * scale).to(dtype), view)


@settings(max_examples=examples(8))
@given(data=st.data(), dtype=DTYPES, causal=st.booleans(), B=st.integers(1, 2), H=st.integers(1, 2),
       Sq=st.integers(1, 20), extra=st.integers(0, 12), D=st.sampled_from([16, 32]),
       scale=st.sampled_from([0.1, 1.0, 4.0]))
def test_attention_matches_float64(data, dtype, causal, B, H, Sq, extra, D, scale):
    Sk = Sq + extra if causal else data.draw(st.integers(1, 20), label="Sk")
    q = data.draw(qkv_layout(B, H, Sq, D, dtype, scale), label="q")
    k = data.draw(qkv_layout(B, H, Sk, D, dtype, scale), label="k")
    v = data.draw(qkv_layout(B, H, Sk, D, dtype, 1.0), label="v")
    dy = data.draw(randn(B, H, Sq, D), label="dy").to(DEVICE, dtype)
    attend = lambda *t: gpt2_kernels.attention(*t, causal=causal)  # noqa: E731
    reference = lambda *t: attention_reference(*t, causal=causal)  # noqa: E731
    o, grads = _run(attend, [q, k, v], dy)
    want, grads_ref = _run(reference, [t.double() for t in (q, k, v)], dy.double())
    if dtype == torch.float32:
        key = "tf32" if DEVICE == "cuda" else dtype  # tf32 matrix products on a GPU
        _close(o, want, tol("attention", key), "o")
        for g, g_ref, name in zip(grads, grads_ref, ("dq", "dk", "dv")):
            size = max(1.0, g_ref.abs().max().item())  # a sum over the sequence: relative to its size
            _close(g / size, g_ref / size, tol("attention_bwd", key), name)
        return
    # fp16/bf16 with scores this large (q, k up to 4x unit scale) make the softmax sharp, and
    # the table's tolerances are for unit-scale inputs: flash-attention's rule judges instead,
    # an error against float64 within 2x of eager PyTorch's own error in the same dtype.
    eager, eager_grads = _run(reference, [q, k, v], dy)
    for name, got, ref, base in zip(("o", "dq", "dk", "dv"), (o, *grads), (want, *grads_ref), (eager, *eager_grads)):
        err, budget = ((t.double() - ref).abs().max().item() for t in (got, base))
        atol = tol("attention" if name == "o" else "attention_bwd", dtype)["atol"]
        assert err <= 2 * budget + atol, f"{name}: error {err:.2e} against float64, eager's {budget:.2e}"


# ---- linear cross-entropy: logits far from 0 -------------------------------------------------
def _lce_and_grads(fn, x, w, t, b, reduction, dy):
    leaves = [v.detach().clone().requires_grad_() for v in (x, w, b)]
    loss = fn(*leaves[:2], t, leaves[2], reduction=reduction)
    loss.backward(dy)
    return [loss.detach()] + [v.grad for v in leaves]


@settings(max_examples=examples(5))
@given(offset=st.integers(-(2**24) + 64, 2**24 - 64), reduction=st.sampled_from(["mean", "none"]),
       seed=st.integers(0, 2**31 - 1))
@example(offset=10**7, reduction="none", seed=0)
@example(offset=-(10**7), reduction="mean", seed=1)
def test_linear_cross_entropy_keeps_fp32_accuracy_far_from_zero(offset, reduction, seed):
    """x and W small integers, the bias an offset plus small integers: every logit is an integer
    under 2^24 in size, exact in fp32 and float64, so the reference sees the logits the kernel
    does and any difference is the kernel's arithmetic. The offset cancels in the softmax; an
    fp32 lse - z[t] would keep its rounding (0.5 at 1e7) in a loss of a few nats."""
    g = torch.Generator().manual_seed(seed)
    n, d, v = 6, 8, 40
    x = torch.randint(-1, 2, (n, d), generator=g).float().to(DEVICE)
    w = torch.randint(-3, 4, (v, d), generator=g).float().to(DEVICE)
    b = (torch.randint(-8, 9, (v,), generator=g) + offset).float().to(DEVICE)
    t = torch.randint(0, v, (n,), generator=g).to(DEVICE)
    dy = torch.randn(n if reduction == "none" else (), generator=g).to(DEVICE)
    got = _lce_and_grads(gpt2_kernels.linear_cross_entropy, x, w, t, b, reduction, dy)
    want = _lce_and_grads(linear_cross_entropy_reference, x.double(), w.double(), t, b.double(), reduction, dy.double())
    for name, g_, w_ in zip(("loss", "dx", "dweight", "dbias"), got, want):
        _close(g_, w_, tol("linear_cross_entropy", torch.float32), name)
