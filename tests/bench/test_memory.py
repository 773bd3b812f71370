"""python -m bench --memory: the count on fake tensors against the same count on real ones, each
op's declared scratch against what its implementation holds, CUDA's autocast rules, the
largest-batch search against a brute-force one, and the command line."""

import json
import math
import os
import random

import pytest
import torch

from bench import memory
from bench.__main__ import main
from bench.memory_sweep import largest_batch, largest_batches
from gpt2_kernels import workspace_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the count: fake tensors against real ones -------------------------------------------------

# Every kind of op the configurations run: eager and SDPA attention, all of our kernels with the
# fused loss and the residual adds (triton), Hugging Face's model as shipped and patched; both passes.
AGREEMENT = [("eager", "train"), ("eager", "fwd"), ("eager+sdpa", "train"), ("triton", "train"), ("triton", "fwd"),
             ("hf-eager", "train"), ("hf-sdpa", "fwd"), ("hf-triton", "train")]


@pytest.mark.parametrize("config, pass_", AGREEMENT)
def test_fake_count_agrees_with_the_real_one(config, pass_):
    # The smoke run's tiny GPT-2 (2 layers, width 128, 512 tokens), its kernels through the
    # interpreter on real CPU tensors, where each op's scratch is counted as it is allocated, not
    # declared. Within 1% overall, and within 1% of what the pass adds to the weights and AdamW
    # state (so that an error in the activations cannot hide behind the weights).
    S, B = 32, 2
    fake, fake_resident = memory.peak_bytes("tiny", config, pass_, S, B)
    real, real_resident = memory.peak_bytes("tiny", config, pass_, S, B, device="cpu")
    assert fake_resident == real_resident
    assert fake - fake_resident > 0.2 * fake_resident  # the pass adds enough for the check to see
    assert math.isclose(fake, real, rel_tol=0.01)
    assert math.isclose(fake - fake_resident, real - real_resident, rel_tol=0.01)


def test_the_count_is_what_the_tensors_hold():
    # A reference by hand: two fp32 tensors of 1000 and 3000 elements alive at once, then one.
    with memory.LiveBytes(real=True) as live:
        a = torch.empty(1000)
        b = torch.empty(3000)
        del a
        c = b[10:].clone()  # a view costs nothing, its clone 2990 elements
        del b
    assert live.peak == 4 * (1000 + 3000 + 2990) - 4 * 1000 and live.live == 4 * 2990
    del c


# ---- each op's declared scratch against what its implementation holds ---------------------------


def _ops():
    """(op name, its arguments): every gpt2_kernels op, with inputs that take the copies too."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=g).to(dtype)

    x, w, b = r(2, 24, 64), r(64, dtype=torch.float32), r(64, dtype=torch.float32)
    # The saved statistics come from eager math, not the ops: collection runs no kernel (on a
    # GPU machine the interpreter is off and these CPU tensors could not be launched on).
    mean, rstd = x.float().mean(-1).flatten(), (x.float().var(-1, unbiased=False) + 1e-5).rsqrt().flatten()
    qkv = r(2, 24, 3, 2, 64).permute(2, 0, 3, 1, 4)  # (3, B, H, S, D) views, as the model makes them
    q, k, v = qkv
    o = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, scale=0.125).to(q.dtype)
    lse = torch.randn(q.shape[:3], generator=g)  # (B, H, S) fp32: only its shape and dtype matter here
    N, V = 48, 100
    xs, ws, t = r(N, 64), r(V, 64), torch.randint(0, V, (N,), generator=g)
    cases = [
        ("layer_norm_fwd", (x, w, b, 1e-5)), ("layer_norm_fwd", (x.transpose(0, 1), w, b, 1e-5)),
        ("layer_norm_fwd", (x, r(128, dtype=torch.float32)[::2], b, 1e-5)),
        ("layer_norm_bwd", (x, x, w, mean, rstd)), ("layer_norm_bwd", (x, x, w.bfloat16(), mean, rstd)),
        ("add_layer_norm_fwd", (x, x.transpose(0, 1).transpose(0, 1), w, b, 1e-5)),
        ("add_layer_norm_bwd", (x, x, x, w, mean, rstd)),
        ("gelu_fwd", (x, None)), ("gelu_fwd", (x[..., ::2], None)), ("gelu_fwd", (x, b.bfloat16())),
        ("gelu_bwd", (x, x.transpose(0, 1))), ("gelu_bias_bwd", (x, x, b.bfloat16())),
        ("attention_fwd", (q, k, v, True, 0.125, True)), ("attention_fwd", (q[..., ::2], k[..., ::2], v[..., ::2], False, 0.1, True)),
        ("attention_bwd", (o, q, k, v, o, lse, True, 0.125, True)),
        ("attention_bwd", (o, q, k, v, o, lse, True, 0.125, False)),
        ("attention_fwd", (q, k, v, True, 0.125, True, 80)), ("attention_bwd", (o, q, k, v, o, lse, True, 0.125, True, 80)),
        ("decode_attention", (q[:, :, :1], k, v, None, True, 0.125, None)),
        ("decode_attention", (q[:, :, :2], k, v, torch.tensor([20, 24], dtype=torch.int32), True, 0.125, 2)),
    ]
    for reduction in ("mean", "none"):
        for bias in (None, r(V)):
            cases.append(("linear_cross_entropy_fwd", (xs, ws, t, bias, -1, reduction, True)))
    cases.append(("linear_cross_entropy_fwd", (xs.float(), ws.float(), t, r(V, dtype=torch.float32), -1, "sum", True)))
    cases.append(("linear_cross_entropy_bwd", (torch.ones(()).expand(N), xs, ws, t, r(V), -1)))
    return cases


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="counts the CPU allocations of the ops run by Triton's interpreter")
@pytest.mark.parametrize("i", range(len(_ops())))
def test_declared_scratch_is_what_the_implementation_holds(i):
    name, args = _ops()[i]
    op = getattr(torch.ops.gpt2_kernels, name)
    with memory.LiveBytes(real=True) as live:
        live.count(args)  # the inputs, made before: counted first, as peak_bytes counts the weights
        out = op(*args)
    # The outputs are alive at the end: the peak beyond them is the scratch held beside them. The
    # declaration may exceed it by an output made after the scratch is gone (a loss, a bias
    # gradient cast to bf16): it adds the scratch to all of the outputs.
    held = live.peak - live.live
    declared = workspace_bytes(f"gpt2_kernels::{name}", *args)
    assert held <= declared <= held + max(64, 0.02 * declared), (name, held, declared)
    del out


# ---- CUDA's autocast rules on the CPU ---------------------------------------------------------------


def test_cuda_autocast_rules():
    rules = {op.name(): rule for op, rule in memory._rule_ops()}
    for name in memory.CUDA_FP32["cast"] + memory.CUDA_FP32["out"]:  # each entry names real overloads
        assert any(n.split("::")[1].split(".")[0] == name for n in rules), name
    x = torch.randn(4, 8).bfloat16()
    with memory.cuda_autocast_rules(), torch.autocast("cpu", dtype=torch.bfloat16):
        # CUDA's autocast: softmax and pow in fp32 (AMP docs, "ops that can autocast to float32"),
        # a matmul in bf16, an explicit dtype kept, integers untouched.
        assert torch.softmax(x, -1).dtype == torch.pow(x, 3.0).dtype == x.sum().dtype == torch.float32
        assert (x @ x.T).dtype == x.sum(0, dtype=torch.bfloat16).dtype == torch.bfloat16
        assert torch.ones(3, dtype=torch.long).sum().dtype == torch.long
    with torch.autocast("cpu", dtype=torch.bfloat16):  # gone after the block: the CPU's own rules
        assert torch.softmax(x, -1).dtype == torch.bfloat16


# ---- the largest batch ---------------------------------------------------------------------------


def test_largest_batch_matches_a_brute_force_search():
    rnd = random.Random(0)
    for _ in range(300):
        fixed, slope, curve = rnd.uniform(0, 50), rnd.uniform(0.1, 5), rnd.choice([0.0, 0.002, 0.05])
        jump_at = rnd.randint(1, 40)  # a step, as when the fused loss's chunk stops growing with B

        def peak(b):
            return fixed + slope * b + curve * b * b + (3.0 if b >= jump_at else 0.0)

        capacity = rnd.uniform(0, 400)
        truth = next(b for b in range(10**6) if peak(b + 1) > capacity)
        calls = []
        got = largest_batch(lambda b: calls.append(b) or peak(b), capacity, {8: peak(8), 16: peak(16)})
        assert got == truth and len(calls) <= 30


def test_largest_batch_of_a_linear_peak_costs_two_measurements():
    calls = []
    assert largest_batch(lambda b: calls.append(b) or 10 + 3 * b, 100, {1: 13, 2: 16}) == 30
    assert sorted(calls) == [30, 31]


# ---- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--memory", "--batch", "0"], "--batch must be a positive number"),
    (["--memory", "--sizes", "gpt3"], "unknown GPT-2 size 'gpt3'"),
    (["--memory", "--seq-lens", "0"], "sequence lengths must be positive"),
    (["--batch", "4"], "go with --memory"),
    (["--memory", "--only", "attention"], "--memory does not take --only"),
    (["--memory", "--measure-cuda"] if not torch.cuda.is_available() else ["--memory", "--smoke"], "--m"),
])
def test_bad_command_lines_are_one_line_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_the_cli_writes_its_files(tmp_path, capsys, monkeypatch):
    # gpt2 at one S, two configurations (a fake gpt2 costs about a second a point), both passes;
    # S = 2048 leaves out the largest-batch table, checked on its own below.
    monkeypatch.setattr(memory, "configs", lambda: ["eager+sdpa", "triton-loss"])
    assert main(["--memory", "--sizes", "gpt2", "--seq-lens", "2048", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "memory.json").read_text())
    assert [(r["impl"], r["pass"], r["batch"], r["status"]) for r in data["rows"]] == [
        (impl, pass_, 4, "ok") for impl in ("eager+sdpa", "triton-loss") for pass_ in ("fwd", "train")]
    peak = {(r["impl"], r["pass"]): r["peak_mem_bytes"] for r in data["rows"]}
    saved = peak[("eager+sdpa", "train")] - peak[("triton-loss", "train")]
    # The logits the fused loss never makes: bf16 (held), their fp32 copy and its log-softmax
    # (4 bytes each) are each 8192 x 50257 x (2 or 4) bytes; more than two of them are saved.
    assert saved > 8192 * 50257 * 6
    assert data["savings"] == [{"what": "fused loss (no logits)", "size": "gpt2", "seq_len": 2048, "batch": 4,
                                "without": "eager+sdpa", "with": "triton-loss", "saved_bytes": saved,
                                "saved_frac": saved / peak[("eager+sdpa", "train")]}]
    assert data["largest_batch"] == []
    assert (tmp_path / "memory.csv").read_text().count("\n") == 5
    assert (tmp_path / "memory.png").stat().st_size > 10_000
    assert "fused loss (no logits)" in (tmp_path / "memory.md").read_text()
    assert f"{saved / 1e9:.2f} GB" in capsys.readouterr().out


def test_largest_batches_of_the_rows_trained_at_1024(monkeypatch):
    # The table's wiring, on a made-up peak: only S = 1024 training rows, each capacity found.
    def peak_bytes(size, impl, pass_, S, B):
        return (10e9 + B * (1e9 if impl == "eager" else 0.25e9), 10e9)

    monkeypatch.setattr(memory, "peak_bytes", peak_bytes)
    rows = [{"size": "gpt2", "impl": impl, "pass": pass_, "seq_len": S, "batch": 8192 // S, "status": "ok",
             "peak_mem_bytes": peak_bytes("gpt2", impl, pass_, S, 8192 // S)[0]}
            for impl in ("eager", "triton") for pass_ in ("fwd", "train") for S in (1024, 2048)]
    table = largest_batches(rows, log=lambda line: None)
    assert table == [{"size": "gpt2", "impl": "eager", "seq_len": 1024, "H100 80 GB": 70, "H200 141 GB": 131},
                     {"size": "gpt2", "impl": "triton", "seq_len": 1024, "H100 80 GB": 280, "H200 141 GB": 524}]


def test_the_summary_puts_a_gpus_reading_beside_the_count():
    # What --measure-cuda adds (it needs a GPU): the reading and its ratio to the count, per pass.
    from bench.memory_sweep import FIELDS, markdown

    rows = [{**dict.fromkeys(FIELDS), "size": "gpt2", "impl": "eager", "pass": p, "seq_len": 1024, "batch": 8,
             "status": "ok", "peak_mem_bytes": 10e9 * k, "resident_bytes": 1e9, "measured_bytes": 10.5e9 * k}
            for p, k in (("fwd", 1), ("train", 2))]
    meta = {"method": "counted", "settings": {"capacities": dict(memory.CAPACITIES), "table_seq_len": 1024}}
    text = markdown({"meta": meta, "rows": rows, "largest_batch": [], "savings": []})
    assert "| GPU forward | GPU train |" in text
    assert "| gpt2 | 1024 x 8 | eager | 10.00 GB | 20.00 GB | 1.00 GB | 10.50 GB (1.050x) | 21.00 GB (1.050x) |" in text
