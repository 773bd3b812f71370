"""FLOP and byte counts of a point: the same for every implementation of it. The op families
(bench/families.py) count with the functions below; ``model_counts`` counts the whole models'.

Bytes are what a one-pass implementation must move at least (inputs read once, outputs
written once); GB/s from them is an *effective* bandwidth, comparable across implementations.

- LayerNorm, rows R, width N, element size e:
  fwd  = R*N*e (read x) + R*N*e (write y) + 2*N*e (weight, bias) + 8*R (fp32 mean, rstd)
  bwd  = 2*R*N*e (read x, dy) + N*e (weight) + 8*R (mean, rstd) + R*N*e (write dx) + 2*N*e
         (write dweight, dbias); a kernel's per-block partial sums are not counted.
- GELU with bias, rows R, width N: fwd = 2*R*N*e + N*e; bwd = 2*R*N*e (read x, dy) + N*e
  (bias) + R*N*e (dx) + N*e (dbias).
- add + LayerNorm: LayerNorm's bytes plus reading the residual and writing h once each:
  fwd = LayerNorm fwd + 2*R*N*e; bwd = LayerNorm bwd + 2*R*N*e (read dh, write the second
  input's gradient, which is the same tensor here but a separate write for an eager add).
- Linear cross-entropy, rows R, width d, vocabulary V: 2*R*V*d FLOPs per matmul, one forward
  (logits), three fwd+bwd (logits, dx, dweight); bytes are not counted (matmul-bound).
- Attention, causal, q (B,H,S,D): fwd FLOPs = 4*B*H*S*S*D / 2 (two matmuls, QK^T and PV, of
  2*S*S*D each per head, half of them masked); backward = 2.5 x forward (FlashAttention's
  convention: five matmuls of which one recomputes QK^T), so fwd+bwd = 3.5 x forward.
  Bytes fwd = (q, k, v, o) 4*B*H*S*D*e + 4*B*H*S (fp32 logsumexp); bwd = read q,k,v,o,dO and
  write dq,dk,dv: 8*B*H*S*D*e + 4*B*H*S.
- The model (model FLOPs, no recomputation; PaLM's appendix B): per token, 2 FLOPs per weight of
  every matmul, 12*L*d^2 (attention qkv and projection, MLP up and down) + d*V (LM head), plus
  causal attention 2*L*S*d (QK^T and PV, halved); a training step is 3x the forward. Biases,
  LayerNorm, GELU, softmax and the optimizer are not counted. The count is
  ``gpt2.GPT2Config.flops_per_token``, which the trainer's MFU uses too. MFU = achieved /
  measured matmul rate.
"""

from .points import dtype_bytes, model_config


def layer_norm_bytes(rows, width, elem, pass_):
    fwd = 2 * rows * width * elem + 2 * width * elem + 8 * rows
    bwd = 3 * rows * width * elem + 3 * width * elem + 8 * rows
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def add_layer_norm_bytes(rows, width, elem, pass_):
    extra = {"fwd": 2, "bwd": 2, "fwd+bwd": 4}[pass_] * rows * width * elem
    return layer_norm_bytes(rows, width, elem, pass_) + extra


def gelu_bytes(rows, width, elem, pass_):
    fwd = 2 * rows * width * elem + width * elem
    bwd = 3 * rows * width * elem + 2 * width * elem
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def linear_cross_entropy_flops(rows, width, vocab, pass_):
    return {"fwd": 1, "fwd+bwd": 3}[pass_] * 2 * rows * vocab * width


def attention_flops(batch, heads, seq_q, seq_k, head_dim, pass_, causal=True):
    fwd = 4 * batch * heads * seq_q * seq_k * head_dim
    if causal:
        fwd //= 2
    return {"fwd": fwd, "bwd": fwd * 5 // 2, "fwd+bwd": fwd * 7 // 2}[pass_]


def attention_bytes(batch, heads, seq_q, seq_k, head_dim, elem, pass_):
    bh = batch * heads
    fwd = bh * (2 * seq_q + 2 * seq_k) * head_dim * elem + 4 * bh * seq_q
    bwd = bh * (4 * seq_q + 4 * seq_k) * head_dim * elem + 4 * bh * seq_q
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def model_matmul_params(cfg):
    """Weights that take part in a matmul per token: 12*L*d^2 in the blocks, d*V in the LM head."""
    return cfg.matmul_weights


def model_flops(cfg, batch, seq_len, pass_):
    """Model FLOPs of a forward ("fwd") or training step ("train"): GPT2Config.flops_per_token,
    the count the trainer's MFU uses too."""
    return batch * seq_len * cfg.flops_per_token(seq_len, train={"fwd": False, "train": True}[pass_])


def generation_bytes(cfg, batch, prompt, new, elem):
    """Bytes a decode step must read, summed over the new tokens: every weight once per step
    (the parameters, counted once: the LM head is tied to the token embedding), and the
    keys and values cached so far."""
    params = model_matmul_params(cfg)  # the tied embedding is read once, as the LM head
    total = 0
    for step in range(new):
        cached = prompt + step
        total += params * elem + 2 * cfg.n_layer * batch * cached * cfg.n_embd * elem
    return total


def model_counts(point):
    """(flops, bytes) of a point of the whole-model families (model, hf, generation); None where
    the count does not apply."""
    elem = dtype_bytes(point.dtype)
    if point.family in ("model", "hf"):
        cfg = model_config(point.size, block_size=max(1024, point.seq_len))
        if point.pass_ == "generate":
            prompt, new = point.get("prompt"), point.get("new")
            return None, generation_bytes(cfg, point.batch, prompt, new, elem)
        return model_flops(cfg, point.batch, point.seq_len, point.pass_), None
    if point.family == "generation":
        cfg = model_config(point.size)
        if point.pass_ == "generate":
            # per new token, as the row's ms is
            return None, generation_bytes(cfg, point.batch, point.get("prompt"), point.get("new"), elem) // point.get("new")
        # decode attention, Sq = 1: K and V read once, q read and o written
        B, H, Sk, D = point.batch, point.heads, point.seq_len, point.width
        return 4 * B * H * Sk * D, (2 * Sk + 2) * B * H * D * elem
    raise ValueError(f"{point.family!r} is not a whole-model family")
