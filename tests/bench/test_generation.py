"""bench --only generation: the plan (every size, batch, prompt and line; the decode
microbenchmark's Sk range), its byte counts, and one point of each kind run on the CPU through
the interpreter (the pipeline, not performance: the numbers need a GPU)."""

import pytest

from bench.generation import DECODE_IMPLS, DECODE_SEQ_LENS, GEN_BATCHES, GEN_IMPLS, GEN_PROMPTS
from bench.points import DEFAULT_DEVICE, SIZES, DeviceInfo, Point, model_config
from bench.sweep import counts, make_sweep, plan

H100 = DeviceInfo(**DEFAULT_DEVICE)


def test_plan_covers_sizes_batches_prompts_and_lines():
    tasks = plan(make_sweep(only="generation"), H100)
    seen = {(t.point.pass_, t.point.size, t.point.seq_len, t.point.batch, t.impl) for t in tasks}
    assert len(seen) == len(tasks)
    for size in SIZES:
        for prompt in GEN_PROMPTS:
            for B in GEN_BATCHES:
                for impl, _ in GEN_IMPLS:
                    assert ("generate", size, prompt, B, impl) in seen
        for Sk in DECODE_SEQ_LENS:
            for impl, _ in DECODE_IMPLS:
                assert ("fwd", size, Sk, 1, impl) in seen
    assert {t.point.heads for t in tasks} == {model_config(s).n_head for s in SIZES}  # 12 ... 25
    # The target lines at gpt2, batch 1, run first.
    first = {(t.impl, t.point.batch) for t in tasks if t.tier == 0}
    assert {("triton+cudagraphs", 1), ("hf", 1), ("hf-static-compile", 1)} <= first
    # Opt-in: the default sweep does not include it, aliases reach it.
    assert all(t.point.family != "generation" for t in plan(make_sweep(), H100))
    assert make_sweep(only="decode").families == ("generation",)


def test_decode_bytes_are_the_kv_read():
    p = Point("generation", "decode_attention", "fwd", "gpt2-xl", 64, 25, 4096, 1, "bf16")
    flops, nbytes = counts(p)
    assert nbytes == (2 * 4096 + 2) * 25 * 64 * 2 and flops == 4 * 25 * 4096 * 64


@pytest.mark.usefixtures("one_thread")
def test_one_point_of_each_kind_runs_on_the_cpu():
    from bench import generation
    from bench.points import SMOKE_SIZE
    from bench.timing import Context, Timer

    ctx = Context(device="cpu", dtype="fp32", timer=Timer("cpu", slow_warmup=0, slow_reps=1),
                  info=DeviceInfo("cpu", 1, 2**30), smoke=True, compile_backend="aot_eager")
    pts = generation.points((SMOKE_SIZE,), (), "fp32", ctx.info, smoke=True)
    gen = next(p for p in pts if p.pass_ == "generate")
    out = generation.run(gen, "triton", ctx)
    assert out["tokens_per_s"] > 0 and "greedy" in out["note"]
    dec = next(p for p in pts if p.pass_ == "fwd" and p.seq_len == 48)
    out = generation.run(dec, "triton", ctx)
    assert out["max_abs_err"] < 1e-4 and "splits" in out["note"]


@pytest.mark.parametrize("impl", ["triton", "triton-train"])
def test_decode_lines_compute_attention(impl):
    # Each decode-attention line of the benchmark calls its kernel as the kernel expects (the
    # triton-train line once lacked the op's deterministic argument and failed on every point).
    import torch

    from bench.generation import _decode_function
    from gpt2_kernels.attention import attention_reference

    q, k, v = (torch.randn(1, 2, s, 64) for s in (1, 70, 70))
    got = _decode_function(impl)(q, k, v)
    torch.testing.assert_close(got, attention_reference(q, k, v, True, 1 / 8.0), atol=1e-5, rtol=1e-5)
