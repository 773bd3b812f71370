"""A FAKE results file for the plotting and schema tests: invented numbers, NOT a measurement.

It plans the real sweep (every family, size and sequence length) and makes up a time for each
task from a toy model of each implementation, with a few out-of-memory, skipped and
unavailable rows, so that every plot and every target has something to draw. Its meta says
"FAKE" in the device name and label; it is written to a temporary folder by the tests and
never to bench/results/.
"""

import math
import random

from bench.points import DEFAULT_DEVICE, DeviceInfo, model_config
from bench.results import fill_rates, fill_speedups, make_row
from bench.sweep import counts, make_sweep, plan

FAKE_DEVICE = "FAKE GPU (test data, not a measurement)"
LIMITS = {"copy_gbps": 4300.0, "matmul_tflops": 790.0, "matmul_dtype": "bf16", "method": "fake"}

# Fraction of the copy bandwidth (row-wise ops) or matmul rate (attention) each impl reaches.
_BW = {"triton": 0.91, "eager": 0.62, "compile": 0.86, "liger": 0.80}
_ATTN = {"triton": 0.52, "triton-sm80": 0.46, "sdpa-flash": 0.45, "sdpa-cudnn": 0.47, "sdpa-efficient": 0.33, "sdpa-math": 0.05,
         "eager": 0.06, "compile": 0.2}
_MFU = {"triton": 0.50, "eager": 0.22, "eager+sdpa": 0.36, "compile": 0.46, "triton-attention": 0.40,
        "triton-layernorm": 0.38, "triton-gelu": 0.38, "triton-loss": 0.38}
_TOKENS_PER_S = {"triton": 420.0, "eager": 150.0, "eager+sdpa": 190.0, "hf": 170.0}


def fake_meta():
    return {
        "device": FAKE_DEVICE, "device_slug": "fake-gpu", "sm_count": 132, "total_mem_bytes": 80 * 2**30,
        "capability": "9.0", "torch": "0.0-fake", "triton": "0.0-fake", "cuda": "0.0-fake", "python": "3",
        "date": "2000-01-01 00:00 UTC", "git_commit": "fake", "argv": [], "smoke": False,
        "label": "FAKE DATA (tests)", "settings": {"dtype": "bf16", "budget": None}, "limits": dict(LIMITS),
        "peers": {"liger_kernel": "0-fake", "flash_attn": None, "transformers": "0-fake"}, "status": "complete",
    }


def fake_rows(seed=0, sizes=None, seq_lens=None, smoke=False, slower=None):
    """smoke: the smoke run's points (the tiny model, S 16 and 32); slower: {impl: factor}
    multiplies the invented times of those implementations (a change to compare)."""
    rng = random.Random(seed)
    info = DeviceInfo(**DEFAULT_DEVICE)
    sweep = make_sweep(sizes=sizes, seq_lens=seq_lens, smoke=smoke)
    rows = []
    for task in plan(sweep, info):
        p, impl = task.point, task.impl
        flops, nbytes = counts(p)
        status, note, ms, extra = "ok", "fake", None, {}
        jitter = 1 + 0.04 * (rng.random() - 0.5)
        if p.family == "loss":  # matmul-bound; liger not installed
            status = "unavailable" if impl == "liger" else "ok"
            if status == "ok":
                ms = flops / (LIMITS["matmul_tflops"] * 1e12 * (0.6 if impl == "triton" else 0.5)) * 1e3 * jitter
                extra["peak_mem_bytes"] = int(p.rows * model_config(p.size).vocab_size * (2 if impl == "triton" else 12)
                                              / (64 if impl == "triton" else 1))
        elif p.family in ("layer_norm", "gelu", "add_layer_norm"):
            eff = _BW.get(impl)
            if eff is None or (p.family == "gelu" and impl == "liger"):
                status = "unavailable"
            else:
                if impl == "liger" and p.pass_ == "bwd":
                    eff = 0.35
                ms = nbytes / (LIMITS["copy_gbps"] * 1e9 * eff) * 1e3 * jitter
        elif p.family == "attention":
            if impl == "flash_attn":
                status = "unavailable"
            elif impl in ("eager", "sdpa-math") and p.seq_len >= 8192 and p.size == "gpt2-xl":
                status = "oom"
            else:
                ramp = 0.6 + 0.4 * min(1.0, math.log2(p.seq_len / 128) / 4)
                ms = flops / (LIMITS["matmul_tflops"] * 1e12 * _ATTN[impl] * ramp) * 1e3 * jitter
                extra["peak_mem_bytes"] = int(8 * p.batch * p.heads * p.seq_len * 64 * 2 * (
                    p.seq_len / 64 if impl in ("eager", "sdpa-math", "compile") else 1))
        else:
            cfg = model_config(p.size)
            if p.pass_ == "generate":
                tps = _TOKENS_PER_S[impl] * (12 / cfg.n_layer) * jitter
                ms = 1e3 / tps
                extra["tokens_per_s"] = tps
            elif impl == "compile" and p.seq_len > 2048:
                status = "skipped"
                note = "not measured: --budget (fake)"
            else:
                mfu = _MFU[{"sdpa": "eager+sdpa"}.get(impl, impl)] * (0.9 + 0.1 * min(1.0, cfg.n_layer / 48))
                ms = flops / (LIMITS["matmul_tflops"] * 1e12 * mfu) * 1e3 * jitter
                params = 12 * cfg.n_layer * cfg.n_embd**2 + cfg.vocab_size * cfg.n_embd
                act = p.batch * p.seq_len * cfg.n_layer * cfg.n_embd * 34 * (1.15 if impl == "eager" else 1.0)
                extra["peak_mem_bytes"] = int(params * 8 + act * (0.97 if impl == "triton" else 1.0))
                extra["tokens_per_s"] = p.batch * p.seq_len / (ms * 1e-3)
        if ms and slower:
            ms *= slower.get(impl, 1.0)
        spread = {"ms": ms, "ms_p20": ms and ms * (1 - 0.03 * rng.random()),
                  "ms_p80": ms and ms * (1 + 0.05 * rng.random())}
        row = make_row(p, impl, task.role, status=status, note=note, flops=flops, bytes=nbytes,
                       **({**spread, **extra} if status == "ok" else {}))
        rows.append(fill_rates(row, LIMITS))
    return fill_speedups(rows)
