"""GPT-2's GELU (the tanh approximation) of x + bias: Triton kernels, a registered PyTorch op,
its autograd.

Math, elementwise, with u = x + bias (bias broadcast over the last dim; u = x without bias):

    gelu(u) = 0.5 * u * (1 + tanh(c * (u + a * u^3))),   c = sqrt(2 / pi), a = 0.044715

Since 0.5 * (1 + tanh(z)) = sigmoid(2z), the kernels evaluate gelu(u) = u * sigmoid(2z) with
z = c * (u + a * u^3): one exp, no cancellation near u = 0, and no libdevice tanh (which the
Triton interpreter lacks). All arithmetic is fp32; y and dx are stored in x's dtype.

Kernels:
  without bias  a flat elementwise kernel over x.numel() elements, forward and backward.
  with bias     (BLOCK_M, BLOCK_N) tiles of the (M, N) rows, so the bias is loaded once a tile.
                The backward also returns dbias = sum over rows of dx, in two steps with
                no atomics: a fixed grid of (G row groups) x (column blocks) programs, each
                looping over its row tiles and writing its column sums once into an fp32
                (G, N) buffer; then torch's sum over G, which adds in a fixed order, so
                dbias is bitwise identical run to run on the same GPU.
  The forward saves only its inputs; the backward recomputes u and the tanh term, which is
  cheaper than writing and re-reading them.

Bytes moved (global memory; n = x.numel() = M*N elements of s bytes, G row groups):
  forward           no bias: read x, write y                  = 2*n*s
                    bias:    + read bias                        = 2*n*s + N*s
  backward          no bias: read dy, x, write dx              = 3*n*s
                    bias:    + read bias, write and re-read the
                             partial sums, write dbias          = 3*n*s + 2*N*s + 8*G*N
                             (and for 16-bit dtypes 8*N more through an fp32 sum then cast)

Limits: any shape; float32, float16, bfloat16; bias 1-D of size N = x.shape[-1], same dtype,
N <= 65535 * 256. A bias view that is not contiguous (a strided slice, an expanded scalar) is
copied, N elements. Under torch.autocast the bias is cast to x's dtype (see `gelu`).
Non-contiguous inputs: without bias, x (and dy) are made contiguous, since the flat kernel
needs one stride; with bias, rows may have any stride (a 2-D view such as x[:, :N] is read in
place), and what cannot be viewed as (M, N) with a contiguous last dim is copied. Outputs
are always contiguous.
"""

import math

import torch
import triton
import triton.language as tl

from gpt2_kernels import registry
from gpt2_kernels._common import (
    TRITON_TYPE, Launch, as_rows, autocast_dtype, cast_floats, check_float_dtype, check_runnable, check_same_dtype,
    contiguous_copy_bytes, rows_copy_bytes, workspace_of,
    device_guard, num_sms,
)

MAX_BIAS_N = 65535 * 256  # column blocks of 256 along the grid's second axis, at most 65535

# c and a of the formula above, for the reference and, as constexprs, for the kernels. Under
# Triton 3.9's interpreter `constexpr * tensor` gives back a constexpr, so the kernels keep a
# tensor on the left of every product with one (`u * _A_K`, not `_A_K * u`).
_C = math.sqrt(2.0 / math.pi)
_A = 0.044715
_TWO_C = tl.constexpr(2.0 * _C)
_A_K = tl.constexpr(_A)
_THREE_A = tl.constexpr(3.0 * _A)


@triton.jit
def _sigmoid(v):
    # Written out because tl.sigmoid fails under Triton 3.9's interpreter; exp of -|v| never
    # overflows, so large |v| gives exactly 0 or 1 with no inf on the way.
    e = tl.exp(-tl.abs(v))
    return tl.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _gelu_gate(u):
    # sigmoid(2z), z = c * (u + a * u^3)
    return _sigmoid((u + u * _A_K * u * u) * _TWO_C)


@triton.jit
def _gelu(u):
    return u * _gelu_gate(u)


# With z = c * (u + a*u^3) and s = sigmoid(2z) = (1 + tanh z) / 2, gelu(u) = u * s, so
#   gelu'(u) = s + u * ds/du = s + u * 2 s (1 - s) * dz/du = s + 2 u s (1 - s) c (1 + 3 a u^2)
# (using d sigmoid(v)/dv = sigmoid(v) (1 - sigmoid(v)) and d(2z)/du = 2c (1 + 3 a u^2)).
# Then dx = dy * gelu'(u), and dbias = sum over rows of dx.
@triton.jit
def _gelu_grad(u):
    s = _gelu_gate(u)
    return s + u * _TWO_C * s * (1.0 - s) * (1.0 + u * u * _THREE_A)


@triton.jit
def _gelu_fwd_kernel(X, Y, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    # Interpreted bf16 arrives as raw 16-bit integers, so every load is cast to fp32 at once.
    x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offsets, _gelu(x).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bias_fwd_kernel(
    X, BIAS, Y,
    stride_x_row, stride_y_row, n_rows, n_cols,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    b = tl.load(BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = _gelu(x + b[None, :])
    tl.store(Y + rows[:, None] * stride_y_row + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


# dx = dy * gelu'(x), the derivative written above _gelu_grad.
@triton.jit
def _gelu_bwd_kernel(DY, X, DX, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < numel
    x = tl.load(X + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + offsets, (dy * _gelu_grad(x)).to(DX.dtype.element_ty), mask=mask)


# dx = dy * gelu'(x + bias) (derivative above _gelu_grad); dbias = sum over rows of dx, of
# which program (g, j) writes the part from its own rows, columns block j, into row g.
@triton.jit
def _gelu_bias_bwd_kernel(
    DY, X, BIAS, DX, DB_PARTIAL,
    stride_dy_row, stride_x_row, stride_dx_row, n_rows, n_cols, tiles_per_program,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    b = tl.load(BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    first_tile = pid_m.to(tl.int64) * tiles_per_program
    for t in range(0, tiles_per_program):
        rows = (first_tile + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # Masked entries have dy = 0, so they add nothing to dbias.
        dx = dy * _gelu_grad(x + b[None, :])
        tl.store(DX + rows[:, None] * stride_dx_row + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        db_acc += tl.sum(dx, axis=0)
    tl.store(DB_PARTIAL + pid_m * n_cols + cols, db_acc, mask=col_mask)


# ----------------------------------------------------------------------------- launch heuristics

# The bias backward uses at most 128 registers a thread, so this many of its warps fit in an
# SM's 64K registers: that sets how many of its programs share an SM.
_BWD_WARPS_PER_SM = 16


def _launch_config(kernel, N=1):
    """How `kernel` (any of the four above) is launched, for x.shape[-1] = N (only the bias
    kernels depend on it; the flat ones, for any shape, take the default): the one place
    block sizes and warps are chosen, for the launchers and for `python -m gpt2_kernels.sass`.

    Each thread handles 8 elements (one 16-byte vector of bf16/fp16) in the flat kernels
    and 16 in a bias tile (two vectors, so a tile holds several rows of 256 columns); the
    tile is as wide as N up to 256 columns and has 2048 elements, so narrow rows get more
    rows.
    """
    if kernel in (_gelu_fwd_kernel, _gelu_bwd_kernel):
        return Launch({"BLOCK": 1024}, num_warps=4, num_stages=1)
    BLOCK_N = min(256, triton.next_power_of_2(N))
    return Launch({"BLOCK_M": 2048 // BLOCK_N, "BLOCK_N": BLOCK_N}, num_warps=4, num_stages=1)


def _bias_bwd_grid(M, N, launch, device):
    """(G row groups, column blocks, tiles per program) for the bias backward: about
    _BWD_WARPS_PER_SM warps per SM in all, each program owning a contiguous run of row tiles
    of one column block, and no row group left without work."""
    tiles, col_blocks = triton.cdiv(M, launch.constexprs["BLOCK_M"]), triton.cdiv(N, launch.constexprs["BLOCK_N"])
    programs_per_sm = max(1, _BWD_WARPS_PER_SM // launch.num_warps)
    groups = max(1, min(tiles, num_sms(device) * programs_per_sm // col_blocks))
    tiles_per_program = triton.cdiv(tiles, groups)
    return triton.cdiv(tiles, tiles_per_program), col_blocks, tiles_per_program


@registry.configs_of("gelu")
def _configs():
    """Every config the launchers pick for GPT-2's MLP widths (4 * 768 .. 4 * 1600) and for
    N = 768..1600, 4096, 8192: all in bf16, fp16 and fp32 at N = 6400."""
    # These widths (and so the strides and element counts of their launches) are multiples of
    # 16, which Triton specializes at launch: the hints make the compiled code the code that runs.
    widths = (768, 1024, 1280, 1600, 3072, 4096, 5120, 6400, 8192)
    cases = [(torch.bfloat16, n) for n in widths] + [(torch.float16, 6400), (torch.float32, 6400)]
    for dtype, N in cases:
        for kernel in (_gelu_fwd_kernel, _gelu_bwd_kernel, _gelu_bias_fwd_kernel, _gelu_bias_bwd_kernel):
            launch = _launch_config(kernel, N)
            blocks = " ".join(f"{k}={v}" for k, v in launch.constexprs.items())
            multiples = tuple(a for a in kernel.arg_names if a.startswith("stride_") or a in ("n_cols", "numel"))
            yield registry.CompileConfig(
                kernel, "gelu", f"{TRITON_TYPE[dtype]} {blocks} warps={launch.num_warps}", TRITON_TYPE[dtype],
                launch.constexprs, launch.num_warps, launch.num_stages,
                types={"DB_PARTIAL": "*fp32"} if kernel is _gelu_bias_bwd_kernel else {}, divisible_by_16=multiples)


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("gpt2_kernels::gelu_fwd", mutates_args=())
def _gelu_fwd(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    if bias is None:  # any shape, 0-d included: the flat kernel does not depend on N
        x = x.contiguous()
        launch = _launch_config(_gelu_fwd_kernel)
        with device_guard(x):
            _gelu_fwd_kernel[(triton.cdiv(x.numel(), launch.constexprs["BLOCK"]),)](
                x, y, x.numel(), **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
        return y
    N = x.shape[-1]
    x2 = as_rows(x, N)
    M = x2.shape[0]
    bias = bias.contiguous()  # the kernels read it at unit stride; a strided view costs N elements
    launch = _launch_config(_gelu_bias_fwd_kernel, N)
    grid = (triton.cdiv(M, launch.constexprs["BLOCK_M"]), triton.cdiv(N, launch.constexprs["BLOCK_N"]))
    with device_guard(x):
        _gelu_bias_fwd_kernel[grid](
            x2, bias, y, x2.stride(0), N, M, N,
            **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    return y


@_gelu_fwd.register_fake
def _(x, bias):
    return x.new_empty(x.shape)


@torch.library.custom_op("gpt2_kernels::gelu_bwd", mutates_args=())
def _gelu_bwd(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return dx
    dy, x = dy.contiguous(), x.contiguous()
    launch = _launch_config(_gelu_bwd_kernel)
    with device_guard(x):
        _gelu_bwd_kernel[(triton.cdiv(x.numel(), launch.constexprs["BLOCK"]),)](
            dy, x, dx, x.numel(), **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    return dx


@_gelu_bwd.register_fake
def _(dy, x):
    return x.new_empty(x.shape)


@torch.library.custom_op("gpt2_kernels::gelu_bias_bwd", mutates_args=())
def _gelu_bias_bwd(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    N = x.shape[-1]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:  # no rows, or rows of N = 0 (which cannot be viewed as (-1, 0))
        return dx, bias.new_zeros((N,))
    x2, dy2 = as_rows(x, N), as_rows(dy, N)
    M = x2.shape[0]
    bias = bias.contiguous()  # as in the forward
    launch = _launch_config(_gelu_bias_bwd_kernel, N)
    G, col_blocks, tiles_per_program = _bias_bwd_grid(M, N, launch, x.device)
    db_partial = torch.empty((G, N), dtype=torch.float32, device=x.device)
    with device_guard(x):
        _gelu_bias_bwd_kernel[(G, col_blocks)](
            dy2, x2, bias, dx, db_partial, dy2.stride(0), x2.stride(0), N, M, N, tiles_per_program,
            **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    # torch's sum uses no atomics: for a given shape on a given GPU it adds the G rows in one
    # fixed order, so dbias is the same bits run to run (as a Triton reduce would be).
    return dx, db_partial.sum(0).to(bias.dtype)


@_gelu_bias_bwd.register_fake
def _(dy, x, bias):
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


@workspace_of(_gelu_fwd)
def _(x, bias):
    if x.numel() == 0:
        return 0
    if bias is None:
        return contiguous_copy_bytes(x)
    return rows_copy_bytes(x, x.shape[-1]) + contiguous_copy_bytes(bias)


@workspace_of(_gelu_bwd)
def _(dy, x):
    return 0 if x.numel() == 0 else contiguous_copy_bytes(dy) + contiguous_copy_bytes(x)


@workspace_of(_gelu_bias_bwd)
def _(dy, x, bias):
    """Copies as in the forward, the (G, N) fp32 partial sums of dbias (G as the interpreter's
    grid and a fake run's has it), and their fp32 sum before its cast to a bias that is not fp32."""
    N = x.shape[-1]
    if x.numel() == 0:
        return 0
    M = x.numel() // N
    G, _, _ = _bias_bwd_grid(M, N, _launch_config(_gelu_bias_bwd_kernel, N), x.device)
    copies = rows_copy_bytes(x, N) + rows_copy_bytes(dy, N) + contiguous_copy_bytes(bias)
    return copies + G * N * 4 + (0 if bias.dtype == torch.float32 else 4 * N)


def _setup_context(ctx, inputs, output):
    x, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, bias)


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    if not ctx.has_bias:
        return _gelu_bwd(dy, x), None
    return _gelu_bias_bwd(dy, x, bias)


_gelu_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API


def gelu(x, bias=None):
    """GPT-2's tanh-approximate GELU of x + bias, as
    torch.nn.functional.gelu(x + bias, approximate="tanh"), in one pass, with Triton kernels
    forward and backward.

    Args:
        x:    (...) float32, float16 or bfloat16, CUDA (or CPU under TRITON_INTERPRET=1).
        bias: None, or (N,) with N = x.shape[-1], same dtype and device as x; added to every
              row before the activation (the fused bias of the MLP's first Linear).
    Returns:
        y: same shape as x, contiguous, dtype of x; computed in float32.

    bias may be any view (a strided slice, a scalar expanded to N): the kernels read it at unit
    stride, so such a view is copied first (N elements).
    Under torch.autocast the bias is cast to x's dtype, as autocast casts the bias of the Linear
    this GELU finishes (the MLP hands x from a Linear that autocast already ran in its dtype), so
    y has x's dtype, as the eager `F.gelu(F.linear(h, W, b))` has.
    Raises:
        TypeError for an unsupported or mismatched dtype, ValueError for a bias of the wrong
        shape, tensors on different devices, or CPU tensors without the interpreter.
    """
    op = "gelu"
    if autocast_dtype(x) is not None:
        (bias,) = cast_floats(x.dtype, bias)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    check_float_dtype(op, "x", x)
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"{op}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
        check_float_dtype(op, "bias", bias)
        check_same_dtype(op, x=x, bias=bias)
        if x.dim() == 0:
            raise ValueError(f"{op}: with a bias, x needs a last dimension to add it to, got a 0-d tensor")
        if bias.shape != (x.shape[-1],):
            raise ValueError(
                f"{op}: bias must be 1-D of size N={x.shape[-1]} (x's last dim), got shape {tuple(bias.shape)}")
        if x.shape[-1] > MAX_BIAS_N:
            raise ValueError(f"{op}: with a bias, N = x.shape[-1] must be <= {MAX_BIAS_N} (the column blocks "
                             f"fill one grid axis), got {x.shape[-1]}")
    check_runnable(op, *(t for t in (x, bias) if t is not None))
    return _gelu_fwd(x, bias)


# ----------------------------------------------------------------------------- reference


def gelu_reference(x, bias=None):
    """Plain PyTorch tanh-GELU of x + bias, the formula in eager ops: float16 and bfloat16
    inputs are computed in float32 and the result cast back (as torch does); float32 and
    float64 stay in their dtype. Differentiable by autograd."""
    dtype = x.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    u = x.to(compute) if bias is None else x.to(compute) + bias.to(compute)
    return (0.5 * u * (1.0 + torch.tanh(_C * (u + _A * u.pow(3))))).to(dtype)
