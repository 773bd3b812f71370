"""gpt2_kernels.gelu against a float64 eager reference, with and without the fused bias: forward,
backward (dx and dbias), determinism (no atomic adds; bitwise repeats on a GPU), strided inputs,
saturation, torch.library.opcheck, torch.compile, and every input error.

Without CUDA the kernels run in Triton's interpreter, which costs ~10 ms a program, so the
CPU shapes stay small; on a GPU the shapes are GPT-2 MLP-sized.
"""


import pytest
import torch
import torch.nn.functional as F

from gpt2_kernels import registry
from gpt2_kernels._common import as_rows
from gpt2_kernels.gelu import (
    MAX_BIAS_N, _gelu_bias_bwd_kernel, _gelu_bias_fwd_kernel, _gelu_bwd_kernel, _gelu_fwd_kernel, _launch_config, gelu,
    gelu_reference,
)
from tests.conftest import atomic_calls, repeat_on_gpu, value_errors_without_interpreter
from tests.tolerances import tol

ON_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# One element, one row, odd and prime widths, 3-D leading shapes, GPT-2 MLP widths (4 * 768,
# 4 * 1600), and for the bias path enough rows that each program loops over several tiles.
if ON_GPU:
    SHAPES = [(1, 1), (1, 7), (3, 127), (2, 5, 33), (1, 3072), (4096, 3072), (8, 128, 6400),
              (1031, 1600), (257, 8192), (4, 512, 5120)]
else:
    SHAPES = [(1, 1), (1, 7), (3, 127), (2, 3, 33), (97, 5), (17, 1600), (1, 3072), (2, 8192)]


def _reference(x, bias, dy):
    """Float64 output and gradients of the eager reference on the same (rounded) inputs."""
    xd = x.detach().double().requires_grad_()
    bd = None if bias is None else bias.detach().double().requires_grad_()
    y = gelu_reference(xd, bd)
    y.backward(dy.double())
    return y.detach(), xd.grad, None if bias is None else bd.grad


def _kernel(x, bias, dy):
    x = x.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    y = gelu(x, bias)
    y.backward(dy)
    return y.detach(), x.grad, None if bias is None else bias.grad


def _check(got, want, dtype):
    (y, dx, db), (y_ref, dx_ref, db_ref) = got, want
    torch.testing.assert_close(y.double(), y_ref, **tol("gelu", dtype))
    torch.testing.assert_close(dx.double(), dx_ref, **tol("gelu_bwd", dtype), msg=lambda m: f"dx: {m}")
    if db_ref is not None:
        torch.testing.assert_close(db.double(), db_ref, **tol("gelu_bwd", dtype), msg=lambda m: f"dbias: {m}")


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_match_float64(shape, dtype, bias, device):
    # Spread over GELU's curved region and both tails (|u| up to ~10).
    x = (torch.randn(shape, device=device) * 3).to(dtype)
    b = torch.randn(shape[-1], device=device).to(dtype) if bias else None
    dy = torch.randn(shape, device=device).to(dtype)
    got = _kernel(x, b, dy)
    assert got[0].dtype == got[1].dtype == dtype and got[0].shape == got[1].shape == x.shape
    _check(got, _reference(x, b, dy), dtype)


def test_reference_is_torch_tanh_gelu():
    x, b = torch.randn(5, 3, 31, dtype=torch.float64) * 4, torch.randn(31, dtype=torch.float64)
    torch.testing.assert_close(gelu_reference(x), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(gelu_reference(x, b), F.gelu(x + b, approximate="tanh"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_saturated_tails(dtype, device):
    # Far out, gelu(u) is u or 0 and gelu'(u) is 1 or 0; no overflow may turn them into NaN.
    x = torch.tensor([-1e4, -300.0, -30.0, -8.0, 8.0, 30.0, 300.0, 1e4], device=device).to(dtype)
    dy = torch.ones_like(x)
    got = _kernel(x, None, dy)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    _check(got, _reference(x, None, dy), dtype)


def test_zero_dim_input(device):
    # "Any shape" includes a 0-d x: without a bias the flat kernels never look at x.shape[-1].
    x = torch.tensor(0.7, device=device)
    dy = torch.tensor(-1.3, device=device)
    got = _kernel(x, None, dy)
    assert got[0].shape == got[1].shape == ()
    _check(got, _reference(x, None, dy), torch.float32)


def test_backward_sums_without_atomic_adds():
    # What makes the backward deterministic on a GPU, and what the interpreter can check: the
    # partial sums are written, then summed in a fixed order, never accumulated by atomic adds.
    assert atomic_calls("gpt2_kernels.gelu") == []


@repeat_on_gpu
def test_backward_is_deterministic(device):
    # GPT-2's MLP width in bf16, enough rows that several row groups each sum several tiles into
    # the partial buffer, all resident at once: two runs must agree bit for bit.
    shape, dtype = (4096, 3072), torch.bfloat16
    x = (torch.randn(shape, device=device) * 3).to(dtype)
    b = torch.randn(shape[-1], device=device).to(dtype)
    dy = torch.randn(shape, device=device).to(dtype)
    first, second = _kernel(x, b, dy), _kernel(x, b, dy)
    for a, c in zip(first, second):
        assert torch.equal(a, c)


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("layout", ["row_strided", "transposed", "permuted_3d"])
def test_non_contiguous_inputs(layout, bias, device):
    N = 40
    if layout == "row_strided":  # rows of a wider tensor (the bias path reads them in place)
        x = torch.randn(6, 3 * N, device=device)[:, N:2 * N]
        assert as_rows(x, N).data_ptr() == x.data_ptr()
    elif layout == "transposed":  # last dim not contiguous: copied first
        x = torch.randn(N, 5, device=device).t()
    else:  # leading dims not viewable as one
        x = torch.randn(4, 3, N, device=device).permute(1, 0, 2)
    assert not x.is_contiguous()
    b = torch.randn(x.shape[-1], device=device) if bias else None
    dy = torch.randn(x.shape, device=device).t().contiguous().t() if layout == "transposed" else torch.randn_like(x)
    _check(_kernel(x, b, dy), _reference(x, b, dy), torch.float32)


def test_empty_input(device):
    x = torch.randn(0, 16, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    y = gelu(x, b)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert torch.equal(b.grad, torch.zeros(16, device=device))
    assert gelu(torch.randn(0, device=device)).shape == (0,)


def test_opcheck_forward_and_backward_ops(device):
    x, dy = torch.randn(3, 2, 33, device=device), torch.randn(3, 2, 33, device=device)
    b = torch.randn(33, device=device)
    ops = torch.ops.gpt2_kernels
    torch.library.opcheck(ops.gelu_fwd.default, (x.clone().requires_grad_(), None))
    torch.library.opcheck(ops.gelu_fwd.default, (x.clone().requires_grad_(), b.clone().requires_grad_()))
    torch.library.opcheck(ops.gelu_bwd.default, (dy, x))
    torch.library.opcheck(ops.gelu_bias_bwd.default, (dy, x, b))


def _mlp_step(x, b):  # the op inside other traced ops, with and without the bias
    return gelu(x * 2.0, b) + gelu(x)


def _gelu_only(x, b):
    return gelu(x, b)


# Inductor gets the op alone: on a CPU it would compile C++ for any surrounding pointwise
# ops, which takes about a minute on CI's two cores; what it adds over aot_eager (the op's
# fake and autograd under a real lowering) needs no glue.
@pytest.mark.parametrize("backend, fn", [("aot_eager", _mlp_step), ("inductor", _gelu_only)],
                         ids=["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, fn, device):
    torch._dynamo.reset()
    x, b = torch.randn(2, 3, 24, device=device), torch.randn(24, device=device)
    dy = torch.randn_like(x)
    results = []
    for f in (fn, torch.compile(fn, backend=backend, fullgraph=True)):
        xi, bi = x.clone().requires_grad_(), b.clone().requires_grad_()
        y = f(xi, bi)
        y.backward(dy)
        results.append((y.detach(), xi.grad, bi.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, **tol("gelu_bwd", torch.float32))


def test_bad_inputs_raise_clear_errors(device):
    x, b = torch.randn(2, 8, device=device), torch.randn(8, device=device)
    with pytest.raises(TypeError, match="x has dtype int64"):
        gelu(x.long())
    with pytest.raises(TypeError, match="bias has dtype int32"):
        gelu(x, b.int())
    with pytest.raises(TypeError, match="share one dtype"):
        gelu(x, b.bfloat16())
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        gelu([1.0, 2.0])
    with pytest.raises(TypeError, match="bias must be a torch.Tensor or None"):
        gelu(x, 1.0)
    with pytest.raises(ValueError, match="bias must be 1-D of size N=8"):
        gelu(x, b[:7])
    with pytest.raises(ValueError, match="bias must be 1-D of size N=8"):
        gelu(x, b.reshape(2, 4))
    wide = torch.empty(1, MAX_BIAS_N + 1, device="meta")  # the size check comes before any launch
    with pytest.raises(ValueError, match=f"must be <= {MAX_BIAS_N}"):
        gelu(wide, torch.empty(MAX_BIAS_N + 1, device="meta"))
    with pytest.raises(ValueError, match="0-d"):
        gelu(x[0, 0], b[:1])
    with pytest.raises(ValueError, match="one device"):
        gelu(x, b.to("meta"))


def test_gpt2_widths_launch_registered_configs():
    # What `python -m gpt2_kernels.sass` compiles must be what the launchers pick, for every kernel
    # at GPT-2's MLP widths, with a signature that names every kernel argument.
    configs = registry.configs("gelu")
    kernels = (_gelu_fwd_kernel, _gelu_bwd_kernel, _gelu_bias_fwd_kernel, _gelu_bias_bwd_kernel)
    for N in (3072, 4096, 5120, 6400):
        for kernel in kernels:
            launch = _launch_config(kernel, N)
            found = [c for c in configs if c.kernel is kernel and c.dtype == "bf16"
                     and (c.constexprs, c.num_warps, c.num_stages) == tuple(launch)]
            assert len(found) == 1, (kernel, N)
            assert list(found[0].signature()) + list(found[0].constexprs) == kernel.arg_names
    (bwd,) = [c for c in configs if c.kernel is _gelu_bias_bwd_kernel and c.dtype == "fp16"]
    assert bwd.signature()["DB_PARTIAL"] == "*fp32" and bwd.signature()["DX"] == "*fp16"


def test_cpu_without_interpreter_raises():
    out = value_errors_without_interpreter("x, b = torch.randn(2, 8), torch.randn(8)",
                                           "gpt2_kernels.gelu(x)", "gpt2_kernels.gelu(x, b)")
    assert out.count("ValueError: gelu: got CPU tensors") == 2 and "TRITON_INTERPRET=1" in out, out
