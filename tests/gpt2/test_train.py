"""``python -m gpt2 train`` on a tiny model and real text (the start of Hamlet), on the CPU:

- two processes under torchrun (gloo, DDP and FSDP) with --batch-size 4 follow the run of one
  process with --batch-size 8: the same losses and final weights, within fp32 rounding;
- a run stopped at step k and resumed reaches step 2k with exactly the losses and weights of an
  uninterrupted run;
- convergence (Liger-Kernel's test): the same run with every Triton kernel on (the interpreter)
  and with every kernel off gives the same loss curve and weights, within TOL["convergence"];
- the output folder: the log's columns, the plot, a checkpoint that GPT2.from_pretrained,
  transformers and ``python -m gpt2 generate`` read;
- bad input stops with one line naming the problem.

Runs of one process go through ``main(argv)`` in this process (no interpreter start).
"""

import csv
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt2 import GPT2
from gpt2.__main__ import main
from gpt2.train import COLUMNS, LOG, PLOT, STATE
from tests.conftest import ON_GPU
from tests.tolerances import tol

REPO = Path(__file__).resolve().parents[2]
# --device cpu even where a GPU is visible: these are the CPU checks (gloo, fp32, bit-exact resume).
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seq-len", "16",
        "--eval-iters", "2", "--eval-interval", "2", "--seed", "3", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """20 KB of real text (about 5,000 tokens): enough windows, a second to tokenize."""
    folder = tmp_path_factory.mktemp("text")
    path = folder / "hamlet.txt"
    path.write_text((REPO / "data" / "shakespeare" / "hamlet.txt").read_text()[:20_000])
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")


def train(out, text, cache, *args):
    argv = ["train", "--data", str(text), "--out", str(out), "--data-cache", str(cache), *TINY, *args]
    assert main(argv) == 0


def log(out):
    with open(Path(out) / LOG, newline="") as f:
        return list(csv.DictReader(f))


def losses(out, column):
    return torch.tensor([float(r[column]) for r in log(out) if r[column] != ""], dtype=torch.float64)


def weights(out):
    return load_file(Path(out) / "model.safetensors")


def assert_same_run(a, b, loss_tol, weight_tol):
    """Runs a and b logged the same train and validation losses and ended with the same weights."""
    for column in ("train_loss", "val_loss"):
        torch.testing.assert_close(losses(b, column), losses(a, column), **loss_tol)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], **weight_tol, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, text, cache):
    """The reference run: one process, 8 windows a step, 4 steps (with clipping and warm-up)."""
    out = tmp_path_factory.mktemp("one") / "run"
    train(out, text, cache, "--batch-size", "8", "--steps", "4", "--warmup-steps", "2", "--lr", "3e-3")
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_follow_one(tmp_path, text, cache, one_process, mode):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "gpt2", "train", "--data", str(text), "--out", str(out), "--data-cache", str(tmp_path / "cache"),
           *TINY, "--batch-size", "4", "--steps", "4", "--warmup-steps", "2", "--lr", "3e-3",
           *(["--fsdp"] if mode == "fsdp" else [])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"x 2 processes = 128 tokens a step ({mode.upper()})" in r.stderr
    assert_same_run(one_process, out, tol("train_distributed", torch.float32),
                    tol("train_distributed_weights", torch.float32))
    # Only the first process writes: one log row a step, one checkpoint, one token cache.
    assert [int(r["step"]) for r in log(out)] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "model.safetensors", STATE, LOG, PLOT])
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_resume_reaches_the_same_losses_as_an_uninterrupted_run(tmp_path, text, cache, one_process):
    # one_process ran 4 steps straight; this one stops at 2 and resumes, with the same arguments.
    out = tmp_path / "run"
    train(out, text, cache, "--batch-size", "8", "--steps", "4", "--warmup-steps", "2", "--lr", "3e-3", "--stop-at", "2")
    assert [int(r["step"]) for r in log(out)] == [0, 1, 2]
    assert main(["train", "--out", str(out), "--resume", "--data-cache", str(cache)]) == 0
    assert [int(r["step"]) for r in log(out)] == [0, 1, 2, 3, 4]
    exact = {"atol": 0, "rtol": 0}
    assert_same_run(one_process, out, exact, exact)  # bit for bit: the same windows and state


def test_convergence_triton_kernels_match_torch(tmp_path, text, cache):
    """Liger-Kernel's convergence test: every kernel on vs every kernel off, same seed and data,
    5 optimizer steps; loss curves and final weights agree within TOL["convergence"]. (Short
    windows: Triton's interpreter runs every program of every kernel one after another.)"""
    # On a GPU the kernels run for real, in fp32 (no autocast), where tl.dot is tf32.
    where, dtype = (["--device", "cuda", "--precision", "fp32"], "tf32") if ON_GPU else ([], torch.float32)
    runs = {}
    for kernels in ("torch", "triton"):
        runs[kernels] = tmp_path / kernels
        train(runs[kernels], text, cache, "--kernels", kernels, "--batch-size", "2", "--seq-len", "8",
              "--steps", "5", "--eval-interval", "5", "--eval-iters", "1", "--lr", "3e-3", *where)
    assert len(losses(runs["torch"], "train_loss")) == 5
    assert GPT2.from_pretrained(runs["triton"]).config.block_size == 8
    assert_same_run(runs["torch"], runs["triton"], tol("convergence", dtype), tol("convergence_weights", dtype))


def test_log_plot_and_schedule(one_process):
    rows = log(one_process)
    assert tuple(rows[0].keys()) == COLUMNS
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    assert [r["val_loss"] != "" for r in rows] == [True, False, True, False, True]  # step 0, every 2, last
    assert all(r["train_loss"] == "" for r in rows[:1]) and all(float(r["train_loss"]) > 0 for r in rows[1:])
    # warm-up over 2 steps to 3e-3, then a cosine towards 3e-4 reached at step 4: step s (from 0)
    # after the warm-up is at t = (s - 2) / (4 - 2) of it, lr = 3e-4 + (1 + cos(pi t)) / 2 * 2.7e-3
    lrs = [float(r["lr"]) for r in rows[1:]]
    assert lrs == pytest.approx([1.5e-3, 3e-3, 3e-3, 1.65e-3], rel=1e-5)
    assert all(float(r["tokens_per_s"]) > 0 and float(r["peak_mem"]) > 0 for r in rows[1:])
    assert all(r["mfu"] == "" for r in rows)  # no known peak FLOP/s on a CPU
    png = (one_process / PLOT).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    assert w > 400 and h > 250


def test_checkpoint_loads_in_gpt2_transformers_and_generate(one_process, capsys):
    from transformers import GPT2LMHeadModel

    ours = GPT2.from_pretrained(one_process)
    hf = GPT2LMHeadModel.from_pretrained(one_process).eval()
    sd = weights(one_process)
    torch.testing.assert_close(ours.transformer.h[1].mlp.c_fc.weight, sd["transformer.h.1.mlp.c_fc.weight"].t())
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), **tol("model", torch.float32))
    assert main(["generate", "--checkpoint", str(one_process), "--prompt", "To be", "--max-new-tokens", "5",
                 "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("To be")


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/nothing.txt"], "no such file"),
    (["--data", "{empty}"], "holds no text"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--seq-len", "64", "--block-size", "32"], "exceeds the model's block_size"),
    (["--fsdp"], "launch with torchrun"),
    (["--seq-len", "8000", "--block-size", "8000"], "fewer than --seq-len"),
])
def test_bad_input_is_one_line_and_a_failure(tmp_path, text, cache, capsys, args, message):
    if args[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    (tmp_path / "empty.txt").write_text("")
    args = [a.format(tmp=tmp_path, empty=tmp_path / "empty.txt") for a in args]
    argv = ["train", "--data", str(text), "--out", str(tmp_path / "o"), "--data-cache", str(cache), *TINY, *args]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m gpt2: error:"), err


def test_triton_on_a_cpu_without_the_interpreter_is_refused_before_training(tmp_path, text, cache, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = ["train", "--data", str(text), "--out", str(tmp_path / "o"), "--data-cache", str(cache), *TINY,
            "--device", "cpu", "--gelu", "triton"]
    assert main(argv) == 1
    assert "Triton kernels (gelu) on a CPU need Triton's interpreter" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_flags_are_usage_errors(tmp_path, text, capsys):
    base = ["train", "--data", str(text), "--out", str(tmp_path / "o")]
    for extra, message in [
        (["--kernels", "cuda"], "invalid choice"),
        (["--batch-size", "0"], "must be >= 1"),
        (["--init", "x", "--n-layer", "2"], "cannot be combined"),
        (["--steps", "4", "--stop-at", "4"], "must be smaller than --steps"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "o")])
    assert "--data is required" in capsys.readouterr().err


def test_an_existing_run_is_neither_overwritten_nor_resumed_with_other_settings(tmp_path, text, cache, capsys, one_process):
    argv = ["train", "--data", str(text), "--out", str(one_process), "--data-cache", str(cache), *TINY]
    assert main(argv) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(one_process), "--resume"]) == 1
    assert "already finished its 4 steps" in capsys.readouterr().err
    assert main(["train", "--out", str(one_process), "--resume", "--steps", "6", "--lr", "1e-2"]) == 1
    assert "--lr 0.01 (saved: 0.003) differ" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    # weights and optimizer state from different moments (a checkpoint cut short between the files)
    mixed = tmp_path / "mixed"
    shutil.copytree(one_process, mixed)
    state = torch.load(mixed / STATE, weights_only=True)
    torch.save({**state, "weights": state["weights"] + 1e-3}, mixed / STATE)
    assert main(["train", "--out", str(mixed), "--resume", "--steps", "6", "--data-cache", str(cache)]) == 1
    assert "is not the one training_state.pt was saved with" in capsys.readouterr().err
