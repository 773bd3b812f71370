"""The online-softmax loop over key tiles that the training forward (``gpt2_kernels.attention``)
and the split-KV decode kernel (``gpt2_kernels.decode_attention``) share, with the pieces the
attention backward shares with it: which keys a query sees, the tile loads, dropout's keep-mask.

One program holds a tile of queries Q (rows offs_m) and sweeps key tiles [start, end):

    S = Q K_j^T                                  (rows, BLOCK_N) fp32
    m' = max(m, rowmax(S) * qk_scale)            running max, base 2
    P = exp2(S * qk_scale - m')                  alpha = exp2(m - m')
    l' = l * alpha + rowsum(P)                   acc' = acc * alpha + P V_j

The caller divides acc by l at the end (and the training forward saves m + log2(l) for its
backward). Both kernels call the loop up to three times, over the tiles that need a mask
(MASKED) and the ones every row sees whole, so the whole tiles pay for no mask; the decode
kernel uses its pointer-load, unpipelined, dropout-free paths.
"""

import triton
import triton.language as tl


@triton.jit
def visible_keys(rows, cols, lo, hi, diag, CAUSAL: tl.constexpr, RANGES: tl.constexpr):
    """An attention tile's bool mask, query i may see key j: j < hi, j >= lo with RANGES, j <= i
    + diag when CAUSAL. rows and cols broadcast to the tile: (M, 1) and (1, N), or (1, M) and
    (N, 1) for a transposed one."""
    keep = cols < hi
    if RANGES:
        keep = keep & (cols >= lo)
    if CAUSAL:
        keep = keep & (cols <= rows + diag)
    return keep


@triton.jit
def _advance(A, B, rows, stride_a, stride_b, TMA: tl.constexpr):
    """Pointers A and B moved ``rows`` rows on; tensor descriptors (TMA) are returned as they
    are, since they load by coordinates. The jump to a loop's first tile takes 64-bit strides
    (row * stride may pass 2^31); the step of one tile fits 32 bits, and its 32-bit multiply
    is what keeps the pointer loops' registers where they were (a 64-bit step spills 2 words in
    sm_80's dQ at D=32 with Triton 3.9)."""
    if not TMA:
        A += rows * stride_a
        B += rows * stride_b
    return A, B


@triton.jit
def _load_rows(X, start, rows, bound, TMA: tl.constexpr, MASKED: tl.constexpr):
    """Rows [start, start + len(rows)) of a (rows, HEAD_DIM) matrix, one tile of an inner loop:
    from the tensor descriptor X (TMA: rows past the end read as 0), else from pointers X
    already at row ``start``, rows >= ``bound`` read as 0 when MASKED (full tiles need no mask).
    ``rows`` are the tile's row indices, start + arange."""
    if TMA:
        x = X.load([start, 0])
    elif MASKED:
        x = tl.load(X, mask=rows[:, None] < bound, other=0.0)
    else:
        x = tl.load(X)
    return x


@triton.jit
def _keep(seed, rows, start_n, seq_k, dropout_p, BLOCK_N: tl.constexpr):
    """Dropout's keep-mask for query rows ``rows`` (R,) and keys [start_n, start_n + BLOCK_N)
    of one head: (R, BLOCK_N) bool, in (query, key) order (transpose it for a (key, query)
    tile). start_n is a multiple of 8.

    Triton's Philox generator, counter-based: the counter of (i, j) is i * ceil(seq_k / 8) +
    j // 8, so every program (the forward, both backward kernels, attention_dropout_mask)
    regenerates the same bit for the same (head, i, j) and nothing is stored; ``seed`` is the
    call's seed plus the head's index, so heads draw apart. One Philox call gives four 32-bit
    words, each two 16-bit uniforms: 8 keys a call, which is what keeps dropout's cost per
    score down (one call per score costs ~55 instructions per score on sm_90). A key is kept
    when its uniform is >= floor(dropout_p * 65536): the rate is dropout_p to within 2^-16."""
    groups = start_n // 8 + tl.arange(0, BLOCK_N // 8)
    r0, r1, r2, r3 = tl.randint4x(seed, rows[:, None] * tl.cdiv(seq_k, 8) + groups[None, :])
    a = tl.join(tl.join(r0 & 0xFFFF, r0 >> 16), tl.join(r1 & 0xFFFF, r1 >> 16))
    b = tl.join(tl.join(r2 & 0xFFFF, r2 >> 16), tl.join(r3 & 0xFFFF, r3 >> 16))
    u16 = tl.reshape(tl.join(a, b), [rows.shape[0], BLOCK_N])
    return u16 >= (tl.full([], 65536.0, tl.float32) * dropout_p).to(tl.uint32)


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, qk, q, K, V, stride_kn, stride_vn, offs_m, start, end, lo, hi, diag, qk_scale,
                    seed, dropout_p, seq_k,
                    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr, TMA: tl.constexpr,
                    PIPELINE: tl.constexpr, RANGES: tl.constexpr, DROPOUT: tl.constexpr, DOT: tl.constexpr,
                    EMPTY_ROWS: tl.constexpr):
    # Key tiles [start, end). K and V are tensor descriptors (TMA; rows past the end of the
    # keys read as zeros, so no load needs a mask), or pointers to the tile at key row 0.
    # MASKED tiles check the causal diagonal (query i sees key j iff j <= i + diag), the end
    # of the sequence's keys (j < hi) and, with RANGES, its start (j >= lo); the others need
    # not. EMPTY_ROWS: a row may reach a masked tile having seen no key at all (per-sequence
    # ranges; a decode split past a row's last key). With DROPOUT, P V takes P with the
    # dropped scores zeroed (the keep-mask of _keep: a counter-based draw per (row, key),
    # regenerated by the backward); the row sums l_i do not, and the epilogue scales by
    # 1 / (1 - dropout_p).
    # PIPELINE (with TMA): `qk` arrives holding tile `start`'s Q K^T, and each iteration issues
    # the NEXT tile's Q K^T before this tile's softmax, so the tensor cores run it while the
    # exp units work (FlashAttention-3's intra-warpgroup overlap). What it returns in `qk` is
    # tile `end`'s product: the caller's next loop starts there.
    offs_n = tl.arange(0, BLOCK_N)
    K, V = _advance(K, V, start, stride_kn.to(tl.int64), stride_vn.to(tl.int64), TMA)
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if PIPELINE:
            s = qk
            qk = tl.dot(q, tl.trans(K.load([start_n + BLOCK_N, 0]).to(DOT)))
        else:
            s = tl.dot(q, tl.trans(_load_rows(K, start_n, cols, hi, TMA, MASKED).to(DOT)))
        if MASKED:
            s = tl.where(visible_keys(offs_m[:, None], cols[None, :], lo, hi, diag, CAUSAL, RANGES), s, float("-inf"))
        # Base-2 scores s * qk_scale. The max is taken before scaling (scale > 0) so that
        # s * qk_scale - m is a single fused multiply-add per score.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        if MASKED and EMPTY_ROWS:
            # A row may have seen no key yet (m = -inf): shift by 0 then, so that
            # exp2(-inf - -inf) never makes a NaN; its p and alpha are 0 either way. Tiles
            # seen whole need no guard: every row sees a key there.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        p = tl.math.exp2(s * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, start_n, cols, hi, TMA, MASKED)
        if DROPOUT:
            p = tl.where(_keep(seed, offs_m, start_n, seq_k, dropout_p, BLOCK_N), p, 0.0)
        # P is rounded to V's dtype for the tensor cores (fp32 accumulation), as FA2 does.
        acc = tl.dot(p.to(v.dtype).to(DOT), v.to(DOT), acc * alpha[:, None])
        m_i = m_new
        K, V = _advance(K, V, BLOCK_N, stride_kn, stride_vn, TMA)
    return acc, l_i, m_i, qk
