"""LayerNorm over the last dimension: Triton kernels, a registered PyTorch op, its autograd.

Math, for one row x of N numbers (weight w, bias b of size N):

    mean = sum(x) / N
    var  = sum((x - mean)^2) / N          (biased, as torch.nn.LayerNorm)
    rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd
    y    = xhat * w + b

Backward, given dy (same shape as y):

    g     = dy * w                                       (the gradient w.r.t. xhat)
    dx    = rstd * (g - mean(g) - xhat * mean(g * xhat))  (means over the row)
    dw    = sum over rows of dy * xhat
    db    = sum over rows of dy

Statistics (mean, rstd) and all arithmetic are fp32 for fp32, fp16 and bf16 inputs; y and dx
are stored in x's dtype, dw and db in the weight's dtype (which must equal x's).

Kernels:
  forward   one program per row; the row lives in registers (BLOCK_N = next_pow2(N),
            masked), so x is read once and y written once; mean and rstd are saved
            (fp32, one each per row) for the backward.
  backward  a fixed grid of P programs (as many as fit on the SMs at once, from the compiled
            kernel's register count), each looping over its own contiguous run of row
            tiles: it writes dx for every row and keeps running dw/db sums in registers,
            in the tile's own (BLOCK_M, BLOCK_N) layout so that the loop has no layout
            conversions (at N = 768 that took the loop from 274 SASS instructions and 20
            barriers to 208 and 4 on sm_90); the rows are summed once after the loop and
            written as row `pid` of an fp32 (2, P, N) buffer; torch's sum over P then
            finishes dw and db. Neither step uses atomics, so dw and db are bitwise
            identical run to run on the same GPU.

Bytes moved (global memory; M rows, N columns, s bytes per element of x's dtype, P backward
programs):
  forward   read x (M*N*s) + w, b (2*N*s), write y (M*N*s) + mean, rstd (8*M)
            = 2*M*N*s + 2*N*s + 8*M
  backward  kernel: read dy, x (2*M*N*s) + w (N*s) + mean, rstd (8*M), write dx (M*N*s)
            + partial dw, db (8*P*N);  sum: read 8*P*N, write dw, db (2*N*s, and for
            16-bit weights 8*N more through an fp32 sum that is then cast)
            = 3*M*N*s + 3*N*s + 8*M + 16*P*N
The partial buffers are the only traffic beyond the minimum, 16*P / (3*M*s) of it: P is the
programs that fit on the SMs at once, e.g. 3 per SM at 80 registers and 8 warps (N <= 1024),
4 at 64 (N = 1280..2048), so P = 396 on a 132-SM H100 at N = 768, and for M = 8192 rows of
bf16 they add 13% (6.5% in fp32 or at M = 16384), and less for wider rows.

Limits: 1 <= N <= 8192 (a row must fit in one program's registers without spilling); any
leading shape. Inputs whose last dimension is not contiguous are copied to a contiguous
tensor first; otherwise rows may have any stride (a 2-D view such as x[:, :N] of a wider
tensor is read in place), and a leading shape that cannot be viewed as (M, N) is copied by
`reshape`. Outputs are always contiguous. weight and bias must be 1-D of size N; a view that is
not contiguous (a strided slice, an expanded scalar) is copied, 2*N elements.
Under torch.autocast the op computes in float32 and returns float32, as autocast does for
torch's layer_norm on CUDA.
"""

import torch
import triton
import triton.language as tl

from gpt2_kernels import registry
from gpt2_kernels._common import (
    TRITON_TYPE, Launch, as_rows, autocast_dtype, cast_floats, check_float_dtype, check_runnable, check_same_dtype,
    contiguous_copy_bytes, rows_copy_bytes, workspace_of,
    device_guard, num_sms,
)

MAX_N = 8192


@triton.jit
def _layer_norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD,
    stride_x_row, stride_y_row, n_cols, eps,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    # Interpreted bf16 arrives as raw 16-bit integers, so every load is cast to fp32 at once.
    x = tl.load(X + row * stride_x_row + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    # Two-pass variance from registers: no cancellation as in E[x^2] - E[x]^2.
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / n_cols
    rstd = tl.rsqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(Y + row * stride_y_row + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


# The backward's two row sums cross warps, so each goes through shared memory. Triton 3.6 does
# that in two rounds (per-warp partials stored, a barrier, one warp's total stored, a barrier,
# read by all), and the two sums reuse one scratch buffer, which takes a barrier before each
# reuse: 6 barriers an iteration on sm_80/90/100. As one sum over joined (g, g * xhat) pairs
# they take 3, and the loop 0.5 to 2.6 fewer instructions per element. The lowering that
# replaced it after 3.6 (triton-lang/triton#9219) does one round (3.9: 4 barriers for the two
# sums), and there joining them costs registers (sm_80 N=1024: 64 -> 79, so 3 programs an SM
# instead of 4) and, on sm_100, the paired FMUL2/FFMA2 of the g * xhat products (up to 1.25
# more instructions per element), so from 3.7 the sums stay apart. Either way each sum is a
# fixed fp32 tree over the row: deterministic.
_JOIN_ROW_SUMS = tl.constexpr(tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7))


# With g = dy * w and xhat = (x - mean) * rstd, y = xhat * w + b gives
#   dL/dx_i = rstd * (g_i - (1/N) sum_j g_j - xhat_i * (1/N) sum_j g_j xhat_j)
# (the two sums are the derivatives of mean and of rstd), and dL/dw = sum_rows dy * xhat,
# dL/db = sum_rows dy. With HAS_DH, x is h = a + residual (gpt2_kernels.add_layer_norm) and DH
# holds the gradient h also receives from the residual stream, added to dx.
@triton.jit
def _layer_norm_bwd_kernel(
    DY, X, W, MEAN, RSTD, DX, DW_PARTIAL, DB_PARTIAL, DH,
    stride_dy_row, stride_x_row, stride_dx_row, stride_dh_row, n_rows, n_cols, tiles_per_program,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_DH: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    # This program's share of dw and db, kept in the tile's own layout: summing over the rows
    # inside the loop would convert layouts through shared memory (barriers) every iteration;
    # here the rows are summed once, after the loop.
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first_tile = pid.to(tl.int64) * tiles_per_program
    for t in range(0, tiles_per_program):
        rows = (first_tile + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
        # Masked columns load x = 0, which is not 0 after centring: zero them explicitly.
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        if _JOIN_ROW_SUMS:
            mean_g, mean_gx = tl.split(tl.sum(tl.join(g, g * xhat), axis=1) / n_cols)
        else:
            mean_g = tl.sum(g, axis=1) / n_cols
            mean_gx = tl.sum(g * xhat, axis=1) / n_cols
        dx = (g - mean_g[:, None] - xhat * mean_gx[:, None]) * rstd[:, None]
        if HAS_DH:
            dx += tl.load(DH + rows[:, None] * stride_dh_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dx_row + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy
    tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw_acc, axis=0), mask=col_mask)
    tl.store(DB_PARTIAL + pid * n_cols + cols, tl.sum(db_acc, axis=0), mask=col_mask)


# ----------------------------------------------------------------------------- launch heuristics

# Backward row tiles hold at least this many elements, so that narrow rows still give each
# loop iteration a few KB of loads in flight.
_BWD_TILE_ELEMENTS = 2048
# An SM's register file and thread slots (sm_80 and sm_90 alike); a warp's registers are
# allocated in blocks of 256.
_REGISTERS_PER_SM, _THREADS_PER_SM = 65536, 2048
# Before the first backward of a shape has been compiled: what `python -m gpt2_kernels.sass`
# reports for the GPT-2 widths (80 registers at 8 warps).
_BWD_REGISTERS_GUESS = 80


def _launch_config(kernel, N):
    """How `kernel` (either of the two above) is launched for rows of N elements: the one
    place block sizes and warps are chosen, for the launchers and for `python -m gpt2_kernels.sass`.

    Each thread holds 8 elements of a row (or tile), 16 at N > 4096: one 16-byte vector load
    of bf16, and few enough registers that nothing spills (checked on sm_80 and sm_90 by
    `python -m gpt2_kernels.sass`).
    """
    BLOCK_N = triton.next_power_of_2(N)
    if kernel is _layer_norm_fwd_kernel:
        return Launch({"BLOCK_N": BLOCK_N}, num_warps=min(32, max(1, BLOCK_N // 256)), num_stages=1)
    BLOCK_M = max(1, _BWD_TILE_ELEMENTS // BLOCK_N)
    return Launch({"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "HAS_DH": False},
                  num_warps=min(16, max(1, BLOCK_M * BLOCK_N // 256)), num_stages=1)


def _programs_per_sm(registers, num_warps):
    """How many programs of num_warps warps, at `registers` a thread, one SM holds at once.

    The backward is a stream of loads with little arithmetic between them, so what hides
    memory latency is how many bytes are in flight per SM: each program has one tile of x and
    dy loading per iteration (8 KB in bf16 at 2048 elements), so 80 registers at 8 warps give
    3 programs, 24 KB in flight, where a fixed 2 gave 16 KB."""
    per_warp = triton.cdiv(registers * 32, 256) * 256
    return max(1, min(_REGISTERS_PER_SM // (per_warp * num_warps), _THREADS_PER_SM // (32 * num_warps)))


_BWD_REGISTERS = {}  # (device, kernel cache key) -> registers a thread, read once per compiled shape


def _bwd_registers(args, launch, device):
    """The compiled backward's registers a thread: Triton compiles (or finds in its cache) the
    kernel for these arguments without launching it, and the loaded binary reports it."""
    if device.type != "cuda":
        return _BWD_REGISTERS_GUESS  # the interpreter has no registers; the grid only needs a size
    key = (device, tuple(launch.constexprs.items()), launch.num_warps,
           tuple(a.dtype if isinstance(a, torch.Tensor) else a % 16 == 0 for a in args))
    if key not in _BWD_REGISTERS:
        with device_guard(args[0]):  # compiled for, and loaded on, the tensors' GPU
            compiled = _layer_norm_bwd_kernel.warmup(*args, grid=(1,), **launch.constexprs, num_warps=launch.num_warps,
                                                     num_stages=launch.num_stages)
            compiled._init_handles()  # loads the binary, which sets n_regs
        _BWD_REGISTERS[key] = compiled.n_regs
    return _BWD_REGISTERS[key]


def _bwd_grid(M, launch, device, registers):
    """(P, tiles per program) for the backward: as many programs as fit on the SMs at once
    (`_programs_per_sm`), each owning a contiguous run of row tiles, none without work."""
    tiles = triton.cdiv(M, launch.constexprs["BLOCK_M"])
    programs = max(1, min(tiles, num_sms(device) * _programs_per_sm(registers, launch.num_warps)))
    tiles_per_program = triton.cdiv(tiles, programs)
    return triton.cdiv(tiles, tiles_per_program), tiles_per_program


def _layer_norm_bwd_rows(dy2, x2, weight, mean, rstd, dx, dh2=None):
    """Launch the backward on (M, N) rows (dx: a contiguous tensor of M * N elements; dh2, for
    add_layer_norm, the gradient h receives besides LayerNorm's) and return (dw, db)."""
    M, N = x2.shape
    launch = _launch_config(_layer_norm_bwd_kernel, N)
    launch = launch._replace(constexprs={**launch.constexprs, "HAS_DH": dh2 is not None})
    # The launch's arguments, with mean (fp32) standing in for the partial sums, which need P
    # first, and 2 tiles a program (Triton specializes an argument equal to 1).
    registers = _bwd_registers((dy2, x2, weight, mean, rstd, dx, mean, mean, dx, dy2.stride(0), x2.stride(0), N,
                                0 if dh2 is None else dh2.stride(0), M, N, 2), launch, x2.device)
    P, tiles_per_program = _bwd_grid(M, launch, x2.device, registers)
    partial = torch.empty((2, P, N), dtype=torch.float32, device=x2.device)  # dw's and db's rows
    with device_guard(x2):
        _layer_norm_bwd_kernel[(P,)](
            dy2, x2, weight, mean, rstd, dx, partial[0], partial[1], dx if dh2 is None else dh2,
            dy2.stride(0), x2.stride(0), N, 0 if dh2 is None else dh2.stride(0), M, N, tiles_per_program,
            **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    # torch's sum uses no atomics: for a given shape on a given GPU it adds the P rows in one
    # fixed order, so dw and db are the same bits run to run (as a Triton reduce would be).
    return (p.sum(0).to(weight.dtype) for p in partial)


def bwd_rows_workspace(M, N, weight, device):
    """The scratch of `_layer_norm_bwd_rows` beside its outputs: the (2, P, N) fp32 partial sums,
    and one fp32 sum before its cast to a weight that is not fp32. P as the interpreter's grid
    (and a fake run's) has it; on a GPU the compiled kernel's registers set it, a few MB at most."""
    if M == 0:
        return 0
    P, _ = _bwd_grid(M, _launch_config(_layer_norm_bwd_kernel, N), device, _BWD_REGISTERS_GUESS)
    return 2 * P * N * 4 + (0 if weight.dtype == torch.float32 else 4 * N)


def compile_configs(op, cases, kernels, launch_config):
    """CompileConfigs of `op` for each (dtype, N) in cases and each (kernel, name) in kernels,
    launched as launch_config(kernel, N) says: statistics and partial sums fp32, the rest the
    dtype. Shared with gpt2_kernels.add_layer_norm, whose backward is this module's kernel."""
    # Triton specializes an int argument that is a multiple of 16 at launch, and GPT-2's widths
    # all are: the hints make the compiled code the code that runs (without them ptxas sees
    # scalar addressing and the N=8192 backward spills on Triton 3.6).
    fp32 = {"MEAN": "*fp32", "RSTD": "*fp32", "DW_PARTIAL": "*fp32", "DB_PARTIAL": "*fp32", "eps": "fp32"}
    for dtype, N in cases:
        for kernel, name in kernels:
            launch = launch_config(kernel, N)
            blocks = " ".join(f"{k}={v}" for k, v in launch.constexprs.items())
            yield registry.CompileConfig(
                kernel, op, f"{name} {TRITON_TYPE[dtype]} {blocks} warps={launch.num_warps}",
                TRITON_TYPE[dtype], launch.constexprs, launch.num_warps, launch.num_stages,
                types={k: v for k, v in fp32.items() if k in kernel.arg_names},
                divisible_by_16=tuple(a for a in kernel.arg_names if a.startswith("stride_") or a == "n_cols"))


@registry.configs_of("layer_norm")
def _configs():
    """Every config the launchers pick for GPT-2's widths (768..1600) and 4096, 8192: all in
    bf16, the float16/float32 ones at N=1600 and the widest float32 one."""
    cases = [(torch.bfloat16, n) for n in (768, 1024, 1280, 1600, 4096, 8192)]
    cases += [(torch.float16, 1600), (torch.float32, 1600), (torch.float32, 8192)]
    kernels = ((_layer_norm_fwd_kernel, "fwd"), (_layer_norm_bwd_kernel, "bwd"))
    yield from compile_configs("layer_norm", cases, kernels, _launch_config)


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("gpt2_kernels::layer_norm_fwd", mutates_args=())
def _layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N = x.shape[-1]
    x2 = as_rows(x, N)
    M = x2.shape[0]
    # The kernels read weight and bias at unit stride: a strided view (w[::2], an expanded
    # scalar) is copied first, 2*N elements, nothing next to the M*N of x.
    weight, bias = weight.contiguous(), bias.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, mean, rstd
    launch = _launch_config(_layer_norm_fwd_kernel, N)
    with device_guard(x):
        _layer_norm_fwd_kernel[(M,)](
            x2, weight, bias, y, mean, rstd, x2.stride(0), N, N, eps,
            **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    return y, mean, rstd


@_layer_norm_fwd.register_fake
def _(x, weight, bias, eps):
    M = x.numel() // x.shape[-1]
    stats = x.new_empty((M,), dtype=torch.float32)
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("gpt2_kernels::layer_norm_bwd", mutates_args=())
def _layer_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N = x.shape[-1]
    x2, dy2 = as_rows(x, N), as_rows(dy, N)
    M = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if M == 0:
        return dx, weight.new_zeros((N,)), weight.new_zeros((N,))
    weight = weight.contiguous()  # N elements, as in the forward
    dw, db = _layer_norm_bwd_rows(dy2, x2, weight, mean, rstd, dx)
    return dx, dw, db


@_layer_norm_bwd.register_fake
def _(dy, x, weight, mean, rstd):
    N = x.shape[-1]
    return x.new_empty(x.shape), weight.new_empty((N,)), weight.new_empty((N,))


@workspace_of(_layer_norm_fwd)
def _(x, weight, bias, eps):
    return rows_copy_bytes(x, x.shape[-1]) + contiguous_copy_bytes(weight) + contiguous_copy_bytes(bias)


@workspace_of(_layer_norm_bwd)
def _(dy, x, weight, mean, rstd):
    N = x.shape[-1]
    M = x.numel() // N if N else 0
    return (rows_copy_bytes(x, N) + rows_copy_bytes(dy, N) + (contiguous_copy_bytes(weight) if M else 0)
            + bwd_rows_workspace(M, N, weight, x.device))


def _setup_context(ctx, inputs, output):
    x, weight, _, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _layer_norm_bwd(dy, x, weight, mean, rstd)
    return dx, dw, db, None


_layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API


def check_rows(op, x, weight, bias, eps):
    """The shape checks every row-wise LayerNorm op shares (this one and add_layer_norm)."""
    if x.dim() == 0 or not 1 <= x.shape[-1] <= MAX_N:
        raise ValueError(
            f"{op}: x must have a last dimension N with 1 <= N <= {MAX_N} (one row per program "
            f"in registers), got shape {tuple(x.shape)}")
    N = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t.shape != (N,):
            raise ValueError(f"{op}: {name} must be 1-D of size N={N} (x's last dim), got shape {tuple(t.shape)}")
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")


def layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm of x over its last dimension, as torch.nn.functional.layer_norm(x, (N,),
    weight, bias, eps), with Triton kernels forward and backward.

    Args:
        x:      (..., N) float32, float16 or bfloat16, CUDA (or CPU under TRITON_INTERPRET=1);
                1 <= N <= 8192.
        weight: (N,) same dtype and device as x.
        bias:   (N,) same dtype and device as x.
        eps:    added to the variance, a float >= 0.
    Returns:
        y: (..., N) contiguous, dtype of x. Statistics are computed in float32.

    weight and bias may be any views (a strided slice, a scalar expanded to N): the kernels
    read them at unit stride, so such a view is copied first (2*N elements).
    Under torch.autocast, x, weight and bias are cast to float32 and y is float32: the policy
    autocast applies to torch's layer_norm on CUDA (its float32 list).
    Raises:
        TypeError for an unsupported or mismatched dtype, ValueError for bad shapes, tensors
        on different devices, or CPU tensors without the interpreter.
    """
    op = "layer_norm"
    if autocast_dtype(x) is not None:
        x, weight, bias = cast_floats(torch.float32, x, weight, bias)
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        check_float_dtype(op, name, t)
    check_same_dtype(op, x=x, weight=weight, bias=bias)
    check_rows(op, x, weight, bias, eps)
    check_runnable(op, x, weight, bias)
    y, _, _ = _layer_norm_fwd(x, weight, bias, float(eps))
    return y


# ----------------------------------------------------------------------------- reference


def layer_norm_reference(x, weight, bias, eps=1e-5):
    """Plain PyTorch LayerNorm over the last dim, the kernels' math in eager ops: float16 and
    bfloat16 inputs are computed in float32 and the result cast back (as torch does);
    float32 and float64 stay in their dtype. Differentiable by autograd."""
    dtype = x.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    x, weight, bias = x.to(compute), weight.to(compute), bias.to(compute)
    mean = x.mean(dim=-1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps) * weight + bias
    return y.to(dtype)
