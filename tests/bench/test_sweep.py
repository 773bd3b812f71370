"""Sweep planning: narrowing, batch sizes, and the order that --budget relies on."""

import math

import pytest

from bench.points import (
    ATTN_TILE_M, DEFAULT_DEVICE, MEM_FRACTION, MODEL_TOKENS_TARGET, PROGRAMS_PER_SM, SEQ_LENS, SIZES, DeviceInfo,
    batch_for, dtype_bytes, model_config,
)
from bench.sweep import make_sweep, plan, seq_rank, tier

H100 = DeviceInfo(**DEFAULT_DEVICE)


def test_full_sweep_covers_every_family_size_length_pass_and_impl():
    tasks = plan(make_sweep(), H100)
    seen = {(t.point.family, t.point.pass_, t.point.size, t.point.seq_len, t.impl) for t in tasks}
    assert len(seen) == len(tasks), "a task is planned twice"
    for size in SIZES:
        for S in SEQ_LENS:
            for p in ("fwd", "fwd+bwd"):
                for impl in ("triton", "eager", "compile", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn",
                             "sdpa-math", "flash_attn"):
                    assert ("attention", p, size, S, impl) in seen
            for p in ("fwd", "bwd", "fwd+bwd"):
                for impl in ("triton", "eager", "compile", "liger"):
                    assert ("layer_norm", p, size, S, impl) in seen
            for p in ("fwd", "train"):
                for impl in ("eager", "eager+sdpa", "triton-attention", "triton-layernorm", "triton-gelu",
                             "triton-loss", "triton", "compile"):
                    assert ("model", p, size, S, impl) in seen
            for p in ("fwd", "fwd+bwd"):
                for impl in ("triton", "eager", "compile", "liger"):
                    assert ("loss", p, size, S, impl) in seen
                    assert ("add_layer_norm", p, size, S, impl) in seen
        for impl in ("triton", "eager", "eager+sdpa", "hf"):
            assert any(k[0] == "model" and k[1] == "generate" and k[2] == size and k[4] == impl for k in seen)
    # Hugging Face's GPT-2, as shipped and patched: gpt2 and gpt2-xl at S = 1024 only
    hf = {k for k in seen if k[0] == "hf"}
    assert hf == {("hf", p, size, 1024, impl) for p in ("fwd", "train") for size in ("gpt2", "gpt2-xl")
                  for impl in ("triton", "eager", "sdpa")}
    # the widths and head counts come from GPT2Config.from_name
    for t in tasks:
        cfg = model_config(t.point.size)
        want = {"layer_norm": cfg.n_embd, "gelu": 4 * cfg.n_embd, "attention": cfg.head_size,
                "model": cfg.n_embd, "hf": cfg.n_embd, "add_layer_norm": cfg.n_embd, "loss": cfg.n_embd}[t.point.family]
        assert t.point.width == want and t.point.heads == cfg.n_head


def test_narrowed_sweep_has_only_what_was_asked():
    sweep = make_sweep(only="attention", sizes="gpt2,gpt2-xl", seq_lens="1024,2048")
    tasks = plan(sweep, H100)
    assert {t.point.family for t in tasks} == {"attention"}
    assert {t.point.size for t in tasks} == {"gpt2", "gpt2-xl"}
    assert {t.point.seq_len for t in tasks} == {1024, 2048}
    assert len(tasks) == 2 * 2 * 2 * 9  # sizes x lengths x passes x implementations (incl. triton-sm80, the sm_80 candidates forced)


def test_quick_and_no_compile_and_aliases():
    quick = make_sweep(quick=True)
    assert quick.sizes == ("gpt2",) and quick.seq_lens == (1024,)
    tasks = plan(make_sweep(only="ln,e2e", seq_lens="512", compile=False), H100)
    assert {t.point.family for t in tasks} == {"layer_norm", "model"}
    assert not any(t.impl == "compile" for t in tasks)


@pytest.mark.parametrize("kwargs, words", [
    (dict(only="attention,conv"), "conv"),
    (dict(sizes="gpt3"), "gpt3"),
    (dict(seq_lens="1024,abc"), "abc"),
    (dict(seq_lens="0"), "positive"),
    (dict(dtype="int8"), "int8"),
    (dict(smoke=True, sizes="gpt2"), "--sizes"),
    (dict(smoke=True, seq_lens="1024"), "interpreter"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, words):
    with pytest.raises(ValueError, match=words):
        make_sweep(**kwargs)


def test_smoke_sweep_is_tiny():
    sweep = make_sweep(smoke=True)
    assert sweep.sizes == ("tiny",) and max(sweep.seq_lens) <= 64
    tasks = plan(sweep, DeviceInfo("cpu", 1, 8 * 2**30))
    assert {t.point.family for t in tasks} == {"attention", "layer_norm", "gelu", "model", "hf", "add_layer_norm", "loss"}
    assert all(t.point.batch * t.point.seq_len <= 64 for t in tasks)


def test_seq_rank_puts_1024_first_then_spreads_out():
    assert sorted(SEQ_LENS, key=seq_rank) == [1024, 2048, 512, 4096, 256, 8192, 128]


def test_order_measures_the_target_points_first():
    tasks = plan(make_sweep(), H100)
    first = tasks[0]
    assert (first.point.family, first.point.pass_, first.point.size, first.point.seq_len, first.impl) == (
        "attention", "fwd", "gpt2", 1024, "triton")
    tiers = [t.tier for t in tasks]
    assert tiers == sorted(tiers)
    tier0 = {(t.point.family, t.point.pass_, t.point.size, t.point.seq_len, t.impl) for t in tasks if t.tier == 0}
    for impl in ("triton", "eager", "eager+sdpa", "compile"):
        assert ("model", "train", "gpt2", 1024, impl) in tier0
    for impl in ("triton", "eager+sdpa"):
        assert ("model", "train", "gpt2-xl", 1024, impl) in tier0
    assert any(k[:3] == ("model", "generate", "gpt2") and k[4] == "hf" for k in tier0)
    for fam in ("layer_norm", "gelu"):
        for p in ("fwd", "fwd+bwd"):  # the targets compare these with torch.compile
            for size in ("gpt2", "gpt2-xl"):
                for impl in ("triton", "eager", "compile"):
                    assert (fam, p, size, 1024, impl) in tier0
    assert ("layer_norm", "bwd", "gpt2", 1024, "liger") in tier0
    assert ("layer_norm", "bwd", "gpt2", 1024, "compile") not in tier0
    for p in ("fwd", "fwd+bwd"):
        for impl in ("triton", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "eager"):
            assert ("attention", p, "gpt2", 1024, impl) in tier0
        assert ("attention", p, "gpt2", 1024, "compile") not in tier0  # no target is stated against it
    # within tier 0, every torch.compile task comes after every other one (each costs seconds)
    t0 = [t for t in tasks if t.tier == 0]
    first_compile = next(i for i, t in enumerate(t0) if t.impl == "compile")
    assert all(t.impl == "compile" for t in t0[first_compile:])
    # expensive end-to-end compiles away from the targets come last
    assert tier(tasks[-1].point, tasks[-1].impl) == max(tiers)


def test_row_wise_batches_fill_the_gpu():
    for size in SIZES:
        N = model_config(size).n_embd
        for fam, width in (("layer_norm", N), ("gelu", 4 * N)):
            for S in SEQ_LENS:
                B = batch_for(fam, S, width=width, heads=12, dtype="bf16", device=H100)
                assert B * S >= 65536 >= 8192  # the kernel targets ask for >= 8192 rows
                assert (B - 1) * S < 65536  # and no more than needed
                assert 4 * B * S * width * 2 <= MEM_FRACTION * H100.total_mem


def test_attention_batch_gives_every_multiprocessor_work():
    for size in SIZES:
        cfg = model_config(size)
        for S in SEQ_LENS:
            B = batch_for("attention", S, width=64, heads=cfg.n_head, dtype="bf16", device=H100)
            assert B * S >= 16384
            assert B * cfg.n_head * math.ceil(S / ATTN_TILE_M) >= PROGRAMS_PER_SM * H100.sm_count


def test_batches_shrink_to_fit_memory():
    small = DeviceInfo("small", 132, 2**30)  # 1 GiB
    B = batch_for("attention", 8192, width=64, heads=25, dtype="fp32", device=small)
    assert B == 1 or 8 * B * 25 * 8192 * 64 * dtype_bytes("fp32") <= MEM_FRACTION * small.total_mem
    assert B < batch_for("attention", 8192, width=64, heads=25, dtype="fp32", device=H100)
    B = batch_for("gelu", 128, width=6400, heads=25, dtype="fp32", device=small)
    assert 4 * B * 128 * 6400 * 4 <= MEM_FRACTION * small.total_mem


def test_model_batch_is_a_fixed_token_count():
    for S in SEQ_LENS:
        B = batch_for("model", S, width=768, heads=12, dtype="bf16", device=H100)
        assert B * S >= MODEL_TOKENS_TARGET and (B - 1) * S < MODEL_TOKENS_TARGET


def test_help_lists_every_family_of_the_table(capsys):
    from bench.__main__ import main
    from bench.families import FAMILIES

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    listed = text.split("comma-separated: ", 1)[1].split(" --sizes", 1)[0]
    assert listed == ("attention, layer_norm, gelu, model, hf, add_layer_norm, loss, generation (opt-in)")
    assert [name.split()[0] for name in listed.split(", ")] == list(FAMILIES)


def test_every_family_counts_its_points_and_names_its_lines():
    """Each row of the table plans points its counts understand, ours first among its lines."""
    from bench.families import FAMILIES
    from bench.sweep import counts

    for name, fam in FAMILIES.items():
        tasks = plan(make_sweep(only=name, sizes="gpt2", seq_lens="1024"), H100)
        assert tasks and {t.point.family for t in tasks} == {name}
        for t in tasks:
            flops, nbytes = counts(t.point)
            assert (flops or 0) > 0 or (nbytes or 0) > 0, t.label()
            assert fam.impls_for(t.point)[0][1] == "ours", t.label()
