"""FLOP and byte counts, checked against numbers worked out by hand or counted independently."""

import pytest
import torch

from bench.points import attention_bytes, attention_flops, gelu_bytes, layer_norm_bytes, model_flops
from bench.sweep import counts
from bench.points import Point, model_config
from bench.results import fill_rates, make_row


def test_layer_norm_bytes_by_hand():
    # 3 rows of 5 bf16 values: x 30 B, y 30 B, weight + bias 20 B, fp32 mean + rstd 3 * 8 = 24 B
    assert layer_norm_bytes(3, 5, 2, "fwd") == 30 + 30 + 20 + 24
    # backward reads x, dy (60), weight (10), mean + rstd (24); writes dx (30), dweight + dbias (20)
    assert layer_norm_bytes(3, 5, 2, "bwd") == 60 + 10 + 24 + 30 + 20
    assert layer_norm_bytes(3, 5, 2, "fwd+bwd") == 104 + 144


def test_gelu_bytes_by_hand():
    # 3 rows of 7 fp32 values: x 84 B, y 84 B, bias 28 B
    assert gelu_bytes(3, 7, 4, "fwd") == 84 + 84 + 28
    # backward: read x, dy (168) and bias (28); write dx (84) and dbias (28)
    assert gelu_bytes(3, 7, 4, "bwd") == 168 + 28 + 84 + 28
    assert gelu_bytes(3, 7, 4, "fwd+bwd") == 196 + 308


def test_attention_flops_from_the_matmuls():
    B, H, S, D = 2, 3, 5, 8
    qk = 2 * S * S * D  # (S, D) @ (D, S): S*S dot products of length D, a multiply and an add each
    pv = 2 * S * S * D  # (S, S) @ (S, D)
    full = B * H * (qk + pv)
    assert attention_flops(B, H, S, S, D, "fwd", causal=False) == full
    assert attention_flops(B, H, S, S, D, "fwd") == full // 2  # the convention: half are masked
    # the exact causal count keeps S(S+1)/2 of the S*S (query, key) pairs; the convention is within S/(S+1)
    pairs = sum(1 for i in range(S) for j in range(S) if j <= i)
    exact = B * H * pairs * 4 * D
    assert full // 2 <= exact and exact * S / (S + 1) == full // 2
    # backward: QK^T recomputed, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: five of them
    bwd = 5 * B * H * 2 * S * S * D // 2
    assert attention_flops(B, H, S, S, D, "bwd") == bwd
    assert attention_flops(B, H, S, S, D, "fwd+bwd") == full // 2 + bwd


def test_attention_bytes_by_hand():
    B, H, S, D = 1, 2, 4, 8
    elem = 2
    one = B * H * S * D * elem  # one (B, H, S, D) bf16 tensor: 128 bytes
    lse = 4 * B * H * S
    assert attention_bytes(B, H, S, S, D, elem, "fwd") == 4 * one + lse  # q, k, v read; o written
    assert attention_bytes(B, H, S, S, D, elem, "bwd") == 8 * one + lse  # q,k,v,o,dO read; dq,dk,dv written


def _matmul_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_model_flops_match_a_flop_counter_on_the_eager_model():
    from gpt2.model import GPT2

    cfg = model_config("tiny", n_layer=2, n_embd=64, n_head=4, vocab_size=97, block_size=32)
    model = GPT2(cfg).set_kernels("torch")
    # 12 L d^2 + d V: what every nn.Linear (and the tied LM head) holds
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert cfg.matmul_weights == linear
    B, S = 3, 16
    idx = torch.randint(0, cfg.vocab_size, (B, S))
    counted = _matmul_flops(lambda: model(idx))
    # eager attention computes every (query, key) pair: 4 * S * S * d per layer and sequence;
    # the model-FLOP convention counts the causal half of them
    full_attention = 4 * cfg.n_layer * B * S * S * cfg.n_embd
    assert counted - full_attention // 2 == model_flops(cfg, B, S, "fwd")
    targets = torch.randint(0, cfg.vocab_size, (B, S))
    counted_train = _matmul_flops(lambda: model(idx, targets)[1].backward())
    assert counted_train - 3 * full_attention // 2 == model_flops(cfg, B, S, "train")


def test_counts_per_point():
    p = Point("attention", "attention_causal", "fwd+bwd", "gpt2", 64, 12, 1024, 16, "bf16")
    flops, nbytes = counts(p)
    assert flops == 7 * 16 * 12 * 1024 * 1024 * 64  # 3.5 x (4 B H S^2 D / 2)
    assert nbytes == attention_bytes(16, 12, 1024, 1024, 64, 2, "fwd+bwd")
    p = Point("layer_norm", "layer_norm", "fwd", "gpt2-xl", 1600, 25, 512, 128, "fp32")
    assert counts(p) == (None, layer_norm_bytes(512 * 128, 1600, 4, "fwd"))
    # the loss: three (8192 x 768) @ (768 x 50257) matmuls for fwd+bwd (logits, dx, dweight)
    p = Point("loss", "linear_cross_entropy", "fwd+bwd", "gpt2", 768, 12, 1024, 8, "bf16")
    assert counts(p) == (3 * 2 * 8192 * 768 * 50257, None)
    p = Point("model", "gpt2_train_step", "train", "gpt2", 768, 12, 1024, 8, "bf16")
    flops, nbytes = counts(p)
    assert nbytes is None
    # gpt2: 12 * 12 * 768^2 + 768 * 50257 matmul weights
    assert flops == 3 * (2 * (12 * 12 * 768**2 + 768 * 50257) * 8 * 1024 + 2 * 12 * 8 * 1024**2 * 768)


@pytest.mark.parametrize("size, seq_len, batch", [("gpt2", 1024, 8), ("gpt2-xl", 2048, 2)])
def test_trainer_and_bench_report_the_same_mfu(size, seq_len, batch):
    """One step time and shape: the trainer's log column and the benchmark's frac_flops agree."""
    from gpt2.train import mfu

    cfg = model_config(size)
    p = Point("model", "gpt2_train_step", "train", size, cfg.n_embd, cfg.n_head, seq_len, batch, "bf16")
    ms, peak = 250.0, 989e12
    row = fill_rates(make_row(p, "triton", "ours", ms=ms, flops=counts(p)[0]), {"matmul_tflops": peak / 1e12})
    tokens_per_s = batch * seq_len / (ms * 1e-3)
    assert mfu(cfg, seq_len, tokens_per_s, peak) == pytest.approx(row["frac_flops"], rel=1e-12)
