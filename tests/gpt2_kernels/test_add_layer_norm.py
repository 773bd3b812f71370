"""gpt2_kernels.add_layer_norm against a float64 eager reference (the add, then LayerNorm): both
outputs forward, gradients from both backward, every dtype; opcheck, torch.compile, errors.

Without CUDA the kernels run in Triton's interpreter, so the CPU shapes keep few rows.
"""

import pytest
import torch

from gpt2_kernels import registry
from gpt2_kernels.add_layer_norm import _add_layer_norm_fwd_kernel, _launch_config, add_layer_norm, add_layer_norm_reference
from gpt2_kernels.layer_norm import _layer_norm_bwd_kernel
from tests.tolerances import tol

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(4096, 768), (8, 128, 1600)] if ON_GPU else [(1, 1), (3, 127), (2, 3, 33), (5, 1600), (64, 17)]


def _inputs(shape, dtype, device):
    N = shape[-1]
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
    res = torch.randn(shape, device=device).to(dtype)
    w, b = (torch.randn(N, device=device).to(dtype) for _ in range(2))
    return x, res, w, b


def _run(fn, inputs, dy, dh, dtype=None):
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
    y, h = fn(*leaves)
    torch.autograd.backward((y, h), (dy.to(y.dtype), dh.to(h.dtype)))
    return [y.detach(), h.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_match_float64(shape, dtype, device):
    inputs = _inputs(shape, dtype, device)
    dy, dh = torch.randn(shape, device=device).to(dtype), torch.randn(shape, device=device).to(dtype)
    got = _run(add_layer_norm, inputs, dy, dh)
    # h is one rounding of x + residual, checked against torch's rounding of the add. Triton's
    # interpreter rounds to bf16 by truncation, so its h can sit one ulp from torch's (at |h| ~ 4
    # that is 0.016, and LayerNorm scales it up): the float64 reference for y and the gradients
    # therefore starts from the h the kernel stored, which is what its y is computed from.
    h_rounded = (inputs[0] + inputs[1]).double()
    h_kernel = got[1].double()
    ref = _run(add_layer_norm_reference, (h_kernel, torch.zeros_like(h_kernel), *inputs[2:]), dy, dh, torch.float64)
    assert all(g.dtype == dtype for g in got) and got[0].shape == got[1].shape == shape
    torch.testing.assert_close(got[0].double(), ref[0], **tol("layer_norm", dtype), msg=lambda m: f"y: {m}")
    torch.testing.assert_close(h_kernel, h_rounded, **tol("layer_norm", dtype), msg=lambda m: f"h: {m}")
    names = ["dx", "dresidual", "dweight", "dbias"]
    for name, g, want in zip(names, got[2:], [ref[2], ref[2], ref[4], ref[5]]):
        torch.testing.assert_close(g.double(), want, **tol("layer_norm_bwd", dtype), msg=lambda m: f"{name}: {m}")


def test_only_one_output_used(device):
    # Autograd hands the backward None for an unused output (here h).
    x, res, w, b = (t.requires_grad_() for t in _inputs((3, 40), torch.float32, device))
    y, _ = add_layer_norm(x, res, w, b)
    y.sum().backward()
    xr, rr, wr, br = (t.detach().double().requires_grad_() for t in (x, res, w, b))
    add_layer_norm_reference(xr, rr, wr, br)[0].sum().backward()
    for got, want in ((x.grad, xr.grad), (res.grad, rr.grad), (w.grad, wr.grad)):
        torch.testing.assert_close(got.double(), want, **tol("layer_norm_bwd", torch.float32))


def test_opcheck_forward_and_backward_ops(device):
    x, res, w, b = _inputs((3, 2, 33), torch.float32, device)
    torch.library.opcheck(torch.ops.gpt2_kernels.add_layer_norm_fwd.default,
                          (x.requires_grad_(), res.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1e-5))
    _, h, mean, rstd = torch.ops.gpt2_kernels.add_layer_norm_fwd(x.detach(), res.detach(), w.detach(), b.detach(), 1e-5)
    torch.library.opcheck(torch.ops.gpt2_kernels.add_layer_norm_bwd.default,
                          (torch.randn_like(h), torch.randn_like(h), h, w.detach(), mean, rstd))


def _two_blocks(x, res, w, b):  # the op between traced ops, as in a model
    y, h = add_layer_norm(x.relu(), res, w, b)
    return (y * 2 + h).sum()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    inputs = _inputs((2, 3, 24), torch.float32, device)
    fn = _two_blocks if backend == "aot_eager" else (lambda *a: add_layer_norm(*a))
    results = []
    for f in (fn, torch.compile(fn, backend=backend, fullgraph=True)):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = f(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])
        results.append([o.detach() for o in out] + [t.grad for t in leaves])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, **tol("layer_norm_bwd", torch.float32))


def test_bad_inputs_raise_clear_errors(device):
    x, res, w, b = _inputs((2, 8), torch.float32, device)
    with pytest.raises(TypeError, match="residual has dtype int64"):
        add_layer_norm(x, res.long(), w, b)
    with pytest.raises(TypeError, match="share one dtype"):
        add_layer_norm(x, res.half(), w, b)
    with pytest.raises(ValueError, match="one shape"):
        add_layer_norm(x, res[:1], w, b)
    with pytest.raises(ValueError, match="weight must be 1-D of size N=8"):
        add_layer_norm(x, res, w[:7], b)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        add_layer_norm(x, res, w, b, eps=-1.0)


def test_gpt2_widths_launch_registered_configs():
    configs = registry.configs("add_layer_norm")
    for N in (768, 1024, 1280, 1600):
        for kernel in (_add_layer_norm_fwd_kernel, _layer_norm_bwd_kernel):
            launch = _launch_config(kernel, N)
            (cfg,) = [c for c in configs if c.kernel is kernel and c.dtype == "bf16"
                      and (c.constexprs, c.num_warps, c.num_stages) == tuple(launch)]
            assert list(cfg.signature()) + list(cfg.constexprs) == kernel.arg_names
