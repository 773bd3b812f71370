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
                The backward also returns dbias = sum over rows of dx, by a two-stage
                reduction with no atomics: a fixed grid of (G row groups) x (column blocks)
                programs, each looping over its row tiles and writing its column sums once
                into an fp32 (G, N) buffer; then a small kernel sums that over G in a fixed
                order, so dbias is bitwise identical run to run on the same GPU.
  The forward saves only its inputs; the backward recomputes u and the tanh term, which is
  cheaper than writing and re-reading them.

Bytes moved (global memory; n = x.numel() = M*N elements of s bytes, G row groups):
  forward           no bias: read x, write y                  = 2*n*s
                    bias:    + read bias                        = 2*n*s + N*s
  backward          no bias: read dy, x, write dx              = 3*n*s
                    bias:    + read bias, write and re-read the
                             partial sums, write dbias          = 3*n*s + 2*N*s + 8*G*N
`gelu_io_bytes` computes them.

Limits: any shape; float32, float16, bfloat16; bias 1-D of size N = x.shape[-1], same dtype,
N <= 65535 * 256.
Non-contiguous inputs: without bias, x (and dy) are made contiguous, since the flat kernel
needs one stride; with bias, rows may have any stride (a 2-D view such as x[:, :N] is read in
place), and what cannot be viewed as (M, N) with a contiguous last dim is copied. Outputs
are always contiguous.
"""

import math

import torch
import triton
import triton.language as tl

from kernels import registry
from kernels._common import (
    TRITON_TYPE, as_rows, check_float_dtype, check_runnable, check_same_dtype, num_sms, device_guard,
)

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715
MAX_BIAS_N = 65535 * 256  # column blocks of 256 along the grid's second axis, at most 65535

# In the kernels c and a are literals: a global tl.constexpr breaks Triton's interpreter.


@triton.jit
def _sigmoid(v):
    # Written out because tl.sigmoid fails under Triton 3.9's interpreter; exp of -|v| never
    # overflows, so large |v| gives exactly 0 or 1 with no inf on the way.
    e = tl.exp(-tl.abs(v))
    return tl.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _gelu_gate(u):
    # sigmoid(2z), z = c * (u + a * u^3); 2 * c = 2 * sqrt(2 / pi) = 1.5957691216057308, a = 0.044715
    return _sigmoid(1.5957691216057308 * (u + 0.044715 * u * u * u))


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
    # 2 * c = 1.5957691216057308; 3 * a = 0.134145
    return s + 1.5957691216057308 * u * s * (1.0 - s) * (1.0 + 0.134145 * u * u)


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
    stride_x_row, stride_y_row, M, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]
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
    stride_dy_row, stride_x_row, stride_dx_row, M, N, TILES_PER_PROGRAM,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    b = tl.load(BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    first_tile = pid_m.to(tl.int64) * TILES_PER_PROGRAM
    for t in range(0, TILES_PER_PROGRAM):
        rows = (first_tile + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & col_mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # Masked entries have dy = 0, so they add nothing to dbias.
        dx = dy * _gelu_grad(x + b[None, :])
        tl.store(DX + rows[:, None] * stride_dx_row + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        db_acc += tl.sum(dx, axis=0)
    tl.store(DB_PARTIAL + pid_m * N + cols, db_acc, mask=col_mask)


@triton.jit
def _gelu_bwd_reduce_kernel(DB_PARTIAL, DB, G, N, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    # Each program owns BLOCK_N columns and walks all G partial rows in a fixed order.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        gs = g0 + tl.arange(0, BLOCK_G)
        mask = (gs < G)[:, None] & col_mask[None, :]
        acc += tl.load(DB_PARTIAL + gs[:, None] * N + cols[None, :], mask=mask, other=0.0)
    tl.store(DB + cols, tl.sum(acc, axis=0).to(DB.dtype.element_ty), mask=col_mask)


# ----------------------------------------------------------------------------- launch heuristics


def _launch_config(N=1, G=1):
    """Every launch parameter of the five kernels, in one place: for x.shape[-1] = N (only
    the bias kernels depend on it; the flat ones, for any shape, take the default) and, for the reduce kernel, G partial rows (the bias
    backward's row groups, `_bias_bwd_grid`).

    Returns dict(flat=(BLOCK, num_warps), tile=(BLOCK_M, BLOCK_N, num_warps),
    bwd_programs_per_sm=int, reduce=(BLOCK_G, BLOCK_N, num_warps)).

    Each thread handles 8 elements (one 16-byte vector of bf16/fp16) in the flat kernels
    and 16 in a bias tile (two vectors, so a tile holds several rows of 256 columns); the
    tile is as wide as N up to 256 columns and has 2048 elements, so narrow rows get more
    rows. The bias backward uses at most 128 registers a thread, so 16 warps fit in an SM's
    64K registers: that sets how many programs share an SM. The reduce is latency-bound:
    its 4096-element tile spans as many of the G rows as possible (16 to 128), so it needs
    few serial loads, and its columns are split over as many programs as that leaves.
    """
    BLOCK_N = min(256, triton.next_power_of_2(N))
    tile_warps = 4
    BLOCK_G = min(128, max(16, triton.next_power_of_2(G)))
    return {
        "flat": (1024, 4),
        "tile": (2048 // BLOCK_N, BLOCK_N, tile_warps),
        "bwd_programs_per_sm": 16 // tile_warps,
        "reduce": (BLOCK_G, 4096 // BLOCK_G, 8),
    }


def _bias_bwd_grid(M, N, device):
    """(G row groups, column blocks, tiles per program) for the bias backward: about
    `bwd_programs_per_sm` programs per SM in all, each owning a contiguous run of row tiles
    of one column block, and no row group left without work."""
    cfg = _launch_config(N)
    BLOCK_M, BLOCK_N, _ = cfg["tile"]
    tiles, col_blocks = triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N)
    groups = max(1, min(tiles, num_sms(device) * cfg["bwd_programs_per_sm"] // col_blocks))
    tiles_per_program = triton.cdiv(tiles, groups)
    return triton.cdiv(tiles, tiles_per_program), col_blocks, tiles_per_program


@registry.configs_of("gelu")
def _configs():
    """Every config the launchers pick for GPT-2's MLP widths (4 * 768 .. 4 * 1600) and for
    N = 768..1600, 4096, 8192: all in bf16, fp16 and fp32 at N = 6400."""
    widths = (768, 1024, 1280, 1600, 3072, 4096, 5120, 6400, 8192)
    cases = [(torch.bfloat16, n) for n in widths] + [(torch.float16, 6400), (torch.float32, 6400)]
    for dtype, N in cases:
        d = TRITON_TYPE[dtype]
        cfg = _launch_config(N)
        BLOCK, warps = cfg["flat"]
        for kernel in (_gelu_fwd_kernel, _gelu_bwd_kernel):
            yield registry.CompileConfig(kernel, "gelu", f"{d} BLOCK={BLOCK} warps={warps}", d, {"BLOCK": BLOCK},
                                         warps, 1)
        BLOCK_M, BLOCK_N, warps = cfg["tile"]
        label = f"{d} BLOCK_M={BLOCK_M} BLOCK_N={BLOCK_N} warps={warps}"
        for kernel, types in ((_gelu_bias_fwd_kernel, {"M": "i32", "N": "i32"}),
                              (_gelu_bias_bwd_kernel, {"DB_PARTIAL": "*fp32", "M": "i32", "N": "i32",
                                                       "TILES_PER_PROGRAM": "i32"})):
            yield registry.CompileConfig(kernel, "gelu", label, d, {"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N}, warps, 1,
                                         types=types)
        for G in (16, 32, 64, 128):  # every reduce tile, whatever the GPU and M
            BLOCK_G, BLOCK_N, warps = _launch_config(N, G)["reduce"]
            yield registry.CompileConfig(
                _gelu_bwd_reduce_kernel, "gelu", f"{d} BLOCK_G={BLOCK_G} BLOCK_N={BLOCK_N} warps={warps}", d,
                {"BLOCK_G": BLOCK_G, "BLOCK_N": BLOCK_N}, warps, 1,
                types={"DB_PARTIAL": "*fp32", "G": "i32", "N": "i32"})


def gelu_io_bytes(shape, dtype, bias=False, backward=False, device="cuda"):
    """Global-memory bytes the forward (or the backward, all its kernels) moves for an x of
    `shape` and `dtype`, with or without bias: the counts in the module docstring. The bias
    backward's depends on the device's SM count, through the number of row groups G."""
    s = torch.empty((), dtype=dtype).element_size()
    n = math.prod(shape)
    if not bias:
        return (3 if backward else 2) * n * s
    N = shape[-1]
    if not backward:
        return 2 * n * s + N * s
    G, _, _ = _bias_bwd_grid(n // N, N, torch.device(device))
    return 3 * n * s + 2 * N * s + 8 * G * N


# ----------------------------------------------------------------------------- launchers


def _fwd(x, bias):
    with device_guard(x):
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.numel() == 0:
            return y
        if bias is None:  # any shape, 0-d included: the flat kernels do not depend on N
            x = x.contiguous()
            BLOCK, num_warps = _launch_config()["flat"]
            _gelu_fwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](
                x, y, x.numel(), BLOCK=BLOCK, num_warps=num_warps, num_stages=1)
            return y
        N = x.shape[-1]
        x2 = as_rows(x, N)
        M = x2.shape[0]
        BLOCK_M, BLOCK_N, num_warps = _launch_config(N)["tile"]
        grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
        _gelu_bias_fwd_kernel[grid](
            x2, bias, y, x2.stride(0), N, M, N,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=1)
        return y


def _bwd(dy, x):
    with device_guard(dy):
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.numel() == 0:
            return dx
        dy, x = dy.contiguous(), x.contiguous()
        BLOCK, num_warps = _launch_config()["flat"]
        _gelu_bwd_kernel[(triton.cdiv(x.numel(), BLOCK),)](
            dy, x, dx, x.numel(), BLOCK=BLOCK, num_warps=num_warps, num_stages=1)
        return dx


def _bias_bwd(dy, x, bias):
    with device_guard(dy):
        N = x.shape[-1]
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        dbias = torch.empty((N,), dtype=bias.dtype, device=x.device)
        x2, dy2 = as_rows(x, N), as_rows(dy, N)
        M = x2.shape[0]
        if M == 0:
            return dx, dbias.zero_()
        G, col_blocks, tiles_per_program = _bias_bwd_grid(M, N, x.device)
        cfg = _launch_config(N, G)
        BLOCK_M, BLOCK_N, num_warps = cfg["tile"]
        db_partial = torch.empty((G, N), dtype=torch.float32, device=x.device)
        _gelu_bias_bwd_kernel[(G, col_blocks)](
            dy2, x2, bias, dx, db_partial,
            dy2.stride(0), x2.stride(0), N, M, N, tiles_per_program,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=1)
        BLOCK_G, BLOCK_N, num_warps = cfg["reduce"]
        _gelu_bwd_reduce_kernel[(triton.cdiv(N, BLOCK_N),)](
            db_partial, dbias, G, N, BLOCK_G=BLOCK_G, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=1)
        return dx, dbias


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("gpt2_kernels::gelu_fwd", mutates_args=())
def _gelu_fwd(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    check_runnable("gelu", *(t for t in (x, bias) if t is not None))
    return _fwd(x, bias)


@_gelu_fwd.register_fake
def _(x, bias):
    return x.new_empty(x.shape)


@torch.library.custom_op("gpt2_kernels::gelu_bwd", mutates_args=())
def _gelu_bwd(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    check_runnable("gelu backward", dy, x)
    return _bwd(dy, x)


@_gelu_bwd.register_fake
def _(dy, x):
    return x.new_empty(x.shape)


@torch.library.custom_op("gpt2_kernels::gelu_bias_bwd", mutates_args=())
def _gelu_bias_bwd(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_runnable("gelu backward", dy, x, bias)
    return _bias_bwd(dy, x, bias)


@_gelu_bias_bwd.register_fake
def _(dy, x, bias):
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    x, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, bias)


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    if not ctx.has_bias:
        return torch.ops.gpt2_kernels.gelu_bwd(dy, x), None
    return torch.ops.gpt2_kernels.gelu_bias_bwd(dy, x, bias)


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
    Raises:
        TypeError for an unsupported or mismatched dtype, ValueError for a bias of the wrong
        shape, tensors on different devices, or CPU tensors without the interpreter.
    """
    op = "gelu"
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
        check_runnable(op, x, bias)
    else:
        check_runnable(op, x)
    return torch.ops.gpt2_kernels.gelu_fwd(x, bias)


# ----------------------------------------------------------------------------- reference


def gelu_reference(x, bias=None):
    """Plain PyTorch tanh-GELU of x + bias, the formula in eager ops: float16 and bfloat16
    inputs are computed in float32 and the result cast back (as torch does); float32 and
    float64 stay in their dtype. Differentiable by autograd."""
    dtype = x.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    u = x.to(compute) if bias is None else x.to(compute) + bias.to(compute)
    return (0.5 * u * (1.0 + torch.tanh(_C * (u + _A * u.pow(3))))).to(dtype)
