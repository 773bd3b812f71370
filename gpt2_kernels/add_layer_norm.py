"""Residual add fused with the LayerNorm after it: h = x + residual, y = LayerNorm(h), in one pass.

A pre-LN transformer block ends each half with `h = residual + branch` and starts the next
with `LayerNorm(h)`. Eager code writes h, then reads it back for the LayerNorm; here one
program per row reads x and residual once, and writes h and y once.

Math, for one row (N numbers; weight w, bias b):

    h    = x + residual                 (rounded to x's dtype, as eager's add stores it)
    mean = sum(h) / N,  var = sum((h - mean)^2) / N,  rstd = 1 / sqrt(var + eps)
    y    = (h - mean) * rstd * w + b

Backward, given dy and dh_out (h is an output too: the residual stream carries it on):

    dh   = LayerNorm's dx for dy (see gpt2_kernels/layer_norm.py)  +  dh_out
    dx   = dresidual = dh,   dw = sum over rows of dy * hhat,   db = sum over rows of dy

The backward is LayerNorm's own kernel (`_layer_norm_bwd_kernel` with HAS_DH), reading the
saved h in place of x and adding dh_out to its dx as it stores it: one pass, no separate add.

Bytes moved (M rows, N columns, s bytes per element):
  forward   read x, residual (2*M*N*s) + w, b; write h, y (2*M*N*s) + mean, rstd (8*M)
            = 4*M*N*s + 2*N*s + 8*M       (eager: add 3*M*N*s, then LayerNorm 2*M*N*s)
  backward  read dy, h, dh_out (3*M*N*s), write dh (M*N*s), + LayerNorm's partial sums
            (eager: LayerNorm's 3*M*N*s, then the add of two gradients 3*M*N*s)

Limits as `gpt2_kernels.layer_norm`: 1 <= N <= 8192, any leading shape, rows of any stride
(a non-contiguous last dimension is copied first). x, residual, weight and bias share one
float dtype; statistics and arithmetic are fp32.
"""

import torch
import triton
import triton.language as tl

from gpt2_kernels import registry
from gpt2_kernels._common import (
    autocast_dtype, cast_floats,
    as_rows, check_float_dtype, check_runnable, check_same_dtype, device_guard, rows_copy_bytes, workspace_of,
)
from gpt2_kernels.layer_norm import _launch_config as _layer_norm_launch_config, check_rows, compile_configs
from gpt2_kernels.layer_norm import _layer_norm_bwd_kernel, _layer_norm_bwd_rows, _layer_norm_fwd_kernel, layer_norm_reference
from gpt2_kernels.layer_norm import bwd_rows_workspace


@triton.jit
def _add_layer_norm_fwd_kernel(
    X, RES, W, B, H, Y, MEAN, RSTD,
    stride_x_row, stride_res_row, stride_h_row, stride_y_row, n_cols, eps,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    # Interpreted bf16 arrives as raw 16-bit integers, so every load is cast to fp32 at once.
    x = tl.load(X + row * stride_x_row + cols, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(RES + row * stride_res_row + cols, mask=mask, other=0.0).to(tl.float32)
    h = (x + r).to(H.dtype.element_ty)
    tl.store(H + row * stride_h_row + cols, h, mask=mask)
    # The statistics of h as stored, so y is exactly LayerNorm(h) of the h the stream carries.
    h = h.to(tl.float32)
    mean = tl.sum(h, axis=0) / n_cols
    hc = tl.where(mask, h - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(hc * hc, axis=0) / n_cols + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y_row + cols, (hc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


# ----------------------------------------------------------------------------- launch heuristics


def _launch_config(kernel, N):
    """How the forward above, or LayerNorm's backward with HAS_DH, is launched for rows of N:
    LayerNorm's choices (8 elements a thread, 16 past N = 4096), so the two stay one tuning."""
    if kernel is _add_layer_norm_fwd_kernel:
        return _layer_norm_launch_config(_layer_norm_fwd_kernel, N)
    launch = _layer_norm_launch_config(kernel, N)
    return launch._replace(constexprs={**launch.constexprs, "HAS_DH": True})


@registry.configs_of("add_layer_norm")
def _configs():
    """GPT-2's widths in bf16, and N = 1600 in fp16 and fp32: the forward and the backward
    with HAS_DH (the backward without it is registered by layer_norm)."""
    cases = [(torch.bfloat16, n) for n in (768, 1024, 1280, 1600)]
    cases += [(torch.float16, 1600), (torch.float32, 1600)]
    kernels = ((_add_layer_norm_fwd_kernel, "fwd"), (_layer_norm_bwd_kernel, "bwd"))
    yield from compile_configs("add_layer_norm", cases, kernels, _launch_config)


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("gpt2_kernels::add_layer_norm_fwd", mutates_args=())
def _add_layer_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N = x.shape[-1]
    x2, r2 = as_rows(x, N), as_rows(residual, N)
    M = x2.shape[0]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, h, mean, rstd
    launch = _launch_config(_add_layer_norm_fwd_kernel, N)
    with device_guard(x):
        _add_layer_norm_fwd_kernel[(M,)](
            x2, r2, weight, bias, h, y, mean, rstd, x2.stride(0), r2.stride(0), N, N, N, eps,
            **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages)
    return y, h, mean, rstd


@_add_layer_norm_fwd.register_fake
def _(x, residual, weight, bias, eps):
    M = x.numel() // x.shape[-1]
    stats = x.new_empty((M,), dtype=torch.float32)
    return x.new_empty(x.shape), x.new_empty(x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("gpt2_kernels::add_layer_norm_bwd", mutates_args=())
def _add_layer_norm_bwd(
    dy: torch.Tensor, dh: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d(x + residual), dweight, dbias): the gradient h gets through the LayerNorm plus dh."""
    N = h.shape[-1]
    dx = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    h2 = as_rows(h, N)
    if h2.shape[0] == 0:
        return dx, weight.new_zeros((N,)), weight.new_zeros((N,))
    dw, db = _layer_norm_bwd_rows(as_rows(dy, N), h2, weight, mean, rstd, dx, as_rows(dh, N))
    return dx, dw, db


@_add_layer_norm_bwd.register_fake
def _(dy, dh, h, weight, mean, rstd):
    N = h.shape[-1]
    return h.new_empty(h.shape), weight.new_empty((N,)), weight.new_empty((N,))


@workspace_of(_add_layer_norm_fwd)
def _(x, residual, weight, bias, eps):
    return rows_copy_bytes(x, x.shape[-1]) + rows_copy_bytes(residual, x.shape[-1])


@workspace_of(_add_layer_norm_bwd)
def _(dy, dh, h, weight, mean, rstd):
    N = h.shape[-1]
    M = h.numel() // N if N else 0
    copies = rows_copy_bytes(h, N) + (rows_copy_bytes(dy, N) + rows_copy_bytes(dh, N) if M else 0)
    return copies + bwd_rows_workspace(M, N, weight, h.device)


def _setup_context(ctx, inputs, output):
    _, _, weight, _, _ = inputs
    _, h, mean, rstd = output
    ctx.save_for_backward(h, weight, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, dh, _dmean, _drstd):
    h, weight, mean, rstd = ctx.saved_tensors
    # Autograd passes None for an output nobody used; zeros keep one kernel for both cases.
    dy = torch.zeros_like(h) if dy is None else dy
    dh = torch.zeros_like(h) if dh is None else dh
    dsum, dw, db = _add_layer_norm_bwd(dy, dh, h, weight, mean, rstd)
    return dsum, dsum, dw, db, None


_add_layer_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API


def add_layer_norm(x, residual, weight, bias, eps=1e-5):
    """h = x + residual and y = LayerNorm(h) over the last dimension, in one pass; returns (y, h).

    The same as ``h = x + residual; y = F.layer_norm(h, (N,), weight, bias, eps)``, with
    Triton kernels forward and backward: gradients flow into x and residual from both y and
    h (h is the residual stream that goes on to the next block).

    Args:
        x, residual: (..., N), one shape, float32, float16 or bfloat16, CUDA (or CPU under
                     TRITON_INTERPRET=1); 1 <= N <= 8192.
        weight, bias: (N,) same dtype and device.
        eps:         added to the variance, a float >= 0.
    Returns:
        (y, h): both (..., N), contiguous, dtype of x. Statistics are computed in float32.
        Under torch.autocast all four are cast to float32 first and y, h are float32, as the
        eager add (which promotes) followed by layer_norm (autocast's float32 list on CUDA).
    Raises:
        TypeError for an unsupported or mismatched dtype, ValueError for bad shapes, tensors
        on different devices, or CPU tensors without the interpreter.
    """
    op = "add_layer_norm"
    if autocast_dtype(x) is not None:
        # Eager autocast adds in the wider dtype and runs layer_norm in float32 (its float32
        # list on CUDA), so the fused op does both in float32 too.
        x, residual, weight, bias = cast_floats(torch.float32, x, residual, weight, bias)
    for name, t in (("x", x), ("residual", residual), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        check_float_dtype(op, name, t)
    check_same_dtype(op, x=x, residual=residual, weight=weight, bias=bias)
    if x.shape != residual.shape:
        raise ValueError(f"{op}: x and residual must have one shape, got {tuple(x.shape)} and {tuple(residual.shape)}")
    check_rows(op, x, weight, bias, eps)
    check_runnable(op, x, residual, weight, bias)
    # The kernels read weight and bias as contiguous N-vectors: a strided or expanded one is
    # copied (2*N elements), as gpt2_kernels.layer_norm does.
    weight, bias = weight.contiguous(), bias.contiguous()
    y, h, _, _ = _add_layer_norm_fwd(x, residual, weight, bias, float(eps))
    return y, h


# ----------------------------------------------------------------------------- reference


def add_layer_norm_reference(x, residual, weight, bias, eps=1e-5):
    """Eager PyTorch: the add (stored in x's dtype), then `layer_norm_reference`. Returns (y, h)."""
    h = x + residual
    return layer_norm_reference(h, weight, bias, eps), h
