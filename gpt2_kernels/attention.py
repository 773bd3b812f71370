"""Fused causal attention, FlashAttention-2 style: forward, backward, and its PyTorch op.

    S = scale * Q K^T                      (Sq, Sk) scores, never stored
    P = softmax(S + M)                     M = 0 where query i may see key j, -inf elsewhere
    O = P V                                (Sq, D)
    L = logsumexp(S + M, over keys)        (Sq,) saved for the backward, fp32

With ``causal=True`` the mask is aligned to the END of the keys: query i sees keys
j <= i + (Sk - Sq). With Sq == Sk that is the usual lower triangle; with a KV cache the Sq
newest queries see every older key, so prefill, chunked prefill and one-token decode
(Sq = 1) all run on this one op. ``scale`` defaults to 1/sqrt(D).

Forward (one program per BLOCK_M query rows of one (batch, head)): Q's tile stays on chip
while K and V stream past in BLOCK_N tiles. The softmax is computed online: each row keeps
its running max m and running sum l, and when a tile raises the max by dm, the sums and the
output accumulator so far are rescaled by 2^-dm. Scores are kept in base 2 (log2(e) is
folded into the scale, so exp becomes the cheaper exp2). For causal attention, key tiles
entirely above the diagonal are never loaded, tiles entirely below it run without masks,
and only the few tiles that straddle the diagonal (or the end of the keys) pay for one.

Backward (FlashAttention-2's order; with deterministic=True no atomics, so results are bitwise
reproducible):

    delta_i = sum_d dO_id O_id            (= sum_j P_ij dP_ij)       preprocess kernel
    dV = P^T dO        dK = scale * dS^T Q                           one program per key tile
    dP = dO V^T        dS = P * (dP - delta)
    dQ = scale * dS K                                                one program per query tile

P is recomputed from Q, K and the saved L (P = exp(S - L)), never stored. dK/dV programs
walk the query tiles and dQ programs walk the key tiles, so every output tile is written by
exactly one program.

Limits and numerics:
- q (B, H, Sq, D); k, v (B, H, Sk, D); D in {16, 32, 64, 128}; any Sq, Sk >= 1, with
  Sq <= Sk when causal (without the mask any Sq, Sk are fine).
- fp16, bf16 and fp32, q, k, v sharing one; the output has q's dtype. All accumulation
  (scores, softmax statistics, O, dQ, dK, dV) is fp32. In fp16/bf16, P and dS are rounded to
  the input dtype before their matrix products, as in FlashAttention.
- fp32 on a GPU: ``tl.dot`` uses TF32 tensor cores by default (10-bit mantissa inputs,
  fp32 accumulation), like PyTorch with ``allow_tf32=True``; expect ~1e-3 relative error.
  Under Triton's interpreter fp32 products are exact.
- Layouts: q, k, v may be any strided views (e.g. slices of a (B, T, 3, H, D) projection)
  as long as the last dim is contiguous, every other stride is a multiple of 16 elements and
  the data is 16-byte aligned; anything else is first copied to a contiguous tensor. That
  guarantee is what lets the compiled kernels use 16-byte vector loads.
- No arbitrary masks: the causal one, and per-sequence key ranges [kv_start, kv_len) (padded
  batches; a row left with no key gives 0 and zero gradients, and its saved lse2 is +inf, so
  the backward's P is 0). ``scale`` must be a positive finite number.
- Dropout on P (``dropout_p``): O = (P * Z / (1 - p)) V with Z a keep-mask drawn in the
  kernel (``_keep``: Philox, counter = the score's (query, key) position, seed = the call's
  seed plus the head), so the backward regenerates Z instead of storing it:
      dV = (P * Z)^T dO / (1 - p),   dP = Z * (dO V^T) / (1 - p),   dS = P * (dP - delta)
  with delta = rowsum(dO * O) as before (O already holds the dropout).

Code-path switches (constexprs; each combination is its own compiled kernel):

    CAUSAL     the end-aligned causal mask; tiles above the diagonal skipped
    TMA        tensor-descriptor loads (sm_90, sm_100) instead of pointer loads
    PIPELINE   forward only: the next tile's Q K^T issued before this tile's softmax
    STATS_TMA  dK/dV only: lse and delta by TMA too
    ATOMIC_DQ  dK/dV only (deterministic=False): dQ by fp32 atomic adds, no dQ kernel
    RANGES     per-sequence key ranges (kv_start, kv_len); off: not in the code at all
    DROPOUT    dropout on P; off: not in the code at all
    INTERPRET  Triton's interpreter (operands widened to fp32 for tl.dot)
- Under torch.autocast, q, k and v are cast to autocast's dtype first, as for torch's SDPA.

Launch configurations: each kernel has a list of candidate launches per GPU family (ARCHS:
sm_90 for Hopper, sm_80 for every other GPU; see ``_candidates``), and on a GPU the first call
of a shape class times them and keeps the fastest. ``attention(..., family=80)`` forces one
family's list instead of the device's own: on Hopper, family 80 runs the same kernels with
the sm_80 tiles and pointer loads only (no TMA, no pipelined forward, no Hopper tiles), which
is the benchmark's ``triton-sm80`` line. A family newer than the device's is refused (its
tiles are sized for that generation's registers and shared memory). The family travels with
the op to its backward and is part of the tuner's key, so forced and native choices are
timed and cached apart. Under Triton's interpreter the interpreter's own candidates run
whatever is forced; the split-KV decode path (few queries, no gradient) has its own launches
and ignores it.
"""

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from gpt2_kernels import registry
from gpt2_kernels._attention_loop import _advance, _attn_fwd_inner, _keep, _load_rows, visible_keys
from gpt2_kernels._common import (HEAD_DIMS, INTERPRET, TRITON_TYPE, Launch, arch_family, autocast_dtype, cast_floats,
                                  check_qkv, check_runnable, device_guard, nbytes, workspace_of)
from gpt2_kernels.decode_attention import MAX_QUERIES as DECODE_MAX_QUERIES, MIN_KEYS as DECODE_MIN_KEYS, decode_attention
from gpt2_kernels.tuner import Tuner

# Constants the kernels read must be tl.constexpr; the host reads them as LOG2E.value.
LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * log2(e))
LN2 = tl.constexpr(0.6931471805599453)  # ln(2) = 1 / log2(e)

# A note on INTERPRET, which every kernel takes: Triton's interpreter hands bf16 tiles to
# tl.dot as raw 16-bit integers, so there the matrix-product operands are widened to fp32
# (exact: every fp16/bf16 value is an fp32 value), after any rounding to the storage dtype.
# On a GPU the operands stay in their storage dtype, which is what the tensor cores consume,
# and the `.to(DOT)` casts below are no-ops.


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------


@triton.jit
def _key_range(KV_START, KV_LEN, b, seq_k, RANGES: tl.constexpr):
    """Batch row b's keys [lo, hi): its kv_start and kv_len clamped to [0, seq_k] with RANGES,
    else all of them."""
    lo = 0
    hi = seq_k
    if RANGES:
        lo = tl.maximum(tl.load(KV_START + b), 0)
        hi = tl.minimum(tl.load(KV_LEN + b), seq_k)
    return lo, hi


@triton.jit
def _key_tiles(start_m, seq_q, seq_k, lo, hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, RANGES: tl.constexpr):
    """The key tiles a query tile [start_m, start_m + BLOCK_M) sweeps, as three runs: [first,
    head_end) masked (the tile holding the sequence's first key lo, when lo is not on a tile
    boundary), [first_full, full_end) seen whole by every row, [tail, end) masked (the causal
    diagonal and the last key hi - 1). Tiles before lo or from `end` on are skipped, not masked.
    Without RANGES (lo = 0, hi = seq_k) the first run is empty and the others are the plain
    causal (or full) split."""
    diag = seq_k - seq_q
    if CAUSAL:
        full_end = (start_m + diag + 1) // BLOCK_N * BLOCK_N
        end = tl.minimum(start_m + BLOCK_M + diag, seq_k)
    else:
        full_end = seq_k // BLOCK_N * BLOCK_N
        end = seq_k
    if RANGES:
        end = tl.minimum(end, hi)
        first = lo // BLOCK_N * BLOCK_N
        first_full = tl.cdiv(lo, BLOCK_N) * BLOCK_N
        head_end = tl.minimum(first_full, end)
        full_end = tl.maximum(tl.minimum(full_end, hi // BLOCK_N * BLOCK_N), first_full)
        tail = tl.maximum(full_end, head_end)
    else:
        first = 0
        head_end = 0
        first_full = 0
        tail = full_end
    return first, head_end, first_full, full_end, tail, end


# The sweep over key tiles, _attn_fwd_inner, is in gpt2_kernels/_attention_loop.py: the decode
# kernel runs the same loop.
@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, KV_START, KV_LEN,
                     stride_qb, stride_qh, stride_qm,
                     stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn,
                     stride_ob, stride_oh, stride_om,
                     n_heads, seq_q, seq_k, qk_scale, seed, dropout_p,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                     TMA: tl.constexpr, PIPELINE: tl.constexpr, RANGES: tl.constexpr, DROPOUT: tl.constexpr,
                     INTERPRET: tl.constexpr):
    # A 1-D grid of (batch*head) x query tiles. Within a head the tiles run last-first: under
    # the causal mask the last query tiles have the most keys, and starting the longest
    # programs first keeps the GPU's tail short.
    num_m = tl.cdiv(seq_q, BLOCK_M)
    bh = tl.program_id(0) // num_m
    start_m = (num_m - 1 - tl.program_id(0) % num_m) * BLOCK_M
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    DTYPE: tl.constexpr = Q.dtype.element_ty
    DOT: tl.constexpr = tl.float32 if INTERPRET else DTYPE
    rows = tl.arange(0, BLOCK_M)
    offs_m = start_m + rows
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < seq_q
    # This head's matrices. The scalar bases carry the 64-bit offsets; per-element offsets
    # stay small 32-bit numbers.
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    if TMA:
        Q = tl.make_tensor_descriptor(Q, [seq_q, HEAD_DIM], [stride_qm, 1], [BLOCK_M, HEAD_DIM])
        K = tl.make_tensor_descriptor(K, [seq_k, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM])
        V = tl.make_tensor_descriptor(V, [seq_k, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM])
        O = tl.make_tensor_descriptor(O, [seq_q, HEAD_DIM], [stride_om, 1], [BLOCK_M, HEAD_DIM])
        q = Q.load([start_m, 0])
    else:
        Q += start_m * stride_qm.to(tl.int64)
        O += start_m * stride_om.to(tl.int64)
        q = tl.load(Q + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok, other=0.0)
        K += tl.arange(0, BLOCK_N)[:, None] * stride_kn + offs_d[None, :]
        V += tl.arange(0, BLOCK_N)[:, None] * stride_vn + offs_d[None, :]
    q = q.to(DOT)
    lo, hi = _key_range(KV_START, KV_LEN, b, seq_k, RANGES)  # this sequence's keys
    first, head_end, first_full, full_end, tail, end = _key_tiles(start_m, seq_q, seq_k, lo, hi, BLOCK_M, BLOCK_N,
                                                                  CAUSAL, RANGES)
    qk = 0.0
    if PIPELINE:
        qk = tl.dot(q, tl.trans(K.load([first, 0]).to(DOT)))
    seed = seed + bh  # each head its own stream of the dropout draws

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # The runs of _key_tiles. Without RANGES the first is empty, key 0 is in the first tile
    # swept and every row sees it, so no row's max is still -inf after it (no -inf - -inf =
    # NaN in the rescaling); with RANGES the masked runs guard against rows that see nothing.
    diag = seq_k - seq_q
    if RANGES:
        acc, l_i, m_i, qk = _attn_fwd_inner(acc, l_i, m_i, qk, q, K, V, stride_kn, stride_vn, offs_m, first, head_end,
                                            lo, hi, diag, qk_scale, seed, dropout_p, seq_k,
                                            BLOCK_N, CAUSAL, True, TMA, PIPELINE, RANGES, DROPOUT, DOT, RANGES)
    acc, l_i, m_i, qk = _attn_fwd_inner(acc, l_i, m_i, qk, q, K, V, stride_kn, stride_vn, offs_m, first_full, full_end,
                                        lo, hi, diag, qk_scale, seed, dropout_p, seq_k,
                                        BLOCK_N, CAUSAL, False, TMA, PIPELINE, RANGES, DROPOUT, DOT, RANGES)
    acc, l_i, m_i, qk = _attn_fwd_inner(acc, l_i, m_i, qk, q, K, V, stride_kn, stride_vn, offs_m, tail, end,
                                        lo, hi, diag, qk_scale, seed, dropout_p, seq_k,
                                        BLOCK_N, CAUSAL, True, TMA, PIPELINE, RANGES, DROPOUT, DOT, RANGES)

    # The logsumexp stays in base 2 (m and log2(l) are), so the backward recomputes
    # P = exp2(s - lse2) with no conversion. A row that saw no key (RANGES only) gets output
    # 0 and lse2 = +inf, which makes the backward's P, and so its gradients, 0.
    if RANGES:
        seen = l_i > 0
        l_i = tl.where(seen, l_i, 1.0)
        lse2 = tl.where(seen, m_i + tl.math.log2(l_i), float("inf"))
    else:
        lse2 = m_i + tl.math.log2(l_i)
    tl.store(LSE + bh.to(tl.int64) * seq_q + offs_m, lse2, mask=offs_m < seq_q)
    if DROPOUT:
        l_i = l_i * (1.0 - dropout_p)  # the kept probabilities are scaled by 1 / (1 - p)
    o = (acc * (1.0 / l_i)[:, None]).to(DTYPE)
    if TMA:
        O.store([start_m, 0], o)
    else:
        tl.store(O + rows[:, None] * stride_om + offs_d[None, :], o, mask=row_ok)


# ----------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------


# delta_i = sum_d dO_id * O_id, which equals sum_j P_ij dP_ij (since dP = dO V^T and O = P V):
# the row term of the softmax derivative dS = P * (dP - delta). It is written, with a copy of
# the forward's lse2, into rows of `stride_stat` (a multiple of 16) floats per head, so that
# the dK/dV kernel can read both by TMA (a descriptor's rows must start 16-byte aligned).
@triton.jit
def _attn_bwd_preprocess_kernel(O, DO, LSE, LSE_PAD, DELTA,
                                stride_ob, stride_oh, stride_om,
                                stride_dob, stride_doh, stride_dom,
                                stride_stat, n_heads, seq_q,
                                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    num_m = tl.cdiv(seq_q, BLOCK_M)
    bh = tl.program_id(0) // num_m
    start_m = tl.program_id(0) % num_m * BLOCK_M
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    O += b * stride_ob + h * stride_oh + start_m * stride_om.to(tl.int64)
    DO += b * stride_dob + h * stride_doh + start_m * stride_dom.to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = start_m + rows < seq_q
    o = tl.load(O + rows[:, None] * stride_om + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dom + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh.to(tl.int64) * stride_stat + start_m + rows, delta, mask=row_ok)
    lse2 = tl.load(LSE + bh.to(tl.int64) * seq_q + start_m + rows, mask=row_ok)
    tl.store(LSE_PAD + bh.to(tl.int64) * stride_stat + start_m + rows, lse2, mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQ_ACC, stride_qm, stride_dom, offs_n,
                         start, end, seq_q, diag, qk_scale, scale, key_ok, seed, dropout_p, seq_k, key_start,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                         MASKED: tl.constexpr, TMA: tl.constexpr, STATS_TMA: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                         RANGES: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr):
    # The transposed view: this program owns BLOCK_N keys (rows of k, v, dk, dv) and query
    # tiles [start, end) pass. Q and DO are tensor descriptors (TMA), or pointers to the tile
    # at query row 0; LSE and DELTA are descriptors with STATS_TMA, else pointers. ATOMIC_DQ
    # also adds this key tile's share of dQ = scale * dS K into the fp32 DQ_ACC (a pointer
    # to row 0).
    offs_d = tl.arange(0, HEAD_DIM)
    Q, DO = _advance(Q, DO, start, stride_qm.to(tl.int64), stride_dom.to(tl.int64), TMA)
    if ATOMIC_DQ:
        DQ_ACC += start * HEAD_DIM
    for start_m in range(start, end, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < seq_q
        q = _load_rows(Q, start_m, rows, seq_q, TMA, MASKED)
        do = _load_rows(DO, start_m, rows, seq_q, TMA, MASKED)
        if STATS_TMA:
            # Rows past the end read as 0, and so do their q and dO rows, which zeroes
            # their share of dV (P^T dO) and dK (dS = P * (dO V^T - delta)).
            lse2 = LSE.load([0, start_m]).reshape([BLOCK_M])
            delta = DELTA.load([0, start_m]).reshape([BLOCK_M])
        elif MASKED:
            # +inf makes P = exp2(s - inf) = 0 on query rows past the end.
            lse2 = tl.load(LSE + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
        else:
            lse2 = tl.load(LSE + rows)
            delta = tl.load(DELTA + rows)
        # P^T (BLOCK_N, BLOCK_M), recomputed in base 2 from the forward's base-2 logsumexp.
        qk_t = tl.dot(k, tl.trans(q.to(DOT)))
        p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
        if MASKED and CAUSAL:
            p_t = tl.where(rows[None, :] + diag >= offs_n[:, None], p_t, 0.0)
        if RANGES:
            # Keys outside [lo, hi): P = 0 (key_ok is (BLOCK_N, 1), one flag per key row).
            p_t = tl.where(key_ok, p_t, 0.0)
        # dV before dP = dO V^T: in the other order Triton 3.6's sm_80 32x128 tile holds one
        # more tile live and spills 2 words (255 registers against 194).
        if DROPOUT:
            # O used P * Z / (1 - p): dV = (P * Z)^T dO / (1 - p) and dP = Z * (dO V^T) / (1 - p).
            # The mask's tile is transposed here: (keys, queries).
            keep_t = tl.trans(_keep(seed, rows, key_start, seq_k, dropout_p, BLOCK_N))
            pd_t = tl.where(keep_t, p_t, 0.0) * (1.0 / (1.0 - dropout_p))
            dv = tl.dot(pd_t.to(do.dtype).to(DOT), do.to(DOT), dv)
        else:
            dv = tl.dot(p_t.to(do.dtype).to(DOT), do.to(DOT), dv)
        dp_t = tl.dot(v, tl.trans(do.to(DOT)))
        if DROPOUT:
            dp_t = tl.where(keep_t, dp_t, 0.0) * (1.0 / (1.0 - dropout_p))
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype).to(DOT)
        dk = tl.dot(ds_t, q.to(DOT), dk)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_t), k) * scale
            dq_ptrs = DQ_ACC + tl.arange(0, BLOCK_M)[:, None] * HEAD_DIM + offs_d[None, :]
            if MASKED:
                tl.atomic_add(dq_ptrs, dq, mask=row_ok[:, None], sem="relaxed")
            else:
                tl.atomic_add(dq_ptrs, dq, sem="relaxed")
            DQ_ACC += BLOCK_M * HEAD_DIM
        Q, DO = _advance(Q, DO, BLOCK_M, stride_qm, stride_dom, TMA)
    return dk, dv


# dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta),  dK = scale * dS^T Q
# (P = exp2(s - lse2), masked, recomputed; delta from the preprocess kernel.)
# With ATOMIC_DQ, also dQ += scale * dS K into an fp32 buffer: 5 matrix products a tile, and
# no dQ kernel, but the order of the additions varies from run to run.
@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, KV_START, KV_LEN,
                          stride_qb, stride_qh, stride_qm,
                          stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          stride_dob, stride_doh, stride_dom,
                          stride_dkb, stride_dkh, stride_dkn,
                          stride_dvb, stride_dvh, stride_dvn,
                          stride_stat, n_heads, seq_q, seq_k, scale, qk_scale, seed, dropout_p,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                          TMA: tl.constexpr, STATS_TMA: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                          RANGES: tl.constexpr, DROPOUT: tl.constexpr, INTERPRET: tl.constexpr):
    num_n = tl.cdiv(seq_k, BLOCK_N)
    bh = tl.program_id(0) // num_n
    start_n = tl.program_id(0) % num_n * BLOCK_N
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    DOT: tl.constexpr = tl.float32 if INTERPRET else Q.dtype.element_ty
    Q += b * stride_qb + h * stride_qh
    DO += b * stride_dob + h * stride_doh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DK += b * stride_dkb + h * stride_dkh + start_n * stride_dkn.to(tl.int64)
    DV += b * stride_dvb + h * stride_dvh + start_n * stride_dvn.to(tl.int64)
    LSE += bh.to(tl.int64) * stride_stat
    DELTA += bh.to(tl.int64) * stride_stat
    DQ_ACC += bh.to(tl.int64) * seq_q * HEAD_DIM  # contiguous (B, H, seq_q, HEAD_DIM), fp32
    cols = tl.arange(0, BLOCK_N)
    offs_n = start_n + cols
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n[:, None] < seq_k
    # K and V stay on chip for the whole sweep. Keys past the end load as 0; their dk/dv
    # rows are garbage that is never stored, and other rows never read them.
    if TMA:
        k = tl.make_tensor_descriptor(K, [seq_k, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM]).load([start_n, 0])
        v = tl.make_tensor_descriptor(V, [seq_k, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM]).load([start_n, 0])
        Q = tl.make_tensor_descriptor(Q, [seq_q, HEAD_DIM], [stride_qm, 1], [BLOCK_M, HEAD_DIM])
        DO = tl.make_tensor_descriptor(DO, [seq_q, HEAD_DIM], [stride_dom, 1], [BLOCK_M, HEAD_DIM])
        if STATS_TMA:
            # Which is cheaper per iteration depends on the Triton version (3.6 reads the
            # pointer loads one float at a time, 3.9 stages them in shared memory): the
            # candidates try both.
            LSE = tl.make_tensor_descriptor(LSE, [1, seq_q], [stride_stat, 1], [1, BLOCK_M])
            DELTA = tl.make_tensor_descriptor(DELTA, [1, seq_q], [stride_stat, 1], [1, BLOCK_M])
    else:
        K += start_n * stride_kn.to(tl.int64)
        V += start_n * stride_vn.to(tl.int64)
        k = tl.load(K + cols[:, None] * stride_kn + offs_d[None, :], mask=col_ok, other=0.0)
        v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :], mask=col_ok, other=0.0)
        Q += tl.arange(0, BLOCK_M)[:, None] * stride_qm + offs_d[None, :]
        DO += tl.arange(0, BLOCK_M)[:, None] * stride_dom + offs_d[None, :]
    k = k.to(DOT)
    v = v.to(DOT)
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
    mid = tl.minimum(mid, seq_q)
    full_end = mid + tl.maximum(seq_q - mid, 0) // BLOCK_M * BLOCK_M
    q_end = seq_q
    key_ok = col_ok
    if RANGES:
        # This sequence's keys [lo, hi): a key tile wholly outside them sweeps no query (its dK
        # and dV are 0), one across its edges masks P by key.
        lo, hi = _key_range(KV_START, KV_LEN, b, seq_k, RANGES)
        key_ok = (offs_n[:, None] >= lo) & (offs_n[:, None] < hi)
        if (start_n >= hi) | (start_n + BLOCK_N <= lo):
            start = 0
            mid = 0
            full_end = 0
            q_end = 0
    seed = seed + bh
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQ_ACC, stride_qm, stride_dom, offs_n,
                                  start, mid, seq_q, diag, qk_scale, scale, key_ok, seed, dropout_p, seq_k, start_n,
                                  BLOCK_M, BLOCK_N, HEAD_DIM, CAUSAL, True, TMA, STATS_TMA, ATOMIC_DQ, RANGES, DROPOUT, DOT)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQ_ACC, stride_qm, stride_dom, offs_n,
                                  mid, full_end, seq_q, diag, qk_scale, scale, key_ok, seed, dropout_p, seq_k, start_n,
                                  BLOCK_M, BLOCK_N, HEAD_DIM, CAUSAL, False, TMA, STATS_TMA, ATOMIC_DQ, RANGES, DROPOUT, DOT)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQ_ACC, stride_qm, stride_dom, offs_n,
                                  full_end, q_end, seq_q, diag, qk_scale, scale, key_ok, seed, dropout_p, seq_k, start_n,
                                  BLOCK_M, BLOCK_N, HEAD_DIM, False, True, TMA, STATS_TMA, ATOMIC_DQ, RANGES, DROPOUT, DOT)

    tl.store(DK + cols[:, None] * stride_dkn + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=col_ok)
    tl.store(DV + cols[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=col_ok)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, start, end, lo, hi, diag,
                       qk_scale, seed, dropout_p, seq_k, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                       MASKED: tl.constexpr, TMA: tl.constexpr, RANGES: tl.constexpr, DROPOUT: tl.constexpr,
                       DOT: tl.constexpr):
    # Key tiles [start, end); K and V as in _attn_fwd_inner.
    K, V = _advance(K, V, start, stride_kn.to(tl.int64), stride_vn.to(tl.int64), TMA)
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k = _load_rows(K, start_n, cols, hi, TMA, MASKED)
        v = _load_rows(V, start_n, cols, hi, TMA, MASKED)
        qk = tl.dot(q, tl.trans(k.to(DOT)))
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        if MASKED:
            # Keys past the end load as 0 and would get P = exp2(-lse2) > 0: mask them too.
            p = tl.where(visible_keys(offs_m[:, None], cols[None, :], lo, hi, diag, CAUSAL, RANGES), p, 0.0)
        dp = tl.dot(do, tl.trans(v.to(DOT)))
        if DROPOUT:
            dp = tl.where(_keep(seed, offs_m, start_n, seq_k, dropout_p, BLOCK_N), dp, 0.0) * (1.0 / (1.0 - dropout_p))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype).to(DOT), k.to(DOT), dq)
        K, V = _advance(K, V, BLOCK_N, stride_kn, stride_vn, TMA)
    return dq


# dP = dO V^T,  dS = P * (dP - delta),  dQ = scale * dS K
# (a second pass over the keys, so that dQ needs no atomic adds across key tiles.)
@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, KV_START, KV_LEN,
                        stride_qb, stride_qh, stride_qm,
                        stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn,
                        stride_dob, stride_doh, stride_dom,
                        stride_dqb, stride_dqh, stride_dqm,
                        stride_stat, n_heads, seq_q, seq_k, scale, qk_scale, seed, dropout_p,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                        TMA: tl.constexpr, RANGES: tl.constexpr, DROPOUT: tl.constexpr, INTERPRET: tl.constexpr):
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
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < seq_q
    q = tl.load(Q + rows[:, None] * stride_qm + offs_d[None, :], mask=row_ok, other=0.0).to(DOT)
    do = tl.load(DO + rows[:, None] * stride_dom + offs_d[None, :], mask=row_ok, other=0.0).to(DOT)
    # +inf makes P = 0 on query rows past the end (their dq is never stored anyway).
    lse2 = tl.load(LSE + bh.to(tl.int64) * stride_stat + offs_m, mask=offs_m < seq_q, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * stride_stat + offs_m, mask=offs_m < seq_q, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if TMA:
        K = tl.make_tensor_descriptor(K, [seq_k, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM])
        V = tl.make_tensor_descriptor(V, [seq_k, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM])
    else:
        K += tl.arange(0, BLOCK_N)[:, None] * stride_kn + offs_d[None, :]
        V += tl.arange(0, BLOCK_N)[:, None] * stride_vn + offs_d[None, :]

    # The forward's runs of key tiles (_key_tiles).
    lo, hi = _key_range(KV_START, KV_LEN, b, seq_k, RANGES)
    first, head_end, first_full, full_end, tail, end = _key_tiles(start_m, seq_q, seq_k, lo, hi, BLOCK_M, BLOCK_N,
                                                                  CAUSAL, RANGES)
    diag = seq_k - seq_q
    seed = seed + bh
    if RANGES:
        dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, first, head_end, lo, hi,
                                diag, qk_scale, seed, dropout_p, seq_k, BLOCK_N, CAUSAL, True, TMA, RANGES, DROPOUT, DOT)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, first_full, full_end, lo, hi,
                            diag, qk_scale, seed, dropout_p, seq_k, BLOCK_N, CAUSAL, False, TMA, RANGES, DROPOUT, DOT)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, K, V, stride_kn, stride_vn, offs_m, tail, end, lo, hi,
                            diag, qk_scale, seed, dropout_p, seq_k, BLOCK_N, CAUSAL, True, TMA, RANGES, DROPOUT, DOT)
    tl.store(DQ + rows[:, None] * stride_dqm + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=row_ok)


# ----------------------------------------------------------------------------------------
# Launch configurations: the one place they are chosen
# ----------------------------------------------------------------------------------------

KERNELS = ("fwd", "bwd_preprocess", "bwd_dkdv", "bwd_dq")
# The families of tiles: sm_100 (data-centre Blackwell: tcgen05, tensor memory, TMA), sm_90
# (Hopper: wgmma, TMA) and everything else from sm_80 on.
ARCHS = (80, 90, 100)


def _candidates(kernel, arch, head_dim, dtype, causal, atomic_dq=False, dropout=False):
    """The launches a call may take: ``_launches``, or with dropout ``_dropout_launches`` where
    it has a list of its own."""
    if dropout and arch is not None and kernel != "bwd_preprocess":
        own = _dropout_launches(kernel, arch, head_dim, dtype, atomic_dq)
        if own:
            return own
    return _launches(kernel, arch, head_dim, dtype, causal, atomic_dq)


def _tile(kernel, block_m, block_n, num_warps, num_stages, tma=False, pipeline=False, stats_tma=False):
    """A Launch of one of KERNELS with its tile and code-path switches as constexprs."""
    cx = {"BLOCK_M": block_m}
    if kernel != "bwd_preprocess":
        cx["BLOCK_N"] = block_n
        cx["TMA"] = tma
    if kernel == "fwd":
        cx["PIPELINE"] = pipeline
    if kernel == "bwd_dkdv":
        cx["STATS_TMA"] = stats_tma
    return Launch(cx, num_warps, num_stages)


def _dropout_launches(kernel, arch, head_dim, dtype, atomic_dq=False):
    """Dropout's own candidates where the plain ones spill with it, else None. The keep-mask's
    Philox draws (four 32-bit words per 8 keys of a row, live until the tile's P is masked) take
    the registers that the plain tiles spend on size, so these tiles are smaller, have a stage
    less, or are the plain list without the launches that spill. Every one compiles with no
    spill under Triton 3.6 and 3.9 (registered at D = 64 and 128 in bf16 and D = 64 in fp32,
    with and without key ranges: ``python -m gpt2_kernels.sass --arch all --match dropout``).
    Main-loop instructions per score with dropout are ~3x the plain kernel's (the sm_90 bf16
    causal forward's 128x128 tile at D = 64: 23.2 against 7.1, Triton 3.9): the Philox rounds,
    10 multiply-high pairs per 8 keys of a row."""
    big = head_dim == 128
    launch = functools.partial(_tile, kernel)
    if dtype == torch.float32:
        if arch == 100:
            if kernel == "bwd_dkdv" and not atomic_dq and not big:
                return [launch(32, 64, 4, 2, True)]  # 64x64 spills 10 words (3.9)
            if kernel == "bwd_dq" and not big:
                return [launch(64, 64, 4, 2, True)]  # 128x32 spills 2 words (3.6)
            return None
        if arch == 80 and kernel == "bwd_dkdv":
            return [launch(16, 32, 4, 1)]  # 16x64 spills 4 words, 18 with the atomic dQ (3.6)
        if arch == 80 and kernel == "bwd_dq":
            return [launch(64, 16, 4, 2)]  # 64x32 spills 4 words (3.9)
        return None
    if arch == 80:
        # sm_80: half the plain key tile for the forward and dQ, 16 query rows for dK/dV (32 keys
        # and one stage at D = 128: 16x64 spills 2 words, 40 with the atomic dQ; at D = 64 the
        # atomic dQ's extra product takes 64 keys: 16x128 spills 2 words under 3.6). At D = 128
        # dK/dV costs ~100 instructions per score against 27 without dropout: the price of
        # fitting in registers.
        dkdv = launch(16, 32, 4, 1) if big else launch(16, 64, 4, 2) if atomic_dq else launch(16, 128, 8, 2)
        return {"fwd": [launch(128, 32, 8, 2)], "bwd_dkdv": [dkdv],
                "bwd_dq": [launch(128, 16, 8, 2) if big else launch(128, 32, 8, 3)]}[kernel]
    if arch == 90:
        # sm_90: no pipelined forward (its prefetched Q K^T tile spills 14 words at D = 64) and
        # no 64-query dK/dV; at D = 128 dK/dV takes 16 query rows by TMA only (the pointer tile
        # spills 6 words under 3.6), and with the atomic dQ 64 keys on 8 warps (the plain
        # 16x128 spills 16). dQ keeps its plain launches.
        pointer = _dropout_launches(kernel, 80, head_dim, dtype, atomic_dq)
        if kernel == "fwd":
            return [launch(128, 64 if big else 128, 8, 2, True)] + pointer
        if kernel == "bwd_dkdv" and atomic_dq:
            return [launch(16, 64, 8, 2, True)] if big else None
        if kernel == "bwd_dkdv":
            return [launch(16, 128, 8, 2, True)] if big else [launch(32, 128, 8, 3, True)] + pointer
        return None
    # sm_100: the plain lists less the launches that spill (the 4-warp pipelined 128x128
    # forward, the 128x128 and 4-warp 64x128 dK/dV, the 8-warp 128x128 dQ and at D = 128 the
    # 8-warp 128x128 forward, the 4-warp 32x128 dK/dV and the 4-warp dQ).
    if atomic_dq:
        return None
    if big:
        return {"fwd": [launch(128, 64, 4, 2, True, True)],
                "bwd_dkdv": [launch(64, 128, 8, 2, True, stats_tma=True), launch(64, 128, 8, 2, True)],
                "bwd_dq": [launch(128, 64, 8, 2, True)]}[kernel]
    return {"fwd": [launch(128, 128, 8, 2, True), launch(128, 64, 4, 2, True, True)],
            "bwd_dkdv": [launch(64, 128, 8, 2, True, stats_tma=True), launch(64, 64, 4, 2, True),
                         launch(64, 64, 4, 2, True, stats_tma=True)],
            "bwd_dq": [launch(128, 64, 4, 2, True)]}[kernel]


def _launches(kernel, arch, head_dim, dtype, causal, atomic_dq=False):
    """The ordered candidate launches (best guess first) for one of KERNELS on sm_<arch>,
    each a Launch whose constexprs hold BLOCK_M, BLOCK_N and the kernel's code-path switches.
    BLOCK_M tiles the queries and BLOCK_N the keys: a bwd_dkdv program owns BLOCK_N keys and
    sweeps the queries BLOCK_M at a time, the others the other way round. On a GPU the first
    call of each shape class measures the candidates and keeps the fastest (`_pick`); under
    Triton's interpreter (arch None) the first one runs, untimed.

    sm_90 (H100/H200): operands arrive by TMA; 8 warps are two warpgroups of 64 accumulator
    rows each for wgmma, so a 128x128 forward tile is two 64x128 HGMMAs; with PIPELINE each
    iteration issues the next tile's Q K^T before this tile's softmax. Every sm_90 candidate
    compiles with no spills and at most 227 KB of shared memory.
    sm_100 (B200/GB200): every matrix product is a tcgen05 MMA (UTCHMMA) that one thread
    issues for the whole block, accumulating in tensor memory (TMEM: 128 lanes x 512 fp32
    columns an SM) instead of registers; the softmax reads S from TMEM and writes P back
    there, where the P V MMA takes it as its A operand. Registers then hold only the
    softmax's share of S, so tiles that spill on sm_90 fit; an MMA has 64 or 128 rows, so
    every tile side that is an MMA's M is >= 64; operands arrive by TMA, fp32 too (TF32
    MMAs). The TMEM a block takes bounds the blocks per SM. Per candidate, why it should be
    fast, from ``python -m gpt2_kernels.sass --arch 100`` (main-loop instructions per score,
    Triton 3.9 / 3.6, bf16 causal at D=64 unless said):
      fwd 128x128, 4 warps, pipelined: 4 warps are the 128 TMEM lanes, one query row a
        thread, so the row max and sum need no shuffles (5.1 / 5.9); 256 TMEM columns and
        254 / 168 registers leave room for 2 blocks an SM.
      fwd 128x128, 8 warps: two warpgroups split each row; 6.5 / 7.4, and at D=128 (7.1 / 8.2)
        S and O fill the 512 TMEM columns, one block an SM.
      fwd 128x64, 4 warps, pipelined: one row a thread with half the key tile, 48 KB of
        shared memory and 128 registers (6.6 / 7.5; at D=128 7.6 / 8.6, 2 blocks an SM).
        In every forward the exps run while the tile before's P V MMA is still in flight
        (waits: no), pipelined or not; the 8-warp pipelined forward spills without the mask.
      bwd_dkdv 128x128 (queries x keys), 8 warps, statistics by TMA (8.4 / 8.7); 64x128, 4
        warps, one key row a thread (7.6 / 13.3: Triton 3.6 loads the statistics one float at
        a time, and spills with them by TMA); 64x64, 4 warps, 2 blocks an SM (11.4 / 12.1).
        D=128: 64x128, 8 warps, statistics by TMA (12.3 / 13.3) or pointers (11.2 / 26.0),
        and 32x128, 4 warps (11.5 / 17.4), whose S^T is still a 128-row MMA.
      bwd_dkdv with deterministic=False: 64x64, so the extra dQ = dS K is a 64-row tcgen05 MMA
        too (32 query rows fall back to HMMA; 64x128 at D=128 needs 576 TMEM columns): 4
        warps (16.3 / 22.1), 8 at D=128 (30.1 / 39.6; 4 spill without the mask).
      bwd_dq 128x64, 4 warps, one query row a thread, 2 blocks an SM (5.8 / 6.4; D=128 6.3 /
        6.9); 128x128 with 8 warps (6.0 / 6.8), at D=128 128x64 with 8 (9.4 / 10.3).
      fp32, one launch each: fwd 128x64, 4 warps, pipelined (6.7 / 7.9, where the sm_80/90
        fp32 tile 64x16 reads 29 / 30 on sm_100), dK/dV 64x64 (17.9 / 22.6), dQ 128x32 (10.8 /
        11.8); at D=128 128x32 unpipelined, 32x64 with 8 warps and 128x16 (the others spill).
        deterministic=False keeps the other families' fp32 dK/dV launch (HMMA dQ).
    Every sm_100 launch compiles with Triton 3.6 and 3.9 without spills, within 227 KB of
    shared memory and 512 TMEM columns. Warp-specialized loops (``tl.range(...,
    warp_specialize=True)``: load, MMA and softmax partitions) were tried and left out: the
    SASS report cannot cost a kernel split into partitions yet.
    sm_80 and every other GPU (A100, consumer parts): pointer loads (cp.async), tiles that
    fit 255 registers of mma.sync operands and 99 KB of shared memory (so sm_86/89/120 too).
    ``causal`` is part of the key; the lists are the same today. ``atomic_dq`` (bwd_dkdv with
    deterministic=False) gets one launch with a query tile small enough for the extra dQ
    product's registers.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {KERNELS}")
    big = head_dim == 128
    launch = functools.partial(_tile, kernel)

    if kernel == "bwd_preprocess":
        # Streams O and dO once: 128 rows (64 rows at D=128) of fp32 products per program. On
        # sm_100, 16-bit inputs take 128 rows on 8 warps: with 4, Triton 3.6's ptxas spills 6
        # words at D=64 (in a 56-register kernel).
        if arch is None:
            return [launch(16, 0, 4, 1)]
        if arch == 100 and dtype != torch.float32:
            return [launch(128, 0, 8, 1)]
        return [launch(64 if big else 128, 0, 4, 1)]
    if arch is None:
        # Small, unequal tiles: the tests' short sequences then cross several tiles, the
        # diagonal falls inside tiles in every way, and BLOCK_M != BLOCK_N is exercised.
        # fp16/bf16 take the sm_90 code paths (TMA descriptors, the pipelined forward) and
        # fp32 the pointer loads, so the tests run both (and deterministic=False, 16-bit,
        # descriptors for Q and dO with pointer loads of the logsumexp and delta).
        tma = dtype != torch.float32
        return [{"fwd": launch(32, 16, 4, 1, tma, tma), "bwd_dkdv": launch(16, 32, 4, 1, tma, stats_tma=tma and not atomic_dq),
                 "bwd_dq": launch(32, 16, 4, 1, tma)}[kernel]]
    if arch == 100:
        return _sm100_candidates(kernel, launch, big, dtype, atomic_dq)
    if dtype == torch.float32:
        # TF32 operands are twice the bytes of 16-bit ones: half the key (or query) tile (the
        # forward's 64x32 spills 6 words with Triton 3.9 on sm_80; 64x16 does not).
        return [{"fwd": launch(64, 16, 4, 2),
                 "bwd_dkdv": launch(16, 32 if big else 64, 4, 2),
                 "bwd_dq": launch(64, 16 if big else 32, 4, 2)}[kernel]]
    if arch == 90:
        if kernel == "bwd_dkdv" and atomic_dq:
            return [launch(16 if big else 32, 128, 8, 3, True)]
        # Measured on an H200 (2026-12-04, GPT-2 small, bf16, S=1024): the previous kernel's
        # tiles with pointer loads ran the forward in 0.100 ms against 0.191 ms for the TMA
        # 128x128 tiles below, and its 32x128 dK/dV in 0.210 ms against 0.282 ms; so those
        # tiles (the sm_80 family's, still wgmma on sm_90) are candidates here too, and the
        # tuner keeps whichever is fastest on the GPU it runs on.
        pointer = _candidates(kernel, 80, head_dim, dtype, causal)
        return {
            # 128x128 at D=128 would hold two 128x128 fp32 score tiles and the 128x128
            # accumulator: past 255 registers.
            "fwd": [launch(128, 64 if big else 128, 8, 2, True, True),
                    launch(128, 64 if big else 128, 8, 2, True, False)] + pointer,
            # dK and dV accumulators are BLOCK_N x D fp32 each: at D=128 a 64-query tile spills
            # (64x128 with 8 warps, 64x64 with 4). The logsumexp and delta by TMA, or by
            # pointers: see _attn_bwd_dkdv_kernel.
            "bwd_dkdv": ([launch(32, 128, 8, 3, True)] if big
                         else [launch(64, 128, 8, 2, True, stats_tma=True), launch(64, 128, 8, 2, True),
                               launch(32, 128, 8, 3, True)]) + pointer,
            "bwd_dq": [launch(128, 64, 8, 2, True), launch(64, 64, 4, 3, True)],
        }[kernel]
    # sm_80 family. On sm_80 a warp's mma.sync B operand (K^T, V) spans the whole key tile,
    # so D=128 halves BLOCK_N to stay within 255 registers; dK/dV at D <= 64 keeps 2 stages
    # (with 3, Triton 3.6 spills 2 words).
    return [{"fwd": launch(128, 32 if big else 64, 8, 3),
             "bwd_dkdv": launch(16 if big else 32, 128, 8, 3 if big else 2),
             "bwd_dq": launch(128, 32 if big else 64, 8, 2 if big else 3)}[kernel]]


def _sm100_candidates(kernel, launch, big, dtype, atomic_dq):
    # The sm_100 family of _candidates (see its docstring for why each tile).
    if dtype == torch.float32:
        if kernel == "bwd_dkdv" and atomic_dq:
            return [launch(16, 32 if big else 64, 4, 2)]
        # At D = 128 the pipelined forward spills (Triton 3.6) and so does dK/dV with 4 warps (3.9).
        return [{"fwd": launch(128, 32, 4, 2, True) if big else launch(128, 64, 4, 2, True, True),
                 "bwd_dkdv": launch(32, 64, 8, 2, True) if big else launch(64, 64, 4, 2, True),
                 "bwd_dq": launch(128, 16 if big else 32, 4, 2, True)}[kernel]]
    if kernel == "bwd_dkdv" and atomic_dq:
        return [launch(64, 64, 8 if big else 4, 2, True)]
    if big:
        return {"fwd": [launch(128, 128, 8, 2, True), launch(128, 64, 4, 2, True, True)],
                "bwd_dkdv": [launch(64, 128, 8, 2, True, stats_tma=True), launch(64, 128, 8, 2, True),
                             launch(32, 128, 4, 2, True)],
                "bwd_dq": [launch(128, 64, 4, 2, True), launch(128, 64, 8, 2, True)]}[kernel]
    return {"fwd": [launch(128, 128, 4, 2, True, True), launch(128, 128, 8, 2, True),
                    launch(128, 64, 4, 2, True, True)],
            "bwd_dkdv": [launch(128, 128, 8, 2, True, stats_tma=True), launch(64, 128, 4, 2, True),
                         launch(64, 64, 4, 2, True, stats_tma=True)],
            "bwd_dq": [launch(128, 64, 4, 2, True), launch(128, 128, 8, 2, True)]}[kernel]


_JIT = {"fwd": _attn_fwd_kernel, "bwd_preprocess": _attn_bwd_preprocess_kernel,
        "bwd_dkdv": _attn_bwd_dkdv_kernel, "bwd_dq": _attn_bwd_dq_kernel}


def _compile_config(kernel, arch, head_dim, dtype, causal, cfg, atomic_dq=False, variant=()):
    fn, ty, cx = _JIT[kernel], TRITON_TYPE[dtype], cfg.constexprs
    constexprs = {"HEAD_DIM": head_dim, **cx}
    if kernel == "bwd_preprocess":
        label = f"{kernel} D={head_dim} {ty} M={cx['BLOCK_M']} w{cfg.num_warps}" + (f" sm_{arch}" if arch else "")
        return registry.CompileConfig(fn, "attention", label, ty, constexprs,
                                      cfg.num_warps, cfg.num_stages, types={"LSE": "*fp32", "LSE_PAD": "*fp32",
                                                                           "DELTA": "*fp32"}, arch=arch,
                                      divisible_by_16=tuple(n for n in fn.arg_names if n.startswith("stride_")))
    constexprs.update(CAUSAL=causal, INTERPRET=False, RANGES="ranges" in variant, DROPOUT="dropout" in variant)
    if kernel == "bwd_dkdv":
        constexprs["ATOMIC_DQ"] = atomic_dq
    tile = (cx["BLOCK_N"], cx["BLOCK_M"]) if kernel == "bwd_dkdv" else (cx["BLOCK_M"], cx["BLOCK_N"])
    flags = [name.lower() for name in ("TMA", "STATS_TMA", "PIPELINE", "ATOMIC_DQ") if constexprs.get(name)]
    # The optional paths go before "causal" in the label, so that a match on "D=64 bf16 causal"
    # (the CI's set) keeps to the plain kernels.
    label = (f"{kernel} D={head_dim} {ty} {'+'.join(variant) + ' ' if variant else ''}{'causal' if causal else 'full'} "
             f"{cx['BLOCK_M']}x{cx['BLOCK_N']} w{cfg.num_warps}s{cfg.num_stages}{''.join(' ' + f for f in flags)} sm_{arch}")
    types = {"LSE": "*fp32", "DELTA": "*fp32", "DQ_ACC": "*fp32", "scale": "fp32", "qk_scale": "fp32",
             "KV_START": "*i32", "KV_LEN": "*i32", "dropout_p": "fp32"}
    return registry.CompileConfig(fn, "attention", label, ty, constexprs, cfg.num_warps, cfg.num_stages,
                                  types={n: t for n, t in types.items() if n in fn.arg_names},
                                  divisible_by_16=tuple(n for n in fn.arg_names if n.startswith("stride_")),
                                  arch=arch, tile=tile)


@registry.configs_of("attention")
def _compile_configs():
    # Every GPU launch, candidates included. The launchers hand the kernels strides that are
    # multiples of 16 (see _kernel_layout), so they are declared so, as a launch specializes them.
    # fp32 at D = 128 too on sm_100, whose fp32 tiles there are not the D = 64 ones halved.
    combos = [(dt, d) for dt in (torch.bfloat16, torch.float16) for d in HEAD_DIMS] + [(torch.float32, 64),
                                                                                      (torch.float32, 128)]
    for dtype, head_dim in combos:
        # The preprocess launch, registered once for every family that shares it.
        pre = {arch: _candidates("bwd_preprocess", arch, head_dim, dtype, False)[0] for arch in ARCHS}
        for arch, cfg in pre.items():
            shared = list(pre.values()).count(cfg) == len(pre)
            yield _compile_config("bwd_preprocess", None if shared else arch, head_dim, dtype, None, cfg)
        for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
            for arch in ARCHS if (dtype, head_dim) != (torch.float32, 128) else (100,):
                for causal in (True, False):
                    for cfg in _candidates(kernel, arch, head_dim, dtype, causal):
                        yield _compile_config(kernel, arch, head_dim, dtype, causal, cfg)
                    if kernel == "bwd_dkdv":  # deterministic=False
                        (cfg,) = _candidates(kernel, arch, head_dim, dtype, causal, atomic_dq=True)
                        yield _compile_config(kernel, arch, head_dim, dtype, causal, cfg, atomic_dq=True)
    # The optional code paths (per-sequence key ranges, dropout), causal, every candidate and
    # the deterministic=False dK/dV: at GPT-2's head size in bf16 each switch alone and both;
    # both at D = 128 in bf16 and at D = 64 in fp32 (dropout has launches of its own there).
    optional = (("ranges",), ("dropout",), ("ranges", "dropout"))
    for head_dim, dtype, variants in ((64, torch.bfloat16, optional), (128, torch.bfloat16, optional[2:]),
                                      (64, torch.float32, optional[2:])):
        for kernel in ("fwd", "bwd_dkdv", "bwd_dq"):
            for arch in ARCHS:
                for variant in variants:
                    dropout = "dropout" in variant
                    for cfg in _candidates(kernel, arch, head_dim, dtype, True, dropout=dropout):
                        yield _compile_config(kernel, arch, head_dim, dtype, True, cfg, variant=variant)
                    if kernel == "bwd_dkdv":
                        (cfg,) = _candidates(kernel, arch, head_dim, dtype, True, atomic_dq=True, dropout=dropout)
                        yield _compile_config(kernel, arch, head_dim, dtype, True, cfg, atomic_dq=True, variant=variant)


# ----------------------------------------------------------------------------------------
# Choosing among the candidates on a GPU
# ----------------------------------------------------------------------------------------


def _arch(device):
    """The candidate family for a device: 100 for sm_100-class Blackwell, 90 for Hopper, 80 for
    every other GPU, None for the interpreter (see gpt2_kernels._common.arch_family)."""
    return arch_family(device)


def _family(device, family=None):
    """The candidate family to launch on ``device``: its own (``_arch``) unless ``family`` forces
    one of ARCHS. The interpreter keeps its own candidates (None) whatever is forced."""
    if family is not None and (type(family) is not int or family not in ARCHS):  # not True, not 80.0
        raise ValueError(f"gpt2_kernels.attention: family must be None or one of {ARCHS}, got {family!r}")
    arch = _arch(device)
    if family is None or arch is None:
        return arch
    if family > arch:
        raise ValueError(f"gpt2_kernels.attention: family={family} needs a GPU of that family or newer; "
                         f"{torch.cuda.get_device_name(device)} takes family {arch} or older")
    return family


def _describe(cfg):
    return " ".join(f"{k}={v}" for k, v in cfg.constexprs.items()) + f" warps={cfg.num_warps} stages={cfg.num_stages}"


_TUNER = Tuner("attention", _describe)


def _pick(kernel, device, head_dim, dtype, causal, seq, run, family=None, variant=()):
    """The candidate to launch: on a GPU the first call for a (kernel, arch, D, dtype, causal,
    power-of-two sequence length) compiles every candidate (``run(cfg, warmup=True)``), times
    each on the real arguments, keeps the fastest and remembers it on disk (gpt2_kernels/tuner.py).
    ``arch`` is the family whose candidates run (``_family``), so a forced family has its own key;
    ``variant`` names the code paths switched on ("ranges", "dropout"), timed apart too."""
    arch = _family(device, family)
    candidates = _candidates(kernel, arch, head_dim, dtype, causal, dropout="dropout" in variant)
    key = (kernel, arch, head_dim, str(dtype).replace("torch.", ""), causal, triton.next_power_of_2(seq)) + tuple(variant)
    return _TUNER.pick(key, candidates, run, compile=lambda cfg: run(cfg, warmup=True), device=device)


def chosen_configs():
    """What the tuner chose so far in this process, for benchmark records: a list of
    {"kernel", "arch", "head_dim", "dtype", "causal", "seq_pow2", "config", "ms", "source"} where
    "config" describes the winning launch, "ms" maps every candidate timed to its median time and
    "source" says whether it was timed in this process or read from the tuner's cache file."""
    return [dict(zip(("kernel", "arch", "head_dim", "dtype", "causal", "seq_pow2"), r["key"]),
                 config=r["config"], ms=r["ms"], source=r["source"]) for r in _TUNER.records()]


def _tma_allocator(size, alignment, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator():
    # Descriptors built inside a kernel (tl.make_tensor_descriptor) live in a global scratch
    # buffer that Triton asks an allocator for at launch. The allocator is a context variable,
    # so it is set per thread (autograd runs the backward on its own thread), and only when
    # none is set, so a caller's own allocator wins.
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_tma_allocator)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------


def _launch(kernel, grid, warmup):
    """kernel[grid], or with ``warmup`` a call that only compiles (the tuner's first step)."""
    if warmup:
        return lambda *args, **kwargs: kernel.warmup(*args, grid=grid, **kwargs)
    return kernel[grid]


def _kernel_layout(t):
    """t, or a contiguous copy when its layout is not one the kernels are compiled for."""
    return t.contiguous() if _needs_copy(t, t.data_ptr()) else t


def _needs_copy(t, address):
    """Whether t's layout (at this address) is not one the kernels are compiled for: unit
    stride in the last dim, other strides multiples of 16 elements (so every row of a TMA
    descriptor starts 16-byte aligned), rows not broadcast (stride 0, which a descriptor cannot
    take), 16-byte aligned data."""
    return t.stride(-1) != 1 or any(s % 16 for s in _strides(t)) or address % 16 or _strides(t)[2] == 0


def _copies_bytes(*tensors):
    """What `_kernel_layout` allocates for these tensors. A tensor without data has no address:
    its offset into its storage stands in (every allocation starts 16-byte aligned)."""
    return sum(nbytes(t) for t in tensors if _needs_copy(t, t.storage_offset() * t.element_size()))


def _strides(t):
    """(batch, head, row) strides. A size-1 dim's stride is never used to step: batch and head
    get 0, a single row gets D (a descriptor still wants a valid row stride)."""
    b, h, s, d = t.shape
    return (0 if b == 1 else t.stride(0), 0 if h == 1 else t.stride(1), d if s == 1 else t.stride(2))


def _extras(q, kv_start, kv_len, dropout_p, seed):
    """The arguments and switches of the two optional code paths: per-sequence key ranges
    (RANGES; a missing bound of the pair becomes 0 or Sk on the device) and dropout (DROPOUT),
    and the tuner's variant key naming those switched on."""
    ranges = kv_start is not None or kv_len is not None
    if ranges:
        B = q.shape[0]
        kv_start = kv_start if kv_start is not None else torch.zeros((B,), dtype=torch.int32, device=q.device)
        kv_len = kv_len if kv_len is not None else torch.full((B,), 2**31 - 1, dtype=torch.int32, device=q.device)
    else:
        kv_start = kv_len = q  # never read: RANGES is off
    dropout = dropout_p > 0
    args = (kv_start, kv_len)
    flags = {"RANGES": ranges, "DROPOUT": dropout}
    scalars = (int(seed) if dropout else 0, float(dropout_p) if dropout else 0.0)
    variant = tuple(name for name, on in (("ranges", ranges), ("dropout", dropout)) if on)
    return args, scalars, flags, variant


def _attention_fwd(q, k, v, causal, scale, family=None, kv_start=None, kv_len=None, dropout_p=0.0, seed=0):
    q, k, v = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    o = torch.empty((B, H, Sq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Sq), dtype=torch.float32, device=q.device)
    ranges, (seed, dropout_p), flags, variant = _extras(q, kv_start, kv_len, dropout_p, seed)

    def run(cfg, warmup=False):
        grid = (triton.cdiv(Sq, cfg.constexprs["BLOCK_M"]) * B * H,)
        _launch(_attn_fwd_kernel, grid, warmup)(q, k, v, o, lse, *ranges, *_strides(q), *_strides(k), *_strides(v),
                               *_strides(o), H, Sq, Sk, scale * LOG2E.value, seed, dropout_p, HEAD_DIM=D,
                               CAUSAL=causal, INTERPRET=INTERPRET, **flags,
                               **cfg.constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    with device_guard(q):
        if q.is_cuda:
            _ensure_allocator()
        run(_pick("fwd", q.device, D, q.dtype, causal, max(Sq, Sk), run, family, variant))
    return o, lse


def _stat_stride(Sq):
    return triton.cdiv(Sq, 16) * 16


def _attention_bwd(do, q, k, v, o, lse, causal, scale, deterministic, family=None, kv_start=None, kv_len=None,
                   dropout_p=0.0, seed=0):
    q, k, v, o, do = (_kernel_layout(t) for t in (q, k, v, o, do))
    ranges, (seed, dropout_p), flags, variant = _extras(q, kv_start, kv_len, dropout_p, seed)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    dk = torch.empty((B, H, Sk, D), dtype=k.dtype, device=q.device)
    dv = torch.empty((B, H, Sk, D), dtype=v.dtype, device=q.device)
    # delta and a copy of lse, in rows padded to a multiple of 16 floats (see the preprocess kernel)
    stride_stat = _stat_stride(Sq)
    delta = torch.empty((B * H, stride_stat), dtype=torch.float32, device=q.device)
    lse_pad = torch.empty((B * H, stride_stat), dtype=torch.float32, device=q.device)
    # deterministic=False: dQ is accumulated in fp32 by atomic adds inside the dK/dV kernel.
    dq_acc = torch.zeros((B, H, Sq, D) if not deterministic else (1,), dtype=torch.float32, device=q.device)

    def run_dkdv(cfg, warmup=False):
        grid = (triton.cdiv(Sk, cfg.constexprs["BLOCK_N"]) * B * H,)
        _launch(_attn_bwd_dkdv_kernel, grid, warmup)(
            q, k, v, do, lse_pad, delta, dk, dv, dq_acc, *ranges,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
            stride_stat, H, Sq, Sk, scale, scale * LOG2E.value, seed, dropout_p, HEAD_DIM=D, CAUSAL=causal,
            ATOMIC_DQ=not deterministic, INTERPRET=INTERPRET, **flags, **cfg.constexprs, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)

    def run_dq(cfg, warmup=False):
        _launch(_attn_bwd_dq_kernel, (triton.cdiv(Sq, cfg.constexprs["BLOCK_M"]) * B * H,), warmup)(
            q, k, v, do, lse_pad, delta, dq, *ranges, *_strides(q), *_strides(k), *_strides(v), *_strides(do),
            *_strides(dq), stride_stat, H, Sq, Sk, scale, scale * LOG2E.value, seed, dropout_p, HEAD_DIM=D,
            CAUSAL=causal, INTERPRET=INTERPRET, **flags, **cfg.constexprs, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)

    with device_guard(q):
        if q.is_cuda:
            _ensure_allocator()
        cfg = _candidates("bwd_preprocess", _family(q.device, family), D, q.dtype, causal)[0]
        _attn_bwd_preprocess_kernel[(triton.cdiv(Sq, cfg.constexprs["BLOCK_M"]) * B * H,)](
            o, do, lse, lse_pad, delta, *_strides(o), *_strides(do), stride_stat, H, Sq,
            HEAD_DIM=D, **cfg.constexprs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if deterministic:
            dq = torch.empty((B, H, Sq, D), dtype=q.dtype, device=q.device)
            run_dkdv(_pick("bwd_dkdv", q.device, D, q.dtype, causal, max(Sq, Sk), run_dkdv, family, variant))
            run_dq(_pick("bwd_dq", q.device, D, q.dtype, causal, max(Sq, Sk), run_dq, family, variant))
        else:
            # One launch, untimed: each timing run would add into dq_acc again.
            (cfg,) = _candidates("bwd_dkdv", _family(q.device, family), D, q.dtype, causal, atomic_dq=True,
                                 dropout="dropout" in variant)
            run_dkdv(cfg)
            dq = dq_acc.to(q.dtype)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# The registered op and its autograd
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("gpt2_kernels::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                      deterministic: bool, family: Optional[int] = None, kv_start: Optional[torch.Tensor] = None,
                      kv_len: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    # `deterministic` only travels to the backward (see _setup_context), the others to both.
    return _attention_fwd(q, k, v, causal, scale, family, kv_start, kv_len, dropout_p, seed)


@_attention_fwd_op.register_fake
def _(q, k, v, causal, scale, deterministic, family=None, kv_start=None, kv_len=None, dropout_p=0.0, seed=0):
    B, H, Sq, D = q.shape
    return q.new_empty((B, H, Sq, D)), q.new_empty((B, H, Sq), dtype=torch.float32)


@torch.library.custom_op("gpt2_kernels::attention_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, causal: bool, scale: float, deterministic: bool,
                      family: Optional[int] = None, kv_start: Optional[torch.Tensor] = None,
                      kv_len: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _attention_bwd(do, q, k, v, o, lse, causal, scale, deterministic, family, kv_start, kv_len, dropout_p, seed)


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, causal, scale, deterministic, family=None, kv_start=None, kv_len=None, dropout_p=0.0,
      seed=0):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _bounds_bytes(q, kv_start, kv_len):
    """The missing bound's int32 (B,) tensor when only one of kv_start, kv_len is given."""
    return 4 * q.shape[0] if (kv_start is None) != (kv_len is None) else 0


@workspace_of(_attention_fwd_op)
def _(q, k, v, causal, scale, deterministic, family=None, kv_start=None, kv_len=None, dropout_p=0.0, seed=0):
    return _copies_bytes(q, k, v) + _bounds_bytes(q, kv_start, kv_len)


@workspace_of(_attention_bwd_op)
def _(do, q, k, v, o, lse, causal, scale, deterministic, family=None, kv_start=None, kv_len=None, dropout_p=0.0,
      seed=0):
    """delta and lse_pad, dQ's fp32 accumulator (one float when deterministic), any layout copies."""
    B, H, Sq, D = q.shape
    stats = 2 * B * H * _stat_stride(Sq) * 4
    return (stats + (4 if deterministic else B * H * Sq * D * 4) + _copies_bytes(q, k, v, o, do)
            + _bounds_bytes(q, kv_start, kv_len))


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale, deterministic, family, kv_start, kv_len, dropout_p, seed = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, kv_start, kv_len)
    ctx.causal, ctx.scale, ctx.deterministic, ctx.family = causal, scale, deterministic, family
    ctx.dropout_p, ctx.seed = dropout_p, seed  # the backward regenerates the same keep-mask
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, dlse):
    # lse is an internal output (the public function never returns it): no gradient flows in.
    q, k, v, o, lse, kv_start, kv_len = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, ctx.causal, ctx.scale, ctx.deterministic, ctx.family,
                                   kv_start, kv_len, ctx.dropout_p, ctx.seed)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------


def _check_bounds(op, q, **bounds):
    B = q.shape[0]
    for name, t in bounds.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{op}: {name} must be an int32 tensor of shape (B,) = ({B},), got {got}")
        if tuple(t.shape) != (B,):
            raise ValueError(f"{op}: {name} must have shape (B,) = ({B},), one bound per sequence, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} must be on q's device ({q.device}), got {t.device}")
        if t.requires_grad:
            raise ValueError(f"{op}: {name} holds positions; it cannot require a gradient")


def _check_dropout(op, dropout_p):
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0 <= dropout_p < 1:
        raise ValueError(f"{op}: dropout_p must be a number in [0, 1), got {dropout_p!r}")


def _check_inputs(q, k, v, causal, scale, family, kv_start=None, kv_len=None, dropout_p=0.0):
    op = "gpt2_kernels.attention"
    B, H, Sq, Sk, D = check_qkv(op, q, k, v)
    _check_bounds(op, q, kv_start=kv_start, kv_len=kv_len)
    _check_dropout(op, dropout_p)
    if 0 in (B, H, Sq, Sk):
        raise ValueError(f"{op}: empty input: q {tuple(q.shape)}, k {tuple(k.shape)}; B, H, Sq and Sk must be >= 1")
    if causal and Sq > Sk:
        raise ValueError(f"{op}: causal attention needs Sq <= Sk (queries are the last Sq of the Sk "
                         f"positions), got Sq={Sq}, Sk={Sk}")
    check_runnable(op, q, k, v)
    # The kernels take each tile's row max before scaling, which needs scale > 0.
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"{op}: scale must be a positive finite number (or None for 1/sqrt(D)), got {scale!r}")
    _family(q.device, family)


def _dropout_seed():
    """The seed of one call's dropout: drawn from torch's default (CPU) generator, so
    ``torch.manual_seed`` makes runs repeat, and no GPU is synced. Below 2**31 - 2**24, so that
    the seed plus a head's index stays a 32-bit number."""
    return int(torch.randint(0, 2**31 - 2**24, ()))


def attention(q, k, v, causal=True, scale=None, deterministic=True, *, kv_start=None, kv_len=None, dropout_p=0.0,
              family=None):
    """Scaled dot-product attention, fused: softmax(scale * q k^T + mask) v.

    q: (B, H, Sq, D); k, v: (B, H, Sk, D). One dtype: float16, bfloat16 or float32. D in
       {16, 32, 64, 128}; Sq, Sk >= 1, and Sq <= Sk when causal. Views with any strides are
       accepted (the last dim contiguous avoids a copy). CUDA tensors, or CPU tensors under
       ``TRITON_INTERPRET=1``.
    causal: the mask aligned to the end: query i sees keys j <= i + Sk - Sq (so Sq = 1
       against a KV cache of Sk keys sees all of them). False: every query sees every key.
    scale: defaults to 1/sqrt(D).
    deterministic: True (the default) makes the backward bitwise reproducible (dQ by its own
       pass over the keys). False accumulates dQ with fp32 atomic adds inside the dK/dV
       kernel: 5 matrix products a tile instead of 7 and one launch fewer, but the order of
       the additions, hence the last bits of dQ, varies from run to run.
    kv_start, kv_len: None, or int32 tensors of shape (B,) on q's device: sequence b attends
       only to keys kv_start[b] <= j < kv_len[b] (left padding: kv_start; right padding:
       kv_len), with the causal mask as above (still aligned to the end of all Sk keys). Read
       on the device, never synced: values are clamped to [0, Sk]. A query row left with no
       key gets output 0 and zero gradients. Key tiles wholly outside a sequence's range are
       skipped.
    dropout_p: dropout on the attention probabilities, in [0, 1): each (head, query, key) is
       kept with probability 1 - dropout_p and scaled by 1 / (1 - dropout_p), drawn inside the
       kernel from a seed taken from torch's default generator (``torch.manual_seed``
       repeats a call); the backward regenerates the same mask. ``attention_dropout_mask``
       returns a call's mask. 0 (the default) compiles the dropout out.
    family: None (the default) launches the device's own candidate family; 80 or 90 forces
       that family's candidates (one of ARCHS, not newer than the device's), e.g. 80 on Hopper
       for the kernel without TMA and the Hopper tiles. See the module docstring.
    Returns o: (B, H, Sq, D), q's dtype. Differentiable in q, k and v.

    fp32 inputs on a GPU run their matrix products in TF32 (fp32 accumulation).
    Under torch.autocast, q, k and v are cast to autocast's dtype and o has it, as autocast does
    for torch's scaled_dot_product_attention (its lower-precision list).
    """
    dtype = autocast_dtype(q)
    if dtype is not None:
        q, k, v = cast_floats(dtype, q, k, v)
    _check_inputs(q, k, v, causal, scale, family, kv_start, kv_len, dropout_p)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    Sq = q.shape[2]
    # A few queries against many keys (decode): the split-KV kernel, unless a gradient or dropout
    # is needed. Its kv_len also moves the causal diagonal (queries are the last Sq of kv_len
    # keys), which is this function's mask only for one query or without the causal mask.
    if (Sq <= DECODE_MAX_QUERIES and k.shape[2] >= DECODE_MIN_KEYS and dropout_p == 0
            and (kv_len is None or Sq == 1 or not causal)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))):
        return decode_attention(q, k, v, kv_len=kv_len, causal=causal, scale=scale, kv_start=kv_start)
    seed = _dropout_seed() if dropout_p > 0 else 0
    o, _ = _attention_fwd_op(q, k, v, bool(causal), scale, bool(deterministic), family, kv_start, kv_len,
                             float(dropout_p), seed)
    return o


@triton.jit
def _dropout_mask_kernel(MASK, seq_q, seq_k, seed, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Grid (query tiles, key tiles, B*H): the keep bits _keep draws in the attention kernels.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    bh = tl.program_id(2)
    keep = _keep(seed + bh, rows, tl.program_id(1) * BLOCK_N, seq_k, dropout_p, BLOCK_N)
    ok = (rows[:, None] < seq_q) & (cols[None, :] < seq_k)
    tl.store(MASK + bh.to(tl.int64) * seq_q * seq_k + rows[:, None] * seq_k + cols[None, :], keep.to(tl.int8), mask=ok)


def attention_dropout_mask(q, k, dropout_p, seed=None):
    """The keep-mask of ``attention(q, k, v, dropout_p=dropout_p)``: (B, H, Sq, Sk) bool, True
    where the probability was kept (and scaled by 1 / (1 - dropout_p)), False where dropped.

    seed: None draws it from torch's default generator exactly as ``attention`` does, so

        torch.manual_seed(s); o = attention(q, k, v, dropout_p=p)
        torch.manual_seed(s); keep = attention_dropout_mask(q, k, p)

    gives the mask that call used (the reference is then softmax(...) * keep / (1 - p) @ v).
    Only q's and k's shapes and device are read. Every (head, query, key) is drawn, masked or
    not."""
    op = "gpt2_kernels.attention_dropout_mask"
    _check_dropout(op, dropout_p)
    check_runnable(op, q, k)
    B, H, Sq, _ = q.shape
    Sk = k.shape[2]
    seed = _dropout_seed() if seed is None else int(seed)
    mask = torch.empty((B, H, Sq, Sk), dtype=torch.int8, device=q.device)
    with device_guard(q):
        _dropout_mask_kernel[(triton.cdiv(Sq, 32), triton.cdiv(Sk, 32), B * H)](
            mask, Sq, Sk, seed, float(dropout_p), BLOCK_M=32, BLOCK_N=32)
    return mask.bool()


# ----------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------


def attention_reference(q, k, v, causal=True, scale=None, *, kv_start=None, kv_len=None, dropout_p=0.0, keep=None):
    """Eager PyTorch attention with the (Sq, Sk) scores materialised, the same contract as
    ``attention``; computed in the inputs' dtype (pass float64 tensors for a reference).
    keep: the (B, H, Sq, Sk) bool keep-mask for dropout_p > 0 (``attention_dropout_mask``)."""
    B, Sq, Sk, D = q.shape[0], q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Sq, Sk)
    j = torch.arange(Sk, device=q.device)
    visible = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril(diagonal=Sk - Sq)
    lo = kv_start if kv_start is not None else torch.zeros(B, dtype=torch.long, device=q.device)
    hi = kv_len if kv_len is not None else torch.full((B,), Sk, device=q.device)
    visible = visible & (j >= lo.reshape(B, 1, 1, 1)) & (j < hi.reshape(B, 1, 1, 1))  # (B, 1, Sq, Sk)
    p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    p = torch.where(visible.any(-1, keepdim=True), p, 0.0)  # a row that sees no key: 0, not NaN
    if dropout_p > 0:
        p = p * keep / (1 - dropout_p)
    return p @ v
