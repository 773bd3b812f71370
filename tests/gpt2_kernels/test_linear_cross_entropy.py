"""gpt2_kernels.linear_cross_entropy against a float64 eager reference: forward and backward in every
dtype and reduction, ignored targets (a whole chunk, a whole batch), one row, a vocabulary that
fits no block, bias and no bias; the largest tensor it allocates; opcheck, torch.compile, and
input errors.

Without CUDA the kernel runs in Triton's interpreter (one program per row, ~10-50 ms each), so
the shapes keep few rows; d = 8 makes a chunk 16 rows (`_chunk_rows`), so 37 rows are three
chunks, the last one partial.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gpt2_kernels import registry
from gpt2_kernels.linear_cross_entropy import (
    _chunk_rows, _cross_entropy_kernel, _launch_config, linear_cross_entropy, linear_cross_entropy_reference,
)
from tests.conftest import value_errors_without_interpreter
from tests.tolerances import tol

ON_GPU = torch.cuda.is_available()
N, D, V = 37, 8, 301  # V = 301: a multiple of no block (and not of 16, so the logits rows are padded)
CHUNK = _chunk_rows(N, D)


def _inputs(dtype, device, n=N, v=V, bias=False, ignored=()):
    x = torch.randn(n, D, device=device).to(dtype)
    w = (torch.randn(v, D, device=device) * 0.5).to(dtype)
    b = torch.randn(v, device=device).to(dtype) if bias else None
    t = torch.randint(0, v, (n,), device=device)
    t[list(ignored)] = -1
    return x, w, t, b


def _run(fn, x, w, t, b, reduction, grad_out, dtype=None):
    """loss and grads of fn on copies of the inputs (in `dtype` if given)."""
    leaves = [v.detach().to(dtype or v.dtype).requires_grad_() if v is not None else None for v in (x, w, b)]
    loss = fn(leaves[0], leaves[1], t, leaves[2], reduction=reduction)
    (loss * grad_out.to(loss.dtype)).sum().backward()
    return [loss.detach()] + [v.grad for v in leaves if v is not None]


def _assert_matches_float64(got, eager, ref, dtype, names):
    atol, rtol = tol("linear_cross_entropy", dtype).values()
    for name, g, e, r in zip(names, got, eager, ref):
        assert g.shape == r.shape, name
        if dtype == torch.float32:
            torch.testing.assert_close(g.double(), r, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
        else:  # within 2x eager's own error in this dtype
            err, eager_err = (g.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
            assert err <= 2 * eager_err + atol + rtol * r.abs().max().item(), (name, err, eager_err)


CASES = [(dtype, reduction, bias) for dtype in (torch.float32, torch.float16, torch.bfloat16)
         for reduction, bias in (("mean", False), ("sum", True), ("none", True))]
CASES += [(torch.float32, "mean", True), (torch.float32, "none", False)]


@pytest.mark.parametrize("dtype, reduction, bias", CASES, ids=str)
def test_forward_backward_match_float64(dtype, reduction, bias, device):
    # Rows 16..31 are the second chunk, every target in it ignored; a few more elsewhere.
    x, w, t, b = _inputs(dtype, device, bias=bias, ignored=[*range(CHUNK, 2 * CHUNK), 3, N - 1])
    grad_out = torch.randn(N if reduction == "none" else (), device=device)
    got = _run(linear_cross_entropy, x, w, t, b, reduction, grad_out)
    eager = _run(linear_cross_entropy_reference, x, w, t, b, reduction, grad_out)
    ref = _run(linear_cross_entropy_reference, x, w, t, b, reduction, grad_out, torch.float64)
    assert got[0].dtype == torch.float32 and all(g.dtype == dtype for g in got[1:])
    _assert_matches_float64(got, eager, ref, dtype, ["loss", "dx", "dweight", "dbias"])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_one_row_and_a_vocabulary_wider_than_a_block(reduction, device):
    v = _launch_config(torch.float32).constexprs["BLOCK_V"] + 37  # two blocks, the second nearly empty
    x, w, t, b = _inputs(torch.float32, device, n=1, v=v, bias=True)
    grad_out = torch.randn(1 if reduction == "none" else (), device=device)
    got = _run(linear_cross_entropy, x, w, t, b, reduction, grad_out)
    ref = _run(linear_cross_entropy_reference, x, w, t, b, reduction, grad_out, torch.float64)
    _assert_matches_float64(got, got, ref, torch.float32, ["loss", "dx", "dweight", "dbias"])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_whole_batch_ignored_gives_zero_loss_and_zero_grads(reduction, device):
    x, w, t, b = _inputs(torch.float32, device, n=20, bias=True, ignored=range(20))
    loss, dx, dw, db = _run(linear_cross_entropy, x, w, t, b, reduction, torch.ones((), device=device))
    assert torch.equal(loss, torch.zeros_like(loss)) and loss.shape == ((20,) if reduction == "none" else ())
    for g in (dx, dw, db):
        assert torch.equal(g, torch.zeros_like(g))
    if reduction == "mean":  # the documented difference: torch's mean over no targets is NaN
        assert linear_cross_entropy_reference(x, w, t, b).isnan()


class _LargestTensor(TorchDispatchMode):
    """Records the bytes of every tensor any op returns, inside our custom ops too: their CPU
    kernel is re-run with this mode active, so the chunk buffers they allocate are seen."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "gpt2_kernels":
            with self:
                key = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA if ON_GPU else torch._C.DispatchKey.CPU)
                out = func.redispatch(key, *args, **(kwargs or {}))
        else:
            out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_largest_tensor_stays_far_below_the_logits(device):
    # 64 rows x 2000 classes, 16-row chunks: the full fp32 logits would be 512 KB.
    n, v = 64, 2000
    x, w, t, _ = _inputs(torch.float32, device, n=n, v=v)
    x.requires_grad_(), w.requires_grad_()
    mode = _LargestTensor()
    with mode:
        linear_cross_entropy(x, w, t).backward()
    logits_bytes = n * v * 4
    assert mode.largest > 0 and x.grad is not None and w.grad is not None
    # One chunk of logits (16 x 2000) or dW (2000 x 8), not the (64, 2000) logits.
    assert mode.largest <= logits_bytes // 4, (mode.largest, logits_bytes)
    # The same mode sees eager's full logits, so the bound above can fail.
    eager = _LargestTensor()
    with eager:
        linear_cross_entropy_reference(x, w, t).backward()
    assert eager.largest >= logits_bytes


@pytest.mark.parametrize("reduction, with_grad, bias", [("mean", True, True), ("sum", False, False),
                                                        ("none", True, False)])
def test_opcheck_forward_and_backward_ops(reduction, with_grad, bias, device):
    x, w, t, b = _inputs(torch.float32, device, n=5, v=19, bias=bias, ignored=[1])
    args = (x.requires_grad_(), w.requires_grad_(), t, b.requires_grad_() if bias else None, -1, reduction, with_grad)
    torch.library.opcheck(torch.ops.gpt2_kernels.linear_cross_entropy_fwd.default, args)
    torch.library.opcheck(torch.ops.gpt2_kernels.linear_cross_entropy_bwd.default,
                          (torch.randn(5, device=device), x.detach(), w.detach(), t,
                           b.detach() if bias else None, -1))


def _head_and_loss(x, w, t):  # the op after a traced op, as in a model
    return linear_cross_entropy(F.gelu(x), w, t)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    x, w, t, _ = _inputs(torch.float32, device, n=6, v=23, ignored=[2])
    fn = _head_and_loss if backend == "aot_eager" else linear_cross_entropy
    results = []
    for f in (fn, torch.compile(fn, backend=backend, fullgraph=True)):
        xi, wi = (v.detach().clone().requires_grad_() for v in (x, w))
        loss = f(xi, wi, t)
        loss.backward()
        results.append((loss.detach(), xi.grad, wi.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, **tol("linear_cross_entropy", torch.float32))


def test_bad_inputs_raise_clear_errors(device):
    x, w, t, b = _inputs(torch.float32, device, n=4, v=9, bias=True)
    with pytest.raises(TypeError, match="x has dtype int64"):
        linear_cross_entropy(x.long(), w, t)
    with pytest.raises(TypeError, match="share one dtype"):
        linear_cross_entropy(x, w.half(), t)
    with pytest.raises(TypeError, match="targets must hold integer"):
        linear_cross_entropy(x, w, t.float())
    with pytest.raises(ValueError, match="reduction must be one of"):
        linear_cross_entropy(x, w, t, reduction="avg")
    with pytest.raises(ValueError, match=r"x must be \(N, d\) and weight \(V, d\)"):
        linear_cross_entropy(x, w[:, :3], t)
    with pytest.raises(ValueError, match=r"targets must be \(N,\)"):
        linear_cross_entropy(x, w, t[:3])
    with pytest.raises(ValueError, match=r"bias must be \(V,\)"):
        linear_cross_entropy(x, w, t, b[:4])
    with pytest.raises(ValueError, match=r"targets must be in \[0, 9\) or ignore_index=-1"):
        linear_cross_entropy(x, w, torch.tensor([0, 9, 1, -1], device=device))
    with pytest.raises(ValueError, match="one device"):
        linear_cross_entropy(x, w.to("meta"), t)


def test_launch_config_is_registered():
    # What `python -m gpt2_kernels.sass` compiles is what the launcher picks, with a signature that
    # names every kernel argument: targets int64, losses and row scales fp32, logits the dtype.
    configs = registry.configs("linear_cross_entropy")
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        launch = _launch_config(dtype)
        (cfg,) = [c for c in configs if c.dtype == name and c.constexprs["WRITE_GRAD"]
                  and not c.constexprs["HAS_ROW_SCALE"]]
        assert {k: cfg.constexprs[k] for k in launch.constexprs} == launch.constexprs
        assert cfg.num_warps == launch.num_warps
        sig = cfg.signature()
        assert list(sig) + list(cfg.constexprs) == _cross_entropy_kernel.arg_names
        assert sig["LOGITS"] == f"*{name}" and sig["TARGETS"] == "*i64" and sig["LOSS"] == "*fp32"


def test_cpu_without_interpreter_raises():
    out = value_errors_without_interpreter(
        "", "gpt2_kernels.linear_cross_entropy(torch.randn(2, 8), torch.randn(5, 8), torch.tensor([1, 2]))")
    assert "ValueError: linear_cross_entropy: got CPU tensors" in out, out


# ---- issue 22: targets as views, large logits, ignore_index, second order -----------------


def _target_view(view, n, v, device):
    """(N,) targets as a view: every other element, one element broadcast (stride 0, inside a
    longer storage so that a kernel reading it as contiguous stays in bounds and is wrong), or
    a column of a matrix."""
    if view == "every_other":
        return torch.randint(0, v, (2 * n,), device=device)[::2]
    if view == "expanded":
        return torch.randint(0, v, (2 * n,), device=device)[5:6].expand(n)
    return torch.randint(0, v, (n, 3), device=device)[:, 1]


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("view", ["every_other", "expanded", "column"])
def test_targets_as_strided_views_match_float64(view, reduction, device):
    x, w, _, b = _inputs(torch.float32, device, n=20, bias=True)
    t = _target_view(view, 20, V, device)
    assert not t.is_contiguous()
    grad_out = torch.randn(20 if reduction == "none" else (), device=device)
    got = _run(linear_cross_entropy, x, w, t, b, reduction, grad_out)
    ref = _run(linear_cross_entropy_reference, x, w, t, b, reduction, grad_out, torch.float64)
    _assert_matches_float64(got, got, ref, torch.float32, ["loss", "dx", "dweight", "dbias"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value", [-1e30, -1e36, "min"])
def test_rows_of_huge_negative_logits_give_log_v(value, dtype, device):
    # Every logit of a row at or below -1e30 (a masked row): the softmax is uniform, the loss
    # log V, as torch computes it (not 0 or -inf from a running max that starts at -1e30).
    n, v = 5, 37
    value = torch.finfo(dtype).min if value == "min" else value
    x = torch.randn(n, D, device=device).to(dtype)
    w = torch.zeros(v, D, device=device, dtype=dtype)
    b = torch.full((v,), value, device=device, dtype=dtype)
    t = torch.randint(0, v, (n,), device=device)
    grad_out = torch.randn(n, device=device)
    got = _run(linear_cross_entropy, x, w, t, b, "none", grad_out)
    ref = _run(linear_cross_entropy_reference, x, w, t, b, "none", grad_out, torch.float64)
    torch.testing.assert_close(got[0].double(), torch.full((n,), math.log(v), dtype=torch.float64),
                               **tol("linear_cross_entropy", torch.float32))
    _assert_matches_float64(got, got, ref, dtype, ["loss", "dx", "dweight", "dbias"])


@pytest.mark.parametrize("ignore_index, error, match", [
    (1.5, TypeError, "ignore_index must be an int"),
    (float("nan"), TypeError, "ignore_index must be an int"),
    ("-1", TypeError, "ignore_index must be an int"),
    (None, TypeError, "ignore_index must be an int"),
    (True, TypeError, "ignore_index must be an int"),
    (2**31, ValueError, r"ignore_index must be in \[-2147483648, 2147483647\]"),
    (-(2**31) - 1, ValueError, r"ignore_index must be in \[-2147483648, 2147483647\]"),
])
def test_ignore_index_that_is_not_an_int32_is_refused(ignore_index, error, match, device):
    x, w, t, _ = _inputs(torch.float32, device, n=4, v=9)
    with pytest.raises(error, match=match):
        linear_cross_entropy(x, w, t, ignore_index=ignore_index)


@pytest.mark.parametrize("ignore_index", [2**31 - 1, -(2**31), np.int64(3)], ids=str)
def test_ignore_index_at_the_int32_limits_and_numpy_ints_work(ignore_index, device):
    x, w, t, _ = _inputs(torch.float32, device, n=8, v=9)
    t[::3] = int(ignore_index)
    got = _run(lambda *a, **k: linear_cross_entropy(*a, **k, ignore_index=ignore_index), x, w, t, None, "mean",
               torch.ones((), device=device))
    ref = _run(lambda *a, **k: linear_cross_entropy_reference(*a, **k, ignore_index=int(ignore_index)), x, w, t,
               None, "mean", torch.ones((), device=device), torch.float64)
    _assert_matches_float64(got, got, ref, torch.float32, ["loss", "dx", "dweight"])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_second_order_gradients_raise(reduction, device):
    # Another term keeps the first-order gradients in the graph, so a missing second-order
    # term of the loss would be a silent 0 and not an error; first order stays exact.
    x, w, t, _ = _inputs(torch.float32, device, n=6, v=11)
    x, w = x.requires_grad_(), w.requires_grad_()
    loss = linear_cross_entropy(x, w, t, reduction=reduction).sum() + x.pow(2).sum() + w.pow(2).sum()
    gx, gw = torch.autograd.grad(loss, (x, w), create_graph=True)
    ref_x, ref_w = torch.autograd.grad(linear_cross_entropy_reference(x, w, t, reduction=reduction).sum()
                                       + x.pow(2).sum() + w.pow(2).sum(), (x, w))
    torch.testing.assert_close(gx, ref_x, **tol("linear_cross_entropy", torch.float32))
    torch.testing.assert_close(gw, ref_w, **tol("linear_cross_entropy", torch.float32))
    with pytest.raises(RuntimeError, match="linear_cross_entropy_bwd.*no autograd formula"):
        torch.autograd.grad((gx.sum() + gw.sum()), (x, w))
