"""Split-KV attention for a few queries against a long KV cache (flash-decoding).

The math is the same causal attention as ``gpt2_kernels.attention``, for Sq <= 16 queries:

    S = scale * Q K^T              (Sq, Sk)    query i sees key j iff j <= i + (Sk - Sq)
    O = softmax(S) V               (Sq, D)

Why another kernel: the training kernel gives each (batch, head) one program per 128 query
rows. One-token decode (Sq = 1) then launches B*H programs (12 for gpt2 at batch 1, on a GPU
with 132 SMs) whose tiles are 127/128 padding, and each program walks the whole cache alone.
Here the KEYS are split across programs instead:

    split s owns keys [s*C, min((s+1)*C, Sk))         C = keys_per_split, a multiple of BLOCK_N
    O_s   = softmax(S[:, split s]) V[split s]         (Sq, D) fp32, one program per (b, h, s)
    L_s   = logsumexp(S[:, split s])                  (Sq,)   fp32, -inf if row sees no key of s
    O     = sum_s exp(L_s - L) O_s,   L = logsumexp_s(L_s)              the combine pass

so B*H*splits programs stream the cache once between them (grid heuristic: ``_num_splits``,
from Sk, B*H and the SM count). The query tile is 16 rows (``tl.dot``'s minimum), so a
decode step wastes 15/16 of a small dot rather than 127/128 of a big one; the kernel is
bound by reading K and V, not by math.

Bytes per call: K and V read once, 2 * B*H*Sk*D * itemsize; partials written and read back,
2 * B*H*splits*Sq*(D+1) * 4 (at Sk = 8192, D = 64, bf16 and 22 splits: 2 MB of K/V against
11 KB of partials per head... i.e. under 1%).

Length on the device: ``kv_len`` (an int32/int64 tensor, one value or one per batch row) says
how many keys are valid, so a static cache allocated at its final length can be passed whole
and a decode step has the same shapes (and grid) at every position: what CUDA graphs need.
Programs whose split starts past kv_len find no key and write L_s = -inf. A kv_len above Sk
counts as Sk: the kernel clamps it (tl.minimum) where it reads it, because refusing it would
need its value on the host, a sync in every decode step, and reading on would run off the
cache (garbage, or an illegal access on a GPU).

Limits and numerics:
- q (B, H, Sq, D), Sq <= 16; k, v (B, H, Sk, D); D in {16, 32, 64, 128}; causal needs
  Sq <= kv_len. fp16, bf16, fp32 (one dtype); fp32 accumulation; output in q's dtype.
- Deterministic: splits and the combine's sum have a fixed order (no atomics), so results are
  bitwise reproducible for a given split count.
- Inference only: no autograd. ``gpt2_kernels.attention`` sends it only calls that need no gradient
  (``decode_attention`` itself refuses inputs that require one).
- Layouts: any strides; the last dim is copied to contiguous if it is not (a cost of one read
  and write of the tensor); strides that are multiples of 16 get 16-byte vector loads.
"""

import math

import torch
import triton
import triton.language as tl

from gpt2_kernels import registry
from gpt2_kernels._attention_loop import _attn_fwd_inner
from gpt2_kernels._common import (HEAD_DIMS, INTERPRET, TRITON_TYPE, Launch, arch_family, check_qkv, check_runnable,
                                  device_guard, nbytes, num_sms, workspace_of)

MAX_QUERIES = 16  # the query tile: every query of a call fits one tl.dot tile
MIN_KEYS = 64  # gpt2_kernels.attention sends Sq <= MAX_QUERIES here from this many keys on
MAX_SPLITS = 128  # the combine pass holds one row of L_s per split in registers
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------


@triton.jit
def _decode_split_kernel(Q, K, V, KV_LEN, KV_START, O_PART, LSE_PART,
                         stride_qb, stride_qh, stride_qm,
                         stride_kb, stride_kh, stride_kn,
                         stride_vb, stride_vh, stride_vn,
                         stride_lb, n_heads, seq_q, n_keys, keys_per_split, qk_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         CAUSAL: tl.constexpr, HAS_START: tl.constexpr, INTERPRET: tl.constexpr):
    # Grid (B*H, splits). O_PART (B*H, splits, seq_q, HEAD_DIM) and LSE_PART (B*H, splits,
    # seq_q) are contiguous fp32 scratch.
    bh = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    DOT: tl.constexpr = tl.float32 if INTERPRET else Q.dtype.element_ty
    # At most the n_keys rows the cache has: a length past them (a caller's slip) reads no key
    # beyond the buffer, here on the device, with no check that would sync the decode loop.
    seq_k = tl.minimum(tl.load(KV_LEN + b * stride_lb), n_keys).to(tl.int32)
    start = split * keys_per_split
    diag = seq_k - seq_q
    end = tl.minimum(start + keys_per_split, seq_k)
    # Tiles [start, full_end) are seen whole by every query; [full_end, end) need the mask.
    if CAUSAL:
        full_end = tl.maximum(start, start + (tl.minimum(end, diag + 1) - start) // BLOCK_N * BLOCK_N)
    else:
        full_end = tl.maximum(start, start + (end - start) // BLOCK_N * BLOCK_N)
    # With HAS_START (left padding: KV_START, one per batch row) keys before lo are skipped by
    # whole tiles, and the tile holding lo, when lo is not on a tile boundary, is masked:
    # runs [first, head_end) masked, [first_full, full_end) whole, [tail, end) masked.
    lo = 0
    first = start
    head_end = start
    first_full = start
    if HAS_START:
        lo = tl.maximum(tl.load(KV_START + b), 0)
        first = tl.maximum(start, lo // BLOCK_N * BLOCK_N)
        first_full = tl.maximum(start, tl.cdiv(lo, BLOCK_N) * BLOCK_N)
        head_end = tl.minimum(first_full, end)
        full_end = tl.maximum(full_end, first_full)
    tail = tl.maximum(full_end, head_end)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    row_ok = offs_m < seq_q
    q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0).to(DOT)
    K += tl.arange(0, BLOCK_N)[:, None] * stride_kn + offs_d[None, :]  # the tile at key row 0
    V += tl.arange(0, BLOCK_N)[:, None] * stride_vn + offs_d[None, :]

    # The training forward's loop (gpt2_kernels/_attention_loop.py) with pointer loads, no
    # pipelining and no dropout. EMPTY_ROWS: a split's masked tiles may be the first keys a
    # query meets and lie past its last visible one, so its max may still be -inf there.
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if HAS_START:
        acc, l_i, m_i, _ = _attn_fwd_inner(acc, l_i, m_i, 0.0, q, K, V, stride_kn, stride_vn, offs_m, first, head_end,
                                           lo, seq_k, diag, qk_scale, 0, 0.0, seq_k,
                                           BLOCK_N, CAUSAL, True, False, False, HAS_START, False, DOT, True)
    acc, l_i, m_i, _ = _attn_fwd_inner(acc, l_i, m_i, 0.0, q, K, V, stride_kn, stride_vn, offs_m, first_full, full_end,
                                       lo, seq_k, diag, qk_scale, 0, 0.0, seq_k,
                                       BLOCK_N, CAUSAL, False, False, False, HAS_START, False, DOT, True)
    acc, l_i, m_i, _ = _attn_fwd_inner(acc, l_i, m_i, 0.0, q, K, V, stride_kn, stride_vn, offs_m, tail, end,
                                       lo, seq_k, diag, qk_scale, 0, 0.0, seq_k,
                                       BLOCK_N, CAUSAL, True, False, False, HAS_START, False, DOT, True)

    seen = l_i > 0
    o = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
    row = (bh.to(tl.int64) * n_splits + split) * seq_q
    tl.store(LSE_PART + row + offs_m, lse, mask=row_ok)
    tl.store(O_PART + (row + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], o, mask=row_ok[:, None])


# O = sum_s w_s O_s / sum_s w_s with w_s = exp(L_s - max_s L_s): the softmax over all keys,
# reassembled from the splits' (O_s, L_s). A query that sees no key at all (kv_start at or past
# its last visible key) has every L_s = -inf: its weights are then 0, and so is its output.
@triton.jit
def _decode_combine_kernel(O_PART, LSE_PART, O,
                           stride_ob, stride_oh, stride_om,
                           n_heads, seq_q, n_splits,
                           HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    # Grid (B*H*seq_q,): one program per output row.
    pid = tl.program_id(0)
    bh = pid // seq_q
    m = pid % seq_q
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = (bh.to(tl.int64) * n_splits + offs_s) * seq_q + m
    ok = offs_s < n_splits
    lse = tl.load(LSE_PART + rows, mask=ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.math.exp2((lse - tl.where(top == float("-inf"), 0.0, top)) * LOG2E)
    o = tl.load(O_PART + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
    total = tl.sum(w, 0)
    o = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    O += b * stride_ob + h * stride_oh + m.to(tl.int64) * stride_om
    tl.store(O + offs_d, o.to(O.dtype.element_ty))


# ----------------------------------------------------------------------------------------
# Launch configurations: the one place they are chosen
# ----------------------------------------------------------------------------------------

KERNELS = ("split", "combine")


ARCHS = (80, 90, 100)  # the launch families (gpt2_kernels._common.arch_family)


def _launch_config(kernel, head_dim, dtype, interpret=INTERPRET, arch=80):
    """Launch for one of KERNELS on the ``arch`` family. The split kernel's tile is BLOCK_M = 16
    query rows by BLOCK_N keys; the combine kernel's BLOCK_S (splits per row) is set at
    launch, not here.

    The split kernel streams K and V: 64-key tiles (32 at D = 128, or in fp32, to keep the
    double-buffered tiles small) with 3 stages of prefetch keep enough loads in flight per SM
    when several programs share it. sm_100 keeps the tile (16 query rows are below the 64 rows
    a tcgen05 MMA needs, so its dots stay HMMA, which the kernel, bound by reading K and V,
    hardly uses) and, where a stage of K and V is 16 KB (D = 64 and 128 in 16 bits, fp32 at
    D = 64), prefetches 5 stages instead of 3: with the grid's two programs an SM, 4 tiles in
    flight each are 128 KB an SM instead of 64 KB, for HBM (~8 TB/s) that moves about 1.7x an
    H200's bytes a second; ~70 KB of shared memory a program (of sm_100's 227 KB), no spills
    with Triton 3.6 or 3.9. fp32 at D = 128 (32 KB stages) keeps 3: with 5 it spills (3.6). Every GPU configuration is registered below for
    ``python -m gpt2_kernels.sass``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown decode_attention kernel {kernel!r}; expected one of {KERNELS}")
    if kernel == "combine":
        return Launch({}, 4 if head_dim >= 64 else 2, 1)
    if interpret:
        # Small tiles, so that the tests' short caches still cross several tiles and splits.
        return Launch({"BLOCK_M": MAX_QUERIES, "BLOCK_N": 16}, 4, 1)
    block_n = 32 if head_dim == 128 or dtype == torch.float32 else 64
    deep = arch == 100 and not (head_dim == 128 and dtype == torch.float32)
    # D <= 32: 2 warps. With 4, the 16 x BLOCK_N x D products are too small to share out and
    # the main loop issues ~2x the instructions per score (sm_90 bf16 at D = 16: 29.4 against
    # 14.9), and Triton 3.9's ptxas spills 2 words on sm_90 (16-bit, fp32 causal). fp32 on
    # sm_100 keeps 4: with 2 it spills 2 words at D = 16.
    warps = 2 if head_dim <= 32 and not (arch == 100 and dtype == torch.float32) else 4
    return Launch({"BLOCK_M": MAX_QUERIES, "BLOCK_N": block_n}, warps, 5 if deep else 3)


def _num_splits(batch_heads, seq_k, block_n, sms):
    """(splits, keys_per_split) for B*H heads over a cache of seq_k keys on `sms` SMs.

    Aim for two programs per SM (one streams while the other waits on memory), but give every
    split at least one key tile (a split's fixed cost, its partial output, is then below 1/16
    of its reads at D = 64) and at most MAX_SPLITS. keys_per_split is a whole number of tiles,
    so splits start on tile boundaries. With a static cache seq_k is its allocated length:
    the grid then stays the same at every decode step.
    """
    tiles = triton.cdiv(seq_k, block_n)
    want = triton.cdiv(2 * sms, batch_heads)
    splits = max(1, min(want, tiles, MAX_SPLITS))
    tiles_per_split = triton.cdiv(tiles, splits)
    return triton.cdiv(tiles, tiles_per_split), tiles_per_split * block_n


@registry.configs_of("decode_attention")
def _compile_configs():
    types = {"KV_LEN": "*i32", "KV_START": "*i32", "O_PART": "*fp32", "LSE_PART": "*fp32", "qk_scale": "fp32"}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        ty = TRITON_TYPE[dtype]
        for head_dim in HEAD_DIMS:
            strides = tuple(n for n in _decode_split_kernel.arg_names if n.startswith("stride_") and n != "stride_lb")
            for arch in ARCHS:
                cfg = _launch_config("split", head_dim, dtype, interpret=False, arch=arch)
                # kv_start (HAS_START) at GPT-2's head size, in 16 bits, causal.
                starts = (False, True) if head_dim == 64 and dtype != torch.float32 else (False,)
                for causal, has_start in [(c, h) for c in (True, False) for h in starts if c or not h]:
                    yield registry.CompileConfig(
                        _decode_split_kernel, op="decode_attention",
                        label=f"split D={head_dim} {ty} {'kv_start ' if has_start else ''}{'causal' if causal else 'full'} "
                              f"{cfg.constexprs['BLOCK_M']}x{cfg.constexprs['BLOCK_N']} s{cfg.num_stages} sm_{arch}",
                        dtype=ty, constexprs={"HEAD_DIM": head_dim, **cfg.constexprs, "CAUSAL": causal,
                                              "HAS_START": has_start, "INTERPRET": False},
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages, types=types,
                        divisible_by_16=strides, arch=arch,
                        tile=(cfg.constexprs["BLOCK_M"], cfg.constexprs["BLOCK_N"]))
            cfg = _launch_config("combine", head_dim, dtype, interpret=False)
            for block_s in (16, MAX_SPLITS):
                yield registry.CompileConfig(
                    _decode_combine_kernel, op="decode_attention", label=f"combine D={head_dim} {ty} S<={block_s}",
                    dtype=ty, constexprs={"HEAD_DIM": head_dim, "BLOCK_S": block_s},
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                    types={"O_PART": "*fp32", "LSE_PART": "*fp32"},
                    divisible_by_16=("stride_ob", "stride_oh", "stride_om"))


# ----------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------


def _strides(t):
    """(batch, head, row) strides; 0 for a size-1 dim, whose stride is never used."""
    return tuple(0 if n == 1 else s for n, s in zip(t.shape[:3], t.stride()[:3]))


def _splits(q, k, num_splits):
    """(splits, keys per split) of a launch: `_num_splits`'s choice, or num_splits as asked."""
    B, H, _, D = q.shape
    Sk = k.shape[2]
    block_n = _launch_config("split", D, q.dtype, arch=arch_family(q.device)).constexprs["BLOCK_N"]
    if num_splits is None:
        return _num_splits(B * H, Sk, block_n, num_sms(q.device))
    per_split = triton.cdiv(triton.cdiv(Sk, block_n), num_splits) * block_n
    return triton.cdiv(Sk, per_split), per_split


def _decode_attention(q, k, v, kv_len, causal, scale, num_splits, kv_start=None):
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if kv_len is None:
        kv_len = torch.full((1,), Sk, dtype=torch.int32, device=q.device)
    cfg = _launch_config("split", D, q.dtype, arch=arch_family(q.device))
    splits, per_split = _splits(q, k, num_splits)
    o_part = torch.empty((B * H, splits, Sq, D), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((B * H, splits, Sq), dtype=torch.float32, device=q.device)
    o = torch.empty((B, H, Sq, D), dtype=q.dtype, device=q.device)
    with device_guard(q):
        _decode_split_kernel[(B * H, splits)](
            q, k, v, kv_len, kv_start if kv_start is not None else kv_len, o_part, lse_part,
            *_strides(q), *_strides(k), *_strides(v),
            kv_len.stride(0) if kv_len.numel() > 1 else 0, H, Sq, Sk, per_split, scale * LOG2E.value,
            HEAD_DIM=D, CAUSAL=causal, HAS_START=kv_start is not None, INTERPRET=INTERPRET, **cfg.constexprs,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        comb = _launch_config("combine", D, q.dtype)
        _decode_combine_kernel[(B * H * Sq,)](
            o_part, lse_part, o, *_strides(o), H, Sq, splits,
            HEAD_DIM=D, BLOCK_S=max(16, triton.next_power_of_2(splits)),
            num_warps=comb.num_warps, num_stages=comb.num_stages,
        )
    return o


# ----------------------------------------------------------------------------------------
# The registered op (inference only: no autograd is registered, and the public function
# refuses inputs that require a gradient)
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("gpt2_kernels::decode_attention", mutates_args=())
def _decode_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None,
                         causal: bool, scale: float, num_splits: int | None,
                         kv_start: torch.Tensor | None = None) -> torch.Tensor:
    return _decode_attention(q, k, v, kv_len, causal, scale, num_splits, kv_start)


@_decode_attention_op.register_fake
def _(q, k, v, kv_len, causal, scale, num_splits, kv_start=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@workspace_of(_decode_attention_op)
def _(q, k, v, kv_len, causal, scale, num_splits, kv_start=None):
    """Each split's fp32 partial output and log-sum-exp, a length when none is given, and a copy of
    any of q, k, v whose last dim is strided."""
    B, H, Sq, D = q.shape
    splits, _ = _splits(q, k, num_splits)
    copies = sum(nbytes(t) for t in (q, k, v) if t.stride(-1) != 1)
    return B * H * splits * Sq * (D + 1) * 4 + (4 if kv_len is None else 0) + copies


# ----------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------


def _check_inputs(q, k, v, kv_len, causal, scale, num_splits, kv_start=None):
    op = "gpt2_kernels.decode_attention"
    B, H, Sq, Sk, D = check_qkv(op, q, k, v)
    if kv_start is not None:
        if not isinstance(kv_start, torch.Tensor) or kv_start.dtype != torch.int32 or tuple(kv_start.shape) != (B,):
            got = (kv_start.dtype, tuple(kv_start.shape)) if isinstance(kv_start, torch.Tensor) else type(kv_start).__name__
            raise ValueError(f"{op}: kv_start must be an int32 tensor of shape (B,) = ({B},), got {got}")
        check_runnable(op, q, kv_start)
    if not 1 <= Sq <= MAX_QUERIES:
        raise ValueError(f"{op}: Sq={Sq} queries; this kernel takes 1 to {MAX_QUERIES} "
                         "(use gpt2_kernels.attention for more)")
    if 0 in (B, H, Sk):
        raise ValueError(f"{op}: empty input: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if kv_len is None:
        if causal and Sq > Sk:
            raise ValueError(f"{op}: causal attention needs Sq <= Sk, got Sq={Sq}, Sk={Sk}")
    else:
        if not isinstance(kv_len, torch.Tensor) or kv_len.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{op}: kv_len must be an int32 or int64 tensor (one length, or one per batch row)")
        if kv_len.numel() not in (1, B) or kv_len.dim() > 1:
            raise ValueError(f"{op}: kv_len must hold 1 or B={B} lengths, got shape {tuple(kv_len.shape)}")
        check_runnable(op, q, kv_len)
    check_runnable(op, q, k, v)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError(f"{op} is inference-only (no backward); use gpt2_kernels.attention, which "
                           "takes the training kernel when a gradient is needed")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"{op}: scale must be a positive finite number (or None for 1/sqrt(D)), got {scale!r}")
    if num_splits is not None and not (isinstance(num_splits, int) and 1 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"{op}: num_splits must be an int in [1, {MAX_SPLITS}] or None, got {num_splits!r}")


def decode_attention(q, k, v, kv_len=None, causal=True, scale=None, num_splits=None, *, kv_start=None):
    """Attention of Sq <= 16 queries over a KV cache, split across the keys (flash-decoding).

    q: (B, H, Sq, D), 1 <= Sq <= 16; k, v: (B, H, Sk, D), e.g. a full-length cache or any
       strided view of one. One dtype: float16, bfloat16 or float32; D in {16, 32, 64, 128}.
    kv_len: None (all Sk keys are valid) or an int32/int64 tensor on q's device with one
       length (0-d or (1,)) or one per batch row (B,): keys j >= kv_len are ignored, and the
       queries are the last Sq of the kv_len positions. Read on the device, never synced:
       kv_len >= 1 is the caller's promise (and Sq <= kv_len when causal); a kv_len above
       Sk is taken as Sk (clamped on the device, never a read past the cache).
    causal: query i sees keys j <= i + kv_len - Sq (the end-aligned mask of gpt2_kernels.attention).
    scale: defaults to 1/sqrt(D). num_splits: None picks it from Sk, B*H and the SM count.
    kv_start: None, or an int32 tensor (B,) on q's device: keys j < kv_start[b] are ignored too
       (a left-padded batch); key tiles wholly before it are skipped. A query left with no key
       gets output 0. Read on the device, like kv_len.
    Returns o: (B, H, Sq, D) in q's dtype. Not differentiable (inference only).
    """
    _check_inputs(q, k, v, kv_len, causal, scale, num_splits, kv_start)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _decode_attention_op(q, k, v, kv_len, bool(causal), scale, num_splits, kv_start)


# ----------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------


def decode_attention_reference(q, k, v, kv_len=None, causal=True, scale=None, kv_start=None):
    """Eager PyTorch with the scores materialised, the same contract as ``decode_attention``;
    computed in the inputs' dtype (pass float64 tensors for a reference)."""
    B, Sq, Sk, D = q.shape[0], q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    length = torch.full((B,), Sk) if kv_len is None else kv_len.reshape(-1).expand(B).cpu().clamp(max=Sk)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Sq, Sk)
    j = torch.arange(Sk)
    last = length[:, None] - Sq + torch.arange(Sq)[None, :] if causal else (length - 1)[:, None].expand(B, Sq)
    visible = (j[None, None, :] <= last[:, :, None]) & (j[None, None, :] < length[:, None, None])  # (B, Sq, Sk)
    if kv_start is not None:
        visible = visible & (j[None, None, :] >= kv_start.cpu().reshape(B, 1, 1))
    visible = visible[:, None].to(q.device)
    p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.where(visible.any(-1, keepdim=True), p, 0.0) @ v  # a query that sees no key: 0
