"""Cross-entropy of a linear layer's logits, without ever holding all the logits: the LM head's loss.

For rows x_i (d numbers), a weight W (V, d), an optional bias b (V,) and targets t_i:

    z_i    = W x_i + b                                  (the logits, V of them per row)
    m_i    = max_j z_ij
    lse_i  = log sum_j exp(z_ij) = m_i + log sum_j exp(z_ij - m_i)
    loss_i = lse_i - z_i[t_i] = (m_i - z_i[t_i]) + log sum_j exp(z_ij - m_i)
                                                        (0 where t_i == ignore_index)
    loss   = sum_i loss_i / n_valid   ("mean", n_valid = rows not ignored)
           | sum_i loss_i             ("sum")
           | (loss_i)_i               ("none")

Backward, with g_i the gradient reaching loss_i (grad_output, divided by n_valid for "mean"):

    dz_ij  = g_i * (softmax(z_i)_j - [j == t_i])        (0 for an ignored row)
    dx     = dz W,    dW = dzᵀ x,    db = sum over rows of dz

GPT-2 at 8,192 tokens has (8192, 50257) logits: 0.8 GB in bf16, 1.6 GB more once eager code
upcasts them to fp32 for the loss, and as much again for their gradient. Here the rows go
through in chunks of C: cuBLAS computes a chunk's logits, one Triton program per row reads
them once for the logsumexp (fp32, online) and a second time to overwrite them in place with
dz, and cuBLAS turns dz into the chunk's rows of dx and adds its share of dW (and db). The
gradients are made during the forward (three matmuls in all, as eager), so for "mean" and
"sum" the backward only scales them by grad_output. For "none" each row has its own g_i, so
the backward runs the chunks again with g_i folded into dz (a fourth matmul).

Chunk size and memory (s = bytes per element of x's dtype):

    C = min(N, max(16, next_pow2(d)))                   rows per chunk
    extra memory at the peak = C * Vp * s  +  4 * N  (+ 4 * V or, s < 4, 8 * V for db with a bias)
        Vp = V rounded up to a multiple of 16 (the chunk's rows start 32-byte aligned)
        (declared to python -m bench --memory by `_chunks_workspace`)

i.e. one chunk of logits, about the size of W itself (C ~ d), instead of N * V * (s + 4) and
the gradients' N * V * (s + 4) more. For gpt2 (d = 768, C = 1024, V = 50257) in bf16 that is
103 MB, whatever N is. The outputs dx (N, d) and dW (V, d) are the gradients any
implementation returns. C ~ d also keeps the matmuls large and bounds what chunking adds:
every chunk reads and rewrites dW once (V * d * s), which is about what it reads of its own
logits.

Precision: logits and dz are stored in x's dtype (as eager's matmul stores logits); the
logsumexp, the softmax and the per-row losses are fp32, the loss is returned in fp32. dW
accumulates in W's dtype through cuBLAS's beta = 1 (fp32 inside each matmul, one rounding
per chunk; fp32 weights are exact), db in fp32. The loss and dz come from the right-hand
forms above, differences of logits plus a log-sum in [0, log V], never from lse itself: an
fp32 lse of logits near 1e7 is rounded to a whole number, which lse - z[t] would keep in a
loss of a few nats, while m_i - z[t] is exact there (logits of 1e7 lose nothing more than
eager's fp32 does). The cost: a select per logit in the first pass (memory-bound either way).
A row whose logits are all the same (e.g. all masked to -1e30 or the dtype's lowest value)
has loss log V and a uniform softmax, as in torch.

All targets ignored: the loss is 0 for "mean" and "sum" and every gradient is 0 (torch's
cross_entropy returns NaN for a mean over no targets; here a batch of padding adds nothing
instead of poisoning the step). For "none" the ignored rows' losses are 0, as in torch.

Bytes moved by the Triton kernel per row: read the V logits twice, write dz once (3 * V * s),
against eager's upcast, softmax and its gradient (about 8 passes over N * V, some in fp32).

Limits: x (N, d) and W (V, d) share one float dtype (float32, float16, bfloat16); targets (N,)
integer, each in [0, V) or ignore_index (an int in int32's range); any strides (cuBLAS reads
x and W's, the kernel the targets': a strided or expanded view is read in place, not copied).
N = 0 gives an empty result ("none") or 0. First-order gradients only: a backward with
create_graph=True recomputes the chunks (as "none" does) so that a second-order gradient
raises, like every op here, instead of being 0; for that x, W and b are kept (not copied)
until the backward.
"""

import operator

import torch
import triton
import triton.language as tl

from gpt2_kernels import registry
from gpt2_kernels._common import (
    TRITON_TYPE, Launch, autocast_dtype, cast_floats, check_float_dtype, check_runnable, check_same_dtype, device_guard,
    has_data, workspace_of,
)

LOG2E = tl.constexpr(1.4426950408889634)
REDUCTIONS = ("mean", "sum", "none")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# d loss_i / d z_ij = softmax(z_i)_j - [j == t_i]; the kernel scales it by the row's g_i
# (ROW_SCALE[i] when HAS_ROW_SCALE, else 1) and by 0 for an ignored row.
@triton.jit
def _cross_entropy_kernel(
    LOGITS, TARGETS, LOSS, ROW_SCALE,
    stride_logits_row, stride_targets, n_cols, n_cols_padded, ignore_index,
    HAS_ROW_SCALE: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    LOGITS += row * stride_logits_row
    # The targets' stride, not 1: a strided or expanded (stride 0) view is read where it lives.
    target = tl.load(TARGETS + row * stride_targets).to(tl.int32)
    ignored = target == ignore_index
    cols = tl.arange(0, BLOCK_V)
    # Online logsumexp kept per lane and combined once after the loop, so the loop has no
    # cross-thread reduction (no barriers). The loads run to n_cols_padded, a multiple of 16,
    # so they stay vectorized; the padding's values are replaced by -inf in registers.
    # The running max starts at -inf, not at a finite stand-in, so that a row whose logits are
    # all below it (a masked row at -1e30) still has its own max and a sum of V ones.
    m = tl.full([BLOCK_V], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, n_cols_padded, BLOCK_V):
        offs = start + cols
        z = tl.load(LOGITS + offs, mask=offs < n_cols_padded, other=0.0).to(tl.float32)
        z = tl.where(offs < n_cols, z, -float("inf"))
        m_new = tl.maximum(m, z)
        # A lane that has seen only padding (m_new = -inf) shifts by 0, so that exp2(-inf - -inf)
        # never makes a NaN; its terms are 0 either way.
        m_use = tl.where(m_new == -float("inf"), 0.0, m_new)
        s = s * tl.exp2((m - m_use) * LOG2E) + tl.exp2((z - m_use) * LOG2E)
        m = m_new
    m_row = tl.max(m, axis=0)
    # log_s = lse - m_row, in [0, log V]. The loss and dz are built from it and from differences
    # of logits (z - m_row, m_row - z[t]), never from lse itself: in fp32 lse carries the
    # rounding of the logits' size (0.5 at 1e7), which subtracting z[t] would leave in a loss of
    # a few units.
    log_s = tl.log(tl.sum(s * tl.exp2((m - m_row) * LOG2E), axis=0))
    z_target = tl.load(LOGITS + tl.where(ignored, 0, target)).to(tl.float32)
    tl.store(LOSS + row, tl.where(ignored, 0.0, (m_row - z_target) + log_s))
    if WRITE_GRAD:
        g = 1.0
        if HAS_ROW_SCALE:
            g = tl.load(ROW_SCALE + row)
        g = tl.where(ignored, 0.0, g)
        for start in range(0, n_cols_padded, BLOCK_V):
            offs = start + cols
            mask = offs < n_cols_padded
            z = tl.load(LOGITS + offs, mask=mask, other=0.0).to(tl.float32)
            z = tl.where(offs < n_cols, z, -float("inf"))  # the padding's dz is 0, not garbage
            dz = (tl.exp2(((z - m_row) - log_s) * LOG2E) - (offs == target).to(tl.float32)) * g
            tl.store(LOGITS + offs, dz.to(LOGITS.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launch heuristics


def _launch_config(dtype):
    """How the kernel is launched for logits of `dtype`: the one place its block and warps are
    chosen, for the launcher and for `python -m gpt2_kernels.sass`. 8 warps of 256 threads stream
    a row in blocks of 2048 (16-bit: one 16-byte vector a thread per block; fp32: two), with
    two fp32 accumulators of 8 lanes a thread."""
    return Launch({"BLOCK_V": 2048}, num_warps=8, num_stages=1)


def _chunk_rows(N, d):
    """C, the rows per chunk: about d, so a chunk's logits are about W's size (see the docstring)."""
    return max(1, min(N, max(16, triton.next_power_of_2(d))))


def _padded(V):
    """Vp, a chunk row's length: V rounded up to 16, so every row starts 32-byte aligned."""
    return triton.cdiv(V, 16) * 16


@registry.configs_of("linear_cross_entropy")
def _configs():
    """The kernel as the forward (loss and gradient) and the "none" backward (per-row scale)
    launch it, in each dtype; the loss-only form (no gradient needed) in bf16."""
    types = {"TARGETS": "*i64", "LOSS": "*fp32", "ROW_SCALE": "*fp32"}
    # The logits' row stride and padded width are multiples of 16 by construction.
    hints = ("stride_logits_row", "n_cols_padded")
    cases = [(dtype, False, True) for dtype in (torch.bfloat16, torch.float16, torch.float32)]
    cases += [(torch.bfloat16, True, True), (torch.float32, True, True), (torch.bfloat16, False, False)]
    for dtype, row_scale, grad in cases:
        launch = _launch_config(dtype)
        constexprs = {"HAS_ROW_SCALE": row_scale, "WRITE_GRAD": grad, **launch.constexprs}
        what = "loss" if not grad else ("grad, row scale" if row_scale else "loss + grad")
        yield registry.CompileConfig(
            _cross_entropy_kernel, "linear_cross_entropy",
            f"{TRITON_TYPE[dtype]} {what} BLOCK_V={launch.constexprs['BLOCK_V']} warps={launch.num_warps}",
            TRITON_TYPE[dtype], constexprs, launch.num_warps, launch.num_stages, types=types,
            divisible_by_16=hints)


# ----------------------------------------------------------------------------- the chunked loop


def _chunks(x, weight, targets, bias, ignore_index, row_scale, write_grad):
    """Run the chunks: per-row losses (N,) fp32 and, with write_grad, the unscaled-by-mean
    gradients dx (N, d), dW (V, d) and db (V,) fp32 (or None without a bias). row_scale: None
    (g_i = 1) or (N,) fp32."""
    N, d = x.shape
    V = weight.shape[0]
    C = _chunk_rows(N, d)
    Vp = _padded(V)
    losses = torch.empty((N,), dtype=torch.float32, device=x.device)
    buffer = torch.empty((C, Vp), dtype=x.dtype, device=x.device)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if write_grad else None
    dw = torch.zeros_like(weight, memory_format=torch.contiguous_format) if write_grad else None
    db = torch.zeros((V,), dtype=torch.float32, device=x.device) if write_grad and bias is not None else None
    launch = _launch_config(x.dtype)
    wt = weight.t()
    for start in range(0, N, C):
        rows = slice(start, min(N, start + C))
        n = rows.stop - start
        logits = buffer[:n, :V]  # row stride Vp: cuBLAS writes it in place
        if bias is None:
            torch.mm(x[rows], wt, out=logits)
        else:
            torch.addmm(bias, x[rows], wt, out=logits)
        with device_guard(x):
            _cross_entropy_kernel[(n,)](
                logits, targets[rows], losses[rows], losses if row_scale is None else row_scale[rows],
                Vp, targets.stride(0), V, Vp, ignore_index,
                HAS_ROW_SCALE=row_scale is not None, WRITE_GRAD=write_grad,
                **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
        if write_grad:  # logits now hold dz
            torch.mm(logits, weight, out=dx[rows])
            dw.addmm_(logits.t(), x[rows])
            if db is not None:
                db += logits.sum(0, dtype=torch.float32)
    return losses, dx, dw, db


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("gpt2_kernels::linear_cross_entropy_fwd", mutates_args=())
def _lce_fwd(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None,
    ignore_index: int, reduction: str, with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, dx, dW, db) with the gradients of the *sum* of the row losses; with_grad=False (or
    reduction "none", whose backward makes its own) gives empty gradients, and db is empty
    without a bias."""
    grad = with_grad and reduction != "none"
    losses, dx, dw, db = _chunks(x, weight, targets, bias, ignore_index, None, grad)
    if reduction == "none":
        loss = losses
    elif reduction == "sum":
        loss = losses.sum()
    else:
        loss = losses.sum() / (targets != ignore_index).sum().clamp_min(1)
    if not grad:  # separate empty tensors: a custom op's outputs may not alias one another
        dx, dw = x.new_empty((0,)), x.new_empty((0,))
    db = db.to(x.dtype) if db is not None else x.new_empty((0,))
    return loss, dx, dw, db


@_lce_fwd.register_fake
def _(x, weight, targets, bias, ignore_index, reduction, with_grad):
    grad = with_grad and reduction != "none"
    loss = x.new_empty((x.shape[0],) if reduction == "none" else (), dtype=torch.float32)
    dx = x.new_empty(x.shape) if grad else x.new_empty((0,))
    dw = weight.new_empty(weight.shape) if grad else x.new_empty((0,))
    db = x.new_empty((weight.shape[0],)) if grad and bias is not None else x.new_empty((0,))
    return loss, dx, dw, db


@torch.library.custom_op("gpt2_kernels::linear_cross_entropy_bwd", mutates_args=())
def _lce_bwd(
    grad_losses: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
    bias: torch.Tensor | None, ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """reduction="none"'s backward: (dx, dW, db) for per-row gradients grad_losses (N,);
    db is empty without a bias."""
    _, dx, dw, db = _chunks(x, weight, targets, bias, ignore_index, grad_losses.float().contiguous(), True)
    return dx, dw, db.to(x.dtype) if db is not None else x.new_empty((0,))


@_lce_bwd.register_fake
def _(grad_losses, x, weight, targets, bias, ignore_index):
    db = x.new_empty((weight.shape[0],)) if bias is not None else x.new_empty((0,))
    return x.new_empty(x.shape), weight.new_empty(weight.shape), db


def _chunks_workspace(x, weight, bias, write_grad, losses_out):
    """The scratch of `_chunks` beside the op's outputs (the module docstring's "extra memory"):
    one chunk of logits, the per-row losses unless they are the output, and with a bias each
    chunk's fp32 column sum and db in fp32 before its cast to x's dtype."""
    N, d = x.shape
    V = weight.shape[0]
    scratch = _chunk_rows(N, d) * _padded(V) * x.element_size() + (0 if losses_out else 4 * N)
    if write_grad and bias is not None:
        scratch += 4 * V * (1 if x.dtype == torch.float32 else 2)
    return scratch


@workspace_of(_lce_fwd)
def _(x, weight, targets, bias, ignore_index, reduction, with_grad):
    return _chunks_workspace(x, weight, bias, with_grad and reduction != "none", losses_out=reduction == "none")


@workspace_of(_lce_bwd)
def _(grad_losses, x, weight, targets, bias, ignore_index):
    row_scale = 0 if grad_losses.dtype == torch.float32 and grad_losses.is_contiguous() else 4 * x.shape[0]
    return row_scale + _chunks_workspace(x, weight, bias, True, losses_out=False)


def _setup_context(ctx, inputs, output):
    x, weight, targets, bias, ignore_index, reduction, with_grad = inputs
    _, dx, dw, db = output
    ctx.reduction, ctx.ignore_index, ctx.has_bias = reduction, ignore_index, bias is not None
    ctx.mark_non_differentiable(dx, dw, db)
    # Without gradients from the forward ("none", or a forward run with with_grad=False) the
    # backward runs the chunks again with each row's gradient.
    ctx.recompute = reduction == "none" or not with_grad
    # x, weight and bias are saved in either case (references, not copies): see _backward.
    ctx.save_for_backward(x, weight, targets, bias, *(() if ctx.recompute else (dx, dw, db)))


def _backward(ctx, dloss, _ddx, _ddw, _ddb):
    x, weight, targets, bias, *made = ctx.saved_tensors
    g = dloss.float()  # 0-d ("mean", "sum") or (N,) ("none"): no sync, and torch.compile traces it
    if ctx.reduction == "mean":
        g = g / (targets != ctx.ignore_index).sum().clamp_min(1)
    # Under create_graph=True (grad mode on in a backward) the gradients go through _lce_bwd too:
    # the ones made in the forward are constants to autograd, so a second-order gradient through
    # them would be a silent 0, while _lce_bwd has no autograd formula and refuses it, as the
    # backward of every op of this package does.
    if ctx.recompute or torch.is_grad_enabled():
        dx, dw, db = _lce_bwd(g.expand(x.shape[0]), x, weight, targets, bias, ctx.ignore_index)
    else:
        # One pass over dx and dW.
        dx, dw, db = (t * g.to(t.dtype) for t in made)
    return dx, dw, None, db if ctx.has_bias else None, None, None, None


_lce_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API


def linear_cross_entropy(x, weight, targets, bias=None, ignore_index=-1, reduction="mean"):
    """Cross-entropy of the logits x @ weight.T (+ bias) against targets, as
    torch.nn.functional.cross_entropy(F.linear(x, weight, bias).float(), targets,
    ignore_index=ignore_index, reduction=reduction), without building the (N, V) logits.

    Args:
        x:        (N, d) float32, float16 or bfloat16, CUDA (or CPU under TRITON_INTERPRET=1).
        weight:   (V, d) same dtype and device (GPT-2's tied embedding).
        targets:  (N,) integer ids in [0, V), or ignore_index for rows that add no loss.
        bias:     None or (V,), same dtype and device as x.
        ignore_index: the target value of rows to skip (GPT-2's data pads with -1); an int
                  in int32's range.
        reduction: "mean" over the rows not ignored, "sum", or "none" (per-row losses).
    Returns:
        float32: a 0-d loss ("mean", "sum") or (N,) losses ("none"). A mean over no valid
        target is 0 with zero gradients (torch gives NaN). Differentiable in x, weight, bias,
        once: a second-order gradient raises RuntimeError.
    Memory: one chunk of C = min(N, max(16, next_pow2(d))) rows of logits at a time; extra
    memory C * Vp * s + 4 * N bytes (module docstring).
    Raises:
        TypeError for an unsupported or mismatched dtype, ValueError for bad shapes, a
        reduction not in "mean", "sum", "none", targets out of range, tensors on different
        devices, or CPU tensors without the interpreter; TypeError for an ignore_index that is
        not an int, ValueError for one outside int32.
    Under torch.autocast, x, weight and bias are cast to autocast's dtype, as autocast does for
    the eager linear layer whose logits this replaces; the loss is float32 either way.
    """
    op = "linear_cross_entropy"
    dtype = autocast_dtype(x)
    if dtype is not None:
        x, weight, bias = cast_floats(dtype, x, weight, bias)
    for name, t in (("x", x), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    check_float_dtype(op, "x", x)
    check_float_dtype(op, "weight", weight)
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{op}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        check_float_dtype(op, "bias", bias)
    check_same_dtype(op, x=x, weight=weight, bias=bias)
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"{op}: targets must hold integer class ids (torch.long), got dtype {targets.dtype}")
    # The kernel compares each target, read as int32, with ignore_index: a float would be
    # truncated there (1.5 drops the rows of class 1) and compared as it is in the mean's count.
    try:
        if isinstance(ignore_index, bool):  # an int to Python, but never a class id
            raise TypeError
        ignore_index = operator.index(ignore_index)
    except (TypeError, RuntimeError):  # RuntimeError: a tensor that is not one integer
        raise TypeError(f"{op}: ignore_index must be an int (the target value of rows to skip), "
                        f"got {ignore_index!r}") from None
    if not INT32_MIN <= ignore_index <= INT32_MAX:
        raise ValueError(f"{op}: ignore_index must be in [{INT32_MIN}, {INT32_MAX}] (int32), got {ignore_index}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1] or weight.shape[0] == 0:
        raise ValueError(f"{op}: x must be (N, d) and weight (V, d) with V >= 1, got x {tuple(x.shape)} "
                         f"and weight {tuple(weight.shape)}")
    N, V = x.shape[0], weight.shape[0]
    if targets.shape != (N,):
        raise ValueError(f"{op}: targets must be (N,) = ({N},), one per row of x, got shape {tuple(targets.shape)}")
    if bias is not None and bias.shape != (V,):
        raise ValueError(f"{op}: bias must be (V,) = ({V},), got shape {tuple(bias.shape)}")
    check_runnable(op, *(t for t in (x, weight, targets, bias) if t is not None))
    # A data-dependent check (a sync); torch.compile cannot trace it, so it is skipped while
    # compiling, and fake or meta targets have no values to check.
    if N and not torch.compiler.is_compiling() and has_data(targets):
        _check_target_range(op, targets, V, ignore_index)
    with_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _lce_fwd(x, weight, targets.long(), bias, ignore_index, reduction, with_grad)[0]


def _check_target_range(op, targets, V, ignore_index):
    # A function of its own, so that the copy of the valid targets (8 bytes a row) is freed
    # before the loss runs, not held through it.
    valid = targets[targets != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= V):
        raise ValueError(f"{op}: targets must be in [0, {V}) or ignore_index={ignore_index}, got values "
                         f"in [{int(valid.min())}, {int(valid.max())}]")


# ----------------------------------------------------------------------------- reference


def linear_cross_entropy_reference(x, weight, targets, bias=None, ignore_index=-1, reduction="mean"):
    """Eager PyTorch: the full logits, upcast to float32 (float64 stays), then cross_entropy.
    Differentiable by autograd."""
    logits = torch.nn.functional.linear(x, weight, bias)
    if logits.dtype != torch.float64:
        logits = logits.float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
