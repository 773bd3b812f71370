"""gpt2_kernels.layer_norm against a float64 eager reference: forward, backward, determinism (no
atomic adds; bitwise repeats on a GPU), strided inputs, torch.library.opcheck, torch.compile, and
every input error.

Without CUDA the kernels run in Triton's interpreter, which costs ~10 ms a program, so the
CPU shapes keep few rows when rows are wide; on a GPU the shapes are training-sized.
"""


import pytest
import torch
import torch.nn.functional as F

from gpt2_kernels import registry
from gpt2_kernels._common import as_rows
from gpt2_kernels.layer_norm import (
    MAX_N, _launch_config, _layer_norm_bwd_kernel, _layer_norm_fwd_kernel, layer_norm, layer_norm_reference,
)
from tests.conftest import atomic_calls, repeat_on_gpu, value_errors_without_interpreter
from tests.tolerances import tol

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# One row, odd and prime widths, 3-D leading shapes, GPT-2 XL's 1600, the 8192 limit, and
# enough rows that the backward's programs each loop over several row tiles.
if ON_GPU:
    SHAPES = [(1, 1), (1, 7), (3, 127), (2, 5, 33), (1, 768), (4096, 768), (8, 128, 1600),
              (2048, 1600), (1031, 4096), (257, 8192), (4, 512, 1280)]
else:
    SHAPES = [(1, 1), (1, 7), (3, 127), (2, 3, 33), (64, 17), (5, 1600), (1, 4096), (2, 8192)]


def _inputs(shape, dtype, device):
    N = shape[-1]
    # A non-zero mean and a scale != 1, so that centring and scaling both matter.
    x = (torch.randn(shape, device=device) * 2 + 0.5).to(dtype)
    w = torch.randn(N, device=device).to(dtype)
    b = torch.randn(N, device=device).to(dtype)
    return x, w, b


def _reference(x, w, b, dy, eps=1e-5):
    """Float64 output and gradients of the eager reference on the same (rounded) inputs."""
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = layer_norm_reference(xd, wd, bd, eps)
    y.backward(dy.double())
    return y.detach(), xd.grad, wd.grad, bd.grad


def _kernel(x, w, b, dy, eps=1e-5):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = layer_norm(x, w, b, eps)
    y.backward(dy)
    return y.detach(), x.grad, w.grad, b.grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_match_float64(shape, dtype, device):
    x, w, b = _inputs(shape, dtype, device)
    dy = torch.randn(shape, device=device).to(dtype)
    y, dx, dw, db = _kernel(x, w, b, dy)
    y_ref, dx_ref, dw_ref, db_ref = _reference(x, w, b, dy)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == dtype
    assert y.shape == dx.shape == x.shape and dw.shape == db.shape == w.shape
    torch.testing.assert_close(y.double(), y_ref, **tol("layer_norm", dtype))
    for name, got, want in (("dx", dx, dx_ref), ("dweight", dw, dw_ref), ("dbias", db, db_ref)):
        torch.testing.assert_close(got.double(), want, **tol("layer_norm_bwd", dtype), msg=lambda m: f"{name}: {m}")


def test_saved_statistics_are_fp32_mean_and_rstd(device):
    x, w, b = _inputs((6, 3, 50), torch.bfloat16, device)
    y, mean, rstd = torch.ops.gpt2_kernels.layer_norm_fwd(x, w, b, 1e-3)
    xd = x.double().reshape(-1, 50)
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == rstd.shape == (18,)
    torch.testing.assert_close(mean.double(), xd.mean(-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rstd.double(), (xd.var(-1, unbiased=False) + 1e-3).rsqrt(), atol=1e-6, rtol=1e-6)


def test_reference_is_torch_layer_norm():
    x, w, b = (torch.randn(s, dtype=torch.float64) for s in ((4, 3, 37), (37,), (37,)))
    torch.testing.assert_close(layer_norm_reference(x, w, b, 1e-4), F.layer_norm(x, (37,), w, b, 1e-4))
    xh = x.to(torch.bfloat16)
    torch.testing.assert_close(
        layer_norm_reference(xh, w.bfloat16(), b.bfloat16()),
        F.layer_norm(xh, (37,), w.bfloat16(), b.bfloat16()), atol=1.6e-2, rtol=1.6e-2)


def test_backward_sums_without_atomic_adds():
    # What makes the backward deterministic on a GPU, and what the interpreter can check: the
    # partial sums are written, then summed in a fixed order, never accumulated by atomic adds.
    assert atomic_calls("gpt2_kernels.layer_norm", "gpt2_kernels.add_layer_norm") == []


@repeat_on_gpu
def test_backward_is_deterministic(device):
    # GPT-2 XL's width in bf16, enough rows that several programs each sum several row tiles into
    # the partial buffers, all resident at once: two runs must agree bit for bit.
    shape, dtype = (4096, 1600), torch.bfloat16
    x, w, b = _inputs(shape, dtype, device)
    dy = torch.randn(shape, device=device).to(dtype)
    first = _kernel(x, w, b, dy)
    second = _kernel(x, w, b, dy)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_eps_is_used(device):
    x, w, b = _inputs((3, 20), torch.float32, device)
    x = x * 1e-2  # var ~ 4e-4, so eps = 1e-2 changes the result a lot
    for eps in (1e-5, 1e-2):
        y, _, _, _ = _kernel(x, w, b, torch.zeros_like(x), eps)
        y_ref, _, _, _ = _reference(x, w, b, torch.zeros_like(x), eps)
        torch.testing.assert_close(y.double(), y_ref, **tol("layer_norm", torch.float32))


@pytest.mark.parametrize("layout", ["row_strided", "transposed", "permuted_3d"])
def test_non_contiguous_inputs(layout, device):
    N = 40
    if layout == "row_strided":  # rows of a wider tensor: read in place through the row stride
        x = torch.randn(6, 3 * N, device=device)[:, N:2 * N]
        assert as_rows(x, N).data_ptr() == x.data_ptr()
    elif layout == "transposed":  # last dim not contiguous: copied first
        x = torch.randn(N, 5, device=device).t()
    else:  # leading dims not viewable as one: reshape copies
        x = torch.randn(4, 3, N, device=device).permute(1, 0, 2)
    assert not x.is_contiguous()
    w, b = torch.randn(N, device=device), torch.randn(N, device=device)
    dy = torch.randn(x.shape, device=device).t().contiguous().t() if layout == "transposed" else torch.randn_like(x)
    got = _kernel(x, w, b, dy)
    want = _reference(x, w, b, dy)
    torch.testing.assert_close(got[0].double(), want[0], **tol("layer_norm", torch.float32))
    for g, r in zip(got[1:], want[1:]):
        torch.testing.assert_close(g.double(), r, **tol("layer_norm_bwd", torch.float32))


def test_no_rows(device):
    x = torch.randn(0, 16, device=device, requires_grad=True)
    w = torch.randn(16, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    y = layer_norm(x, w, b)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(16, device=device)) and torch.equal(b.grad, torch.zeros(16, device=device))


def test_opcheck_forward_and_backward_ops(device):
    x, w, b = _inputs((3, 2, 33), torch.float32, device)
    torch.library.opcheck(torch.ops.gpt2_kernels.layer_norm_fwd.default,
                          (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 1e-5))
    _, mean, rstd = torch.ops.gpt2_kernels.layer_norm_fwd(x.detach(), w.detach(), b.detach(), 1e-5)
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.gpt2_kernels.layer_norm_bwd.default,
                          (dy, x.detach(), w.detach(), mean, rstd))


def _residual_block(x, w, b):  # a pre-LN residual step: the op inside other traced ops
    return x + layer_norm(x * 0.5, w, b).relu()


def _layer_norm_only(x, w, b):
    return layer_norm(x, w, b)


# Inductor gets the op alone: on a CPU it would compile C++ for any surrounding pointwise
# ops, which takes about a minute on CI's two cores; what it adds over aot_eager (the op's
# fake and autograd under a real lowering) needs no glue.
@pytest.mark.parametrize("backend, fn", [("aot_eager", _residual_block), ("inductor", _layer_norm_only)],
                         ids=["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, fn, device):
    torch._dynamo.reset()
    x, w, b = _inputs((2, 3, 24), torch.float32, device)
    dy = torch.randn_like(x)
    results = []
    for f in (fn, torch.compile(fn, backend=backend, fullgraph=True)):
        xi, wi, bi = (t.detach().clone().requires_grad_() for t in (x, w, b))
        y = f(xi, wi, bi)
        y.backward(dy)
        results.append((y.detach(), xi.grad, wi.grad, bi.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, **tol("layer_norm_bwd", torch.float32))


def test_bad_inputs_raise_clear_errors(device):
    x, w, b = _inputs((2, 8), torch.float32, device)
    with pytest.raises(TypeError, match="x has dtype int64"):
        layer_norm(x.long(), w, b)
    with pytest.raises(TypeError, match="weight has dtype float64"):
        layer_norm(x, w.double(), b)
    with pytest.raises(TypeError, match="share one dtype"):
        layer_norm(x, w, b.half())
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        layer_norm(x, w, None)
    with pytest.raises(ValueError, match="weight must be 1-D of size N=8"):
        layer_norm(x, w[:7], b)
    with pytest.raises(ValueError, match="bias must be 1-D of size N=8"):
        layer_norm(x, w, b.reshape(2, 4))
    with pytest.raises(ValueError, match=f"1 <= N <= {MAX_N}"):
        layer_norm(torch.zeros(1, MAX_N + 1, device=device), torch.zeros(MAX_N + 1, device=device),
                   torch.zeros(MAX_N + 1, device=device))
    with pytest.raises(ValueError, match="1 <= N"):
        layer_norm(x[:, :0], w[:0], b[:0])
    with pytest.raises(ValueError, match="1 <= N"):
        layer_norm(x[0, 0], w, b)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        layer_norm(x, w, b, eps=-1.0)
    with pytest.raises(ValueError, match="one device"):
        layer_norm(x, w.to("meta"), b)


def test_gpt2_widths_launch_registered_configs():
    # What `python -m gpt2_kernels.sass` compiles must be what the launchers pick, with a signature
    # that names every kernel argument: the statistics and partial sums fp32, the rest x's dtype.
    configs = registry.configs("layer_norm")
    for dtype in ("bf16", "fp16", "fp32"):
        for kernel in (_layer_norm_fwd_kernel, _layer_norm_bwd_kernel):
            launch = _launch_config(kernel, 1600)
            (cfg,) = [c for c in configs if c.kernel is kernel and c.dtype == dtype
                      and (c.constexprs, c.num_warps, c.num_stages) == tuple(launch)]
            sig = cfg.signature()
            assert list(sig) + list(cfg.constexprs) == kernel.arg_names
            assert sig["X"] == f"*{dtype}" and sig["RSTD"] == "*fp32" and sig["n_cols"] == "i32"
    for N in (768, 1024, 1280):
        for kernel in (_layer_norm_fwd_kernel, _layer_norm_bwd_kernel):
            launch = _launch_config(kernel, N)
            assert any(c.kernel is kernel and c.dtype == "bf16" and (c.constexprs, c.num_warps) == launch[:2]
                       for c in configs), (kernel, N)


def test_cpu_without_interpreter_raises():
    out = value_errors_without_interpreter("x, w, b = torch.randn(2, 8), torch.randn(8), torch.randn(8)",
                                           "gpt2_kernels.layer_norm(x, w, b)")
    assert "ValueError: layer_norm: got CPU tensors" in out and "TRITON_INTERPRET=1" in out, out
