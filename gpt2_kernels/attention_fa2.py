"""Attention as this project shipped it before the Hopper rework (FlashAttention-2 style),
kept as a benchmark line the way llm.c's dev/cuda keeps each kernel version: ``python -m
bench --only attention`` times it beside ``gpt2_kernels.attention``, so a GPU run shows which
change paid. It is not used by the model. Same math and contract as ``gpt2_kernels.attention``
(whose host-side checks, layout rules and reference it shares), with its own ops
``gpt2_kernels::attention_fa2_fwd`` / ``_bwd``:

    S = scale * Q K^T,  P = softmax(S + M),  O = P V,  L = logsumexp(S + M) (natural log)

One family of tiles for every GPU from sm_80 on, pointer loads (cp.async), the softmax of
each key tile after its Q K^T completes, and a three-launch backward (delta, dK/dV, dQ)
that recomputes P twice: 7 matrix products per tile.

Limits, layouts and numerics: those of gpt2_kernels.attention.
"""

import math

import torch
import triton
import triton.language as tl

from gpt2_kernels import registry
from gpt2_kernels._common import INTERPRET, TRITON_TYPE, Launch, device_guard, workspace_of
from gpt2_kernels.attention import (HEAD_DIMS, LN2, LOG2E, _attn_bwd_preprocess_kernel, _check_inputs, _copies_bytes,
                               _kernel_layout, _strides)


# A note on INTERPRET, which every kernel takes: Triton's interpreter hands bf16 tiles to
# tl.dot as raw 16-bit integers, so there the matrix-product operands are widened to fp32
# (exact: every fp16/bf16 value is an fp32 value), after any rounding to the storage dtype.
# On a GPU the operands stay in their storage dtype, which is what the tensor cores consume,
# and the `.to(DOT)` casts below are no-ops.


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                    start, end, seq_k, diag, qk_scale,
                    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, DOT: tl.constexpr):
    # Key tiles [start, end), with k_ptrs / v_ptrs at key row `start`. MASKED tiles check the
    # causal diagonal (query i sees key j iff j <= i + diag) and the end of the keys; the
    # others need not.
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_ptrs, mask=cols[:, None] < seq_k, other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k.to(DOT)))
        if MASKED:
            keep = cols[None, :] < seq_k
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk, float("-inf"))
        # Base-2 scores s = qk * qk_scale. The max is taken before scaling (scale > 0) so
        # that qk * qk_scale - m is a single fused multiply-add per score.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=cols[:, None] < seq_k, other=0.0)
        else:
            v = tl.load(v_ptrs)
        # P is rounded to V's dtype for the tensor cores (fp32 accumulation), as FA2 does.
        p = p.to(v_ptrs.dtype.element_ty).to(DOT)
        acc = tl.dot(p, v.to(DOT), acc * alpha[:, None])
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE,
                     stride_qb, stride_qh, stride_qm,
                     stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn,
                     stride_ob, stride_oh, stride_om,
                     n_heads, seq_q, seq_k, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr, INTERPRET: tl.constexpr):
    # A 1-D grid of (batch*head) x query tiles. Within a head the tiles run last-first: under
    # the causal mask the last query tiles have the most keys, and starting the longest
    # programs first keeps the GPU's tail short.
    num_m = tl.cdiv(seq_q, BLOCK_M)
    bh = tl.program_id(0) // num_m
    start_m = (num_m - 1 - tl.program_id(0) % num_m) * BLOCK_M
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    DOT: tl.constexpr = tl.float32 if INTERPRET else Q.dtype.element_ty
    # The scalar bases carry the 64-bit offsets; per-element offsets stay small 32-bit numbers.
    Q += b * stride_qb + h * stride_qh + start_m * stride_qm.to(tl.int64)
    O += b * stride_ob + h * stride_oh + start_m * stride_om.to(tl.int64)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < seq_q
    q = tl.load(Q + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok, other=0.0).to(DOT)
    k_ptrs = K + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key tiles [0, full_end) are seen whole by every row of this query tile, [full_end, end)
    # straddle the diagonal or the end of the keys, and keys from `end` on are seen by none.
    diag = seq_k - seq_q
    if CAUSAL:
        full_end = (start_m + diag + 1) // BLOCK_N * BLOCK_N
        end = tl.minimum(start_m + BLOCK_M + diag, seq_k)
    else:
        full_end = seq_k // BLOCK_N * BLOCK_N
        end = seq_k
    # Key 0 is in the first tile swept and every row sees it, so no row's max is still
    # -inf after it (no -inf - -inf = NaN in the rescaling).
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                    0, full_end, seq_k, diag, qk_scale, BLOCK_N, CAUSAL, False, DOT)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q,
                                    k_ptrs + full_end * stride_kn.to(tl.int64),
                                    v_ptrs + full_end * stride_vn.to(tl.int64),
                                    stride_kn, stride_vn, offs_m, offs_n,
                                    full_end, end, seq_k, diag, qk_scale, BLOCK_N, CAUSAL, True, DOT)

    acc = acc * (1.0 / l_i)[:, None]
    # Natural-log logsumexp of the scaled scores: m and log2(l) are in base 2.
    tl.store(LSE + bh.to(tl.int64) * seq_q + offs_m, (m_i + tl.math.log2(l_i)) * LN2, mask=offs_m < seq_q)
    tl.store(O + rows[:, None] * stride_om + offs_d[None, :], acc.to(O.dtype.element_ty), mask=row_ok)


# ----------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------


# The preprocess kernel (delta = rowsum(dO * O)) is gpt2_kernels.attention's own, imported above.


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, LSE, DELTA, stride_qm, stride_dom, offs_n,
                         start, end, seq_q, diag, qk_scale,
                         BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, DOT: tl.constexpr):
    # The transposed view: this program owns BLOCK_N keys (rows of k, v, dk, dv) and query
    # tiles [start, end) pass, with q_ptrs / do_ptrs at query row `start`.
    for start_m in range(start, end, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + tl.arange(0, BLOCK_M)
        if MASKED:
            row_ok = rows < seq_q
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            # +inf makes P = exp(S - inf) = 0 on query rows past the end.
            lse = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(LSE + rows)
            delta = tl.load(DELTA + rows)
        q = q.to(DOT)
        do = do.to(DOT)
        # P^T (BLOCK_N, BLOCK_M), recomputed in base 2: exp(S - L) = exp2(qk*scale*log2e - L*log2e).
        qk_t = tl.dot(k, tl.trans(q))
        p_t = tl.math.exp2(qk_t * qk_scale - (lse * LOG2E)[None, :])
        if MASKED and CAUSAL:
            p_t = tl.where(rows[None, :] + diag >= offs_n[:, None], p_t, 0.0)
        dv = tl.dot(p_t.to(do_ptrs.dtype.element_ty).to(DOT), do, dv)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q_ptrs.dtype.element_ty).to(DOT), q, dk)
        q_ptrs += BLOCK_M * stride_qm
        do_ptrs += BLOCK_M * stride_dom
    return dk, dv


# dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dK = scale * dS^T Q
# (P = exp(scale * Q K^T - L), masked, recomputed; delta from the preprocess kernel.)
@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                          stride_qb, stride_qh, stride_qm,
                          stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          stride_dob, stride_doh, stride_dom,
                          stride_dkb, stride_dkh, stride_dkn,
                          stride_dvb, stride_dvh, stride_dvn,
                          n_heads, seq_q, seq_k, scale, qk_scale,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          CAUSAL: tl.constexpr, INTERPRET: tl.constexpr):
    num_n = tl.cdiv(seq_k, BLOCK_N)
    bh = tl.program_id(0) // num_n
    start_n = tl.program_id(0) % num_n * BLOCK_N
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    DOT: tl.constexpr = tl.float32 if INTERPRET else Q.dtype.element_ty
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    K += b * stride_kb + h * stride_kh + start_n * stride_kn.to(tl.int64)
    V += b * stride_vb + h * stride_vh + start_n * stride_vn.to(tl.int64)
    DK += b * stride_dkb + h * stride_dkh + start_n * stride_dkn.to(tl.int64)
    DV += b * stride_dvb + h * stride_dvh + start_n * stride_dvn.to(tl.int64)
    LSE += bh.to(tl.int64) * seq_q
    DELTA += bh.to(tl.int64) * seq_q
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n[:, None] < seq_k
    # K and V stay on chip for the whole sweep. Keys past the end load as 0; their dk/dv
    # rows are garbage that is never stored, and other rows never read them.
    k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :], mask=col_ok, other=0.0).to(DOT)
    v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :], mask=col_ok, other=0.0).to(DOT)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # Query tiles (aligned to BLOCK_M): [start, mid) straddle the diagonal, [mid, full_end)
    # see every key of this tile, [full_end, seq_q) is the ragged last tile. Query i sees
    # key j iff i >= j - diag, so rows before start_n - diag see none of these keys.
    diag = seq_k - seq_q
    if CAUSAL:
        start = tl.maximum(start_n - diag, 0) // BLOCK_M * BLOCK_M
        first_full = start_n + BLOCK_N - 1 - diag  # first row that sees the whole key tile
        mid = start + tl.cdiv(tl.maximum(first_full - start, 0), BLOCK_M) * BLOCK_M
    else:
        start = 0
        mid = 0
    full_end = mid + tl.maximum(seq_q - mid, 0) // BLOCK_M * BLOCK_M
    q_ptrs = Q + tl.arange(0, BLOCK_M)[:, None] * stride_qm + offs_d[None, :]
    do_ptrs = DO + tl.arange(0, BLOCK_M)[:, None] * stride_dom + offs_d[None, :]
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v,
                                  q_ptrs + start * stride_qm.to(tl.int64), do_ptrs + start * stride_dom.to(tl.int64),
                                  LSE, DELTA, stride_qm, stride_dom, offs_n,
                                  start, tl.minimum(mid, seq_q), seq_q, diag, qk_scale, BLOCK_M, CAUSAL, True, DOT)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v,
                                  q_ptrs + mid * stride_qm.to(tl.int64), do_ptrs + mid * stride_dom.to(tl.int64),
                                  LSE, DELTA, stride_qm, stride_dom, offs_n,
                                  mid, full_end, seq_q, diag, qk_scale, BLOCK_M, CAUSAL, False, DOT)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v,
                                  q_ptrs + full_end * stride_qm.to(tl.int64),
                                  do_ptrs + full_end * stride_dom.to(tl.int64),
                                  LSE, DELTA, stride_qm, stride_dom, offs_n,
                                  full_end, seq_q, seq_q, diag, qk_scale, BLOCK_M, False, True, DOT)

    tl.store(DK + cols[:, None] * stride_dkn + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=col_ok)
    tl.store(DV + cols[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=col_ok)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                       start, end, seq_k, diag, qk_scale,
                       BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, DOT: tl.constexpr):
    # Key tiles [start, end), with k_ptrs / v_ptrs at key row `start`.
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_ptrs, mask=cols[:, None] < seq_k, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < seq_k, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        k = k.to(DOT)
        qk = tl.dot(q, tl.trans(k))
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        if MASKED:
            # Keys past the end load as 0 and would get P = exp(-L) > 0: mask them too.
            keep = cols[None, :] < seq_k
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v.to(DOT)))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k_ptrs.dtype.element_ty).to(DOT), k, dq)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return dq


# dP = dO V^T,  dS = P * (dP - delta),  dQ = scale * dS K
# (a second pass over the keys, so that dQ needs no atomic adds across key tiles.)
@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                        stride_qb, stride_qh, stride_qm,
                        stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn,
                        stride_dob, stride_doh, stride_dom,
                        stride_dqb, stride_dqh, stride_dqm,
                        n_heads, seq_q, seq_k, scale, qk_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        CAUSAL: tl.constexpr, INTERPRET: tl.constexpr):
    num_m = tl.cdiv(seq_q, BLOCK_M)
    bh = tl.program_id(0) // num_m
    start_m = (num_m - 1 - tl.program_id(0) % num_m) * BLOCK_M  # longest (last) query tiles first
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    DOT: tl.constexpr = tl.float32 if INTERPRET else Q.dtype.element_ty
    Q += b * stride_qb + h * stride_qh + start_m * stride_qm.to(tl.int64)
    DO += b * stride_dob + h * stride_doh + start_m * stride_dom.to(tl.int64)
    DQ += b * stride_dqb + h * stride_dqh + start_m * stride_dqm.to(tl.int64)
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < seq_q
    q = tl.load(Q + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok, other=0.0).to(DOT)
    do = tl.load(DO + rows[:, None] * stride_dom + offs_d[None, :], mask=row_ok, other=0.0).to(DOT)
    # +inf makes P = 0 on query rows past the end (their dq is never stored anyway).
    lse2 = tl.load(LSE + bh.to(tl.int64) * seq_q + offs_m, mask=offs_m < seq_q, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + bh.to(tl.int64) * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # The forward's split: key tiles [0, full_end) are unmasked, [full_end, end) masked.
    diag = seq_k - seq_q
    if CAUSAL:
        full_end = (start_m + diag + 1) // BLOCK_N * BLOCK_N
        end = tl.minimum(start_m + BLOCK_M + diag, seq_k)
    else:
        full_end = seq_k // BLOCK_N * BLOCK_N
        end = seq_k
    k_ptrs = K + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :]
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                            0, full_end, seq_k, diag, qk_scale, BLOCK_N, CAUSAL, False, DOT)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta,
                            k_ptrs + full_end * stride_kn.to(tl.int64), v_ptrs + full_end * stride_vn.to(tl.int64),
                            stride_kn, stride_vn, offs_m, offs_n,
                            full_end, end, seq_k, diag, qk_scale, BLOCK_N, CAUSAL, True, DOT)
    tl.store(DQ + rows[:, None] * stride_dqm + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=row_ok)


# ----------------------------------------------------------------------------------------
# Launch configurations: the one place they are chosen
# ----------------------------------------------------------------------------------------

KERNELS = ("fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq")


def _launch_config(kernel, head_dim, dtype, interpret=INTERPRET):
    """Launch(constexprs={BLOCK_M, BLOCK_N}, num_warps, num_stages) for one of KERNELS.
    BLOCK_M tiles the queries and BLOCK_N the keys: a bwd_dkdv program owns BLOCK_N keys and
    sweeps the queries BLOCK_M at a time, a bwd_dq program the other way round.

    One family of GPU tiles for every NVIDIA GPU from sm_80 on. Each of them compiles for
    sm_80 and sm_90 without register spills, with at most 96 KB of shared memory, so it also
    fits the 99 KB of consumer parts (sm_86/89/120); on sm_90 the dots become wgmma
    (HGMMA). Every GPU configuration this returns is registered below for
    ``python -m gpt2_kernels.sass``. Larger tiles that would suit sm_90 alone (e.g. 128x128
    forward tiles) spill on sm_80, so they are not used.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {KERNELS}")

    def launch(block_m, block_n, num_warps, num_stages):
        tiles = {"BLOCK_M": block_m} if kernel == "bwd_preprocess" else {"BLOCK_M": block_m, "BLOCK_N": block_n}
        return Launch(tiles, num_warps, num_stages)

    if interpret:
        # Small, unequal tiles: the tests' short sequences then cross several tiles, the
        # diagonal falls inside tiles in every way, and BLOCK_M != BLOCK_N is exercised.
        return launch(*{"fwd": (32, 16, 4, 1), "bwd_preprocess": (32, 0, 4, 1),
                        "bwd_dkdv": (16, 32, 4, 1), "bwd_dq": (32, 16, 4, 1)}[kernel])
    big = head_dim == 128
    if kernel == "bwd_preprocess":
        # Streams O and dO once: 128 rows (64 rows at D=128) of fp32 products per program.
        return launch(64 if big else 128, 0, 4, 1)
    if dtype == torch.float32:
        # TF32 operands are twice the bytes of 16-bit ones: half the key (or query) tile.
        return launch(*{"fwd": (64, 16 if big else 32, 4, 2),
                        "bwd_dkdv": (16, 32 if big else 64, 4, 2),
                        "bwd_dq": (64, 16 if big else 32, 4, 2)}[kernel])
    # fp16 / bf16. 8 warps = two warpgroups of 64 accumulator rows each for wgmma. On sm_80 a
    # warp's mma.sync B operand (K^T, V) spans the whole key tile, so D=128 halves BLOCK_N
    # to stay within 255 registers.
    return launch(*{"fwd": (128, 32 if big else 64, 8, 3),
                    "bwd_dkdv": (16 if big else 32, 128, 8, 3),
                    "bwd_dq": (128, 32 if big else 64, 8, 2 if big else 3)}[kernel])


_JIT = {"fwd": _attn_fwd_kernel, "bwd_preprocess": _attn_bwd_preprocess_kernel,
        "bwd_dkdv": _attn_bwd_dkdv_kernel, "bwd_dq": _attn_bwd_dq_kernel}


@registry.configs_of("attention_fa2")
def _compile_configs():
    # Every GPU launch but the shared preprocess kernel's (gpt2_kernels.attention registers those).
    # The launchers hand the kernels strides that are multiples of 16, so they are declared so.
    types = {"LSE": "*fp32", "DELTA": "*fp32", "scale": "fp32", "qk_scale": "fp32"}
    for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
        fn = _JIT[kernel]
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for head_dim in (HEAD_DIMS if dtype != torch.float32 else (64,)):
                cfg = _launch_config(kernel, head_dim, dtype, interpret=False)
                m, n = cfg.constexprs["BLOCK_M"], cfg.constexprs["BLOCK_N"]
                for causal in (True, False):
                    label = f"fa2 {kernel} D={head_dim} {TRITON_TYPE[dtype]} {'causal' if causal else 'full'} {m}x{n}"
                    yield registry.CompileConfig(
                        fn, "attention_fa2", label, TRITON_TYPE[dtype],
                        {"HEAD_DIM": head_dim, **cfg.constexprs, "CAUSAL": causal, "INTERPRET": False},
                        cfg.num_warps, cfg.num_stages, types={k: t for k, t in types.items() if k in fn.arg_names},
                        divisible_by_16=tuple(a for a in fn.arg_names if a.startswith("stride_")),
                        tile=(n, m) if kernel == "bwd_dkdv" else (m, n))


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------


def _attention_fwd(q, k, v, causal, scale):
    q, k, v = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    o = torch.empty((B, H, Sq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
    cfg = _launch_config("fwd", D, q.dtype)
    grid = (triton.cdiv(Sq, cfg.constexprs["BLOCK_M"]) * B * H,)
    with device_guard(q):
        _attn_fwd_kernel[grid](
            q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            H, Sq, Sk, scale * LOG2E.value,
            HEAD_DIM=D, CAUSAL=causal, INTERPRET=INTERPRET, **cfg.constexprs,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return o, lse


def _attention_bwd(do, q, k, v, o, lse, causal, scale):
    q, k, v, o, do = (_kernel_layout(t) for t in (q, k, v, o, do))
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    dq = torch.empty((B, H, Sq, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, Sk, D), dtype=k.dtype, device=q.device)
    dv = torch.empty((B, H, Sk, D), dtype=v.dtype, device=q.device)
    delta = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
    with device_guard(q):
        cfg = _launch_config("bwd_preprocess", D, q.dtype)
        _attn_bwd_preprocess_kernel[(triton.cdiv(Sq, cfg.constexprs["BLOCK_M"]) * B * H,)](
            # gpt2_kernels.attention's preprocess: with rows of Sq floats (stride_stat = Sq) its
            # copy of lse lands on lse itself, and delta comes out as this backward reads it.
            o, do, lse, lse, delta, *_strides(o), *_strides(do), Sq, H, Sq,
            HEAD_DIM=D, **cfg.constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        cfg = _launch_config("bwd_dkdv", D, q.dtype)
        _attn_bwd_dkdv_kernel[(triton.cdiv(Sk, cfg.constexprs["BLOCK_N"]) * B * H,)](
            q, k, v, do, lse, delta, dk, dv,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
            H, Sq, Sk, scale, scale * LOG2E.value,
            HEAD_DIM=D, CAUSAL=causal, INTERPRET=INTERPRET, **cfg.constexprs,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        cfg = _launch_config("bwd_dq", D, q.dtype)
        _attn_bwd_dq_kernel[(triton.cdiv(Sq, cfg.constexprs["BLOCK_M"]) * B * H,)](
            q, k, v, do, lse, delta, dq,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
            H, Sq, Sk, scale, scale * LOG2E.value,
            HEAD_DIM=D, CAUSAL=causal, INTERPRET=INTERPRET, **cfg.constexprs,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# The registered op and its autograd
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("gpt2_kernels::attention_fa2_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _attention_fwd(q, k, v, causal, scale)


@_attention_fwd_op.register_fake
def _(q, k, v, causal, scale):
    B, H, Sq, D = q.shape
    return q.new_empty((B, H, Sq, D)), q.new_empty((B, H, Sq), dtype=torch.float32)


@torch.library.custom_op("gpt2_kernels::attention_fa2_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, causal: bool, scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _attention_bwd(do, q, k, v, o, lse, causal, scale)


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@workspace_of(_attention_fwd_op)
def _(q, k, v, causal, scale):
    return _copies_bytes(q, k, v)


@workspace_of(_attention_bwd_op)
def _(do, q, k, v, o, lse, causal, scale):
    B, H, Sq, _ = q.shape
    return B * H * Sq * 4 + _copies_bytes(q, k, v, o, do)  # delta, any layout copies


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, dlse):
    # lse is an internal output (the public function never returns it): no gradient flows in.
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------


def attention_fa2(q, k, v, causal=True, scale=None):
    """The previous kernel: gpt2_kernels.attention's arguments (but `deterministic`: this backward
    always is), result and errors."""
    _check_inputs(q, k, v, causal, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    o, _ = _attention_fwd_op(q, k, v, bool(causal), scale)
    return o
