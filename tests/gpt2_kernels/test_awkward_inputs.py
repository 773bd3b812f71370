"""Inputs a fuzzing pass found mishandled (issue 16), for all three kernels: parameters that are
views with odd strides, empty tensors with a last dimension of 0, and torch.autocast.

Each case is checked against the float64 eager reference (forward and backward), so a kernel
that reads a strided weight as if it were contiguous, or fails on an empty input, fails here.
"""

import pytest
import torch
import torch.nn.functional as F

import gpt2_kernels
from gpt2_kernels.add_layer_norm import add_layer_norm_reference
from gpt2_kernels.attention import attention_reference
from gpt2_kernels.gelu import gelu_reference
from gpt2_kernels.layer_norm import layer_norm_reference
from tests.tolerances import tol


def _grads(fn, *tensors, dy, dtype=None):
    """fn's output and the gradients of its inputs, for the upstream dy. Each input is a
    (base, view) pair: the gradient is the base's, and fn sees the view (in ``dtype``, when
    given), so its strides reach the kernel."""
    leaves = [base.detach().to(dtype or base.dtype).requires_grad_() for base, _ in tensors]
    y = fn(*(view(leaf) for leaf, (_, view) in zip(leaves, tensors)))
    y.backward(dy)
    return y.detach(), [t.grad for t in leaves]


def _dense(t):
    return t, lambda leaf: leaf


# A weight or bias that is a view: every other element of a wider tensor, one element
# broadcast to N (stride 0, whose storage holds a single number), a column of a matrix.
def _param_view(view, N, device):
    return {
        "strided_slice": (torch.randn(2 * N, device=device), lambda t: t[::2]),
        "expanded_scalar": (torch.randn(1, device=device), lambda t: t.expand(N)),
        "column": (torch.randn(N, 3, device=device), lambda t: t[:, 1]),
    }[view]


@pytest.mark.parametrize("view", ["strided_slice", "expanded_scalar", "column"])
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_layer_norm_non_contiguous_weight_and_bias(which, view, device):
    N = 24
    x = torch.randn(5, N, device=device)
    params = {"weight": _dense(torch.randn(N, device=device)), "bias": _dense(torch.randn(N, device=device))}
    params[which] = _param_view(view, N, device)
    inputs = (_dense(x), params["weight"], params["bias"])
    dy = torch.randn(5, N, device=device)
    y, grads = _grads(gpt2_kernels.layer_norm, *inputs, dy=dy)
    y_ref, grads_ref = _grads(layer_norm_reference, *inputs, dy=dy.double(), dtype=torch.float64)
    torch.testing.assert_close(y.double(), y_ref, **tol("layer_norm", torch.float32))
    for name, g, g_ref in zip(("dx", "dweight", "dbias"), grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref, **tol("layer_norm_bwd", torch.float32), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("view", ["strided_slice", "expanded_scalar", "column"])
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_add_layer_norm_non_contiguous_weight_and_bias(which, view, device):
    N = 24
    params = {"weight": _dense(torch.randn(N, device=device)), "bias": _dense(torch.randn(N, device=device))}
    params[which] = _param_view(view, N, device)
    inputs = (_dense(torch.randn(5, N, device=device)), _dense(torch.randn(5, N, device=device)),
              params["weight"], params["bias"])
    dy = torch.randn(5, N, device=device)
    # the sum of y and h, so that both outputs' gradients reach the inputs
    fused = lambda *a: sum(gpt2_kernels.add_layer_norm(*a))  # noqa: E731
    ref = lambda *a: sum(add_layer_norm_reference(*a))  # noqa: E731
    y, grads = _grads(fused, *inputs, dy=dy)
    y_ref, grads_ref = _grads(ref, *inputs, dy=dy.double(), dtype=torch.float64)
    torch.testing.assert_close(y.double(), y_ref, **tol("layer_norm", torch.float32))
    for name, g, g_ref in zip(("dx", "dresidual", "dweight", "dbias"), grads, grads_ref):
        torch.testing.assert_close(g.double(), g_ref, **tol("layer_norm_bwd", torch.float32), msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("view", ["strided_slice", "expanded_scalar", "column"])
def test_gelu_non_contiguous_bias(view, device):
    N = 24
    x = torch.randn(5, N, device=device)
    inputs = (_dense(x), _param_view(view, N, device))
    dy = torch.randn(5, N, device=device)
    y, (dx, db) = _grads(gpt2_kernels.gelu, *inputs, dy=dy)
    y_ref, (dx_ref, db_ref) = _grads(gelu_reference, *inputs, dy=dy.double(), dtype=torch.float64)
    torch.testing.assert_close(y.double(), y_ref, **tol("gelu", torch.float32))
    torch.testing.assert_close(dx.double(), dx_ref, **tol("gelu_bwd", torch.float32))
    torch.testing.assert_close(db.double(), db_ref, **tol("gelu_bwd", torch.float32))


@pytest.mark.parametrize("shape", [(0,), (3, 0), (2, 3, 0), (0, 5), (2, 0, 4)], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_gelu_empty_forward_and_backward(shape, bias, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    b = torch.randn(shape[-1], device=device, requires_grad=True) if bias else None
    y = gpt2_kernels.gelu(x, b)
    assert y.shape == x.shape
    y.backward(torch.randn(shape, device=device))
    assert x.grad.shape == x.shape
    if bias:
        assert torch.equal(b.grad, torch.zeros_like(b))  # a sum over no rows


# ---- torch.autocast ---------------------------------------------------------------------
# Under autocast the Linear layers hand bfloat16 activations to ops whose parameters stay
# float32. Each kernel applies the cast policy of the eager op it replaces (see each public
# function's docstring): attention runs in the autocast dtype like SDPA; GELU's bias follows
# x, as the Linear whose bias it is would have cast it; LayerNorm computes in float32, as
# autocast does for torch's layer_norm on CUDA.


def _autocast(device):
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def test_gelu_under_autocast(device):
    x = torch.randn(6, 16, device=device)
    w, b = torch.randn(16, 16, device=device), torch.randn(16, device=device)
    with _autocast(device):
        h = F.linear(x, w)  # bf16
        y = gpt2_kernels.gelu(h, b)
        y_eager = F.gelu(F.linear(x, w, b), approximate="tanh")
    assert y.dtype == y_eager.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), gelu_reference(h.double(), b.bfloat16().double()), **tol("gelu", torch.bfloat16))


def test_layer_norm_under_autocast(device):
    x = torch.randn(6, 16, device=device)
    w, b = torch.randn(16, device=device), torch.randn(16, device=device)
    with _autocast(device):
        h = F.linear(x, torch.randn(16, 16, device=device))  # bf16 activations, fp32 parameters
        y = gpt2_kernels.layer_norm(h, w, b)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), layer_norm_reference(h.double(), w.double(), b.double()), **tol("layer_norm", torch.float32))


def test_add_layer_norm_under_autocast(device):
    # the residual stream stays float32 while autocast makes the branch bf16; eager adds them
    # in float32 and runs layer_norm in float32, and so must the fused op
    x = torch.randn(6, 16, device=device)
    residual = torch.randn(6, 16, device=device)
    w, b = torch.randn(16, device=device), torch.randn(16, device=device)
    with _autocast(device):
        branch = F.linear(x, torch.randn(16, 16, device=device))  # bf16
        y, h = gpt2_kernels.add_layer_norm(branch, residual, w, b)
    assert y.dtype == h.dtype == torch.float32
    y_ref, h_ref = add_layer_norm_reference(branch.double(), residual.double(), w.double(), b.double())
    torch.testing.assert_close(h.double(), h_ref, **tol("layer_norm", torch.float32))
    torch.testing.assert_close(y.double(), y_ref, **tol("layer_norm", torch.float32))


def test_linear_cross_entropy_under_autocast(device):
    # activations in bf16 from an autocast matmul, the tied weight in float32: eager autocast
    # runs the LM head's linear in bf16, and so must the fused loss (which used to refuse the mix)
    x = torch.randn(6, 16, device=device)
    weight = torch.randn(40, 16, device=device)
    targets = torch.randint(0, 40, (6,), device=device)
    with _autocast(device):
        h = F.linear(x, torch.randn(16, 16, device=device))  # bf16
        loss = gpt2_kernels.linear_cross_entropy(h, weight, targets)
        loss_eager = F.cross_entropy(F.linear(h, weight).float(), targets)
    assert loss.dtype == torch.float32
    ref = F.cross_entropy(h.double() @ weight.bfloat16().double().T, targets)
    torch.testing.assert_close(loss.double(), ref, **tol("linear_cross_entropy", torch.bfloat16))
    torch.testing.assert_close(loss, loss_eager, **tol("linear_cross_entropy", torch.bfloat16))


def test_attention_under_autocast(device):
    q, k, v = (torch.randn(1, 2, 8, 16, device=device) for _ in range(3))
    with _autocast(device):
        o = gpt2_kernels.attention(q, k.bfloat16(), v)
        o_eager = F.scaled_dot_product_attention(q, k.bfloat16(), v, is_causal=True)
    assert o.dtype == o_eager.dtype == torch.bfloat16
    ref = attention_reference(*(t.bfloat16().double() for t in (q, k, v)))
    torch.testing.assert_close(o.double(), ref, **tol("attention", torch.bfloat16))


def test_autocast_gradients_reach_float32_parameters(device):
    x = torch.randn(4, 16, device=device)
    w = torch.randn(16, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    with _autocast(device):
        h = F.linear(x, torch.randn(16, 16, device=device))
        y = gpt2_kernels.gelu(gpt2_kernels.layer_norm(h, w, b), b)
    y.float().sum().backward()
    assert w.grad.dtype == b.grad.dtype == torch.float32
    assert torch.isfinite(w.grad).all() and torch.isfinite(b.grad).all()


def test_autocast_check_stays_traceable_on_cuda_and_cpu(monkeypatch):
    # torch 2.11's dynamo cannot trace torch.amp.is_autocast_available, which broke
    # generate(compile=True) with the kernels on an H200: it must not be asked for cuda or cpu.
    from gpt2_kernels import _common

    def untraceable(device_type):
        raise AssertionError(f"is_autocast_available({device_type!r}) called")

    monkeypatch.setattr(torch.amp, "is_autocast_available", untraceable)
    x = torch.ones(2)
    assert _common.autocast_dtype(x) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _common.autocast_dtype(x) == torch.bfloat16
    monkeypatch.undo()
    assert _common.autocast_dtype(torch.ones(2, device="meta")) is None
    assert _common.autocast_dtype("not a tensor") is None
