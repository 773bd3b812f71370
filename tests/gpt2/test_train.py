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

import argparse
import csv
import math
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
from gpt2.run_folder import COLUMNS, LOG, PLOT, STATE
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


# ---- issue 22: nothing lost, nothing silently wrong, one line for bad input --------------------
def _copy(run, tmp_path, name="copy", keep=None):
    """A copy of a run's folder (only the files in ``keep``, when given)."""
    dest = tmp_path / name
    shutil.copytree(run, dest, ignore=None if keep is None else lambda d, names: [n for n in names if n not in keep])
    return dest


def _contents(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


@pytest.mark.parametrize("keep", [("config.json", "model.safetensors"), (LOG,)], ids=["a model", "an old log"])
def test_a_new_run_never_replaces_what_out_holds(tmp_path, text, cache, capsys, one_process, keep):
    # --init X --out X (a model and nothing else), or an earlier run's log without its state.
    out = _copy(one_process, tmp_path, keep=keep)
    before = _contents(out)
    init = ["--init", str(out)] if "model.safetensors" in keep else []
    argv = ["train", "--data", str(text), "--out", str(out), "--data-cache", str(cache), *init,
            *(TINY[6:] if init else TINY), "--steps", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m gpt2: error:") and f"{out} already holds {', '.join(keep)}" in err[-1], err
    assert _contents(out) == before


@pytest.mark.parametrize("argv, flag", [
    (["--lr", "inf"], "--lr"),
    (["--lr", "1e30"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--lr", "0.5", "--weight-decay", "3"], "--weight-decay"),
    (["--peak-flops", "-1"], "--peak-flops"),
    (["--peak-flops", "nan"], "--peak-flops"),
    (["--peak-flops", "0"], "--peak-flops"),
    (["--lr", "1e-3", "--min-lr", "2e-3"], "--min-lr"),
    (["--grad-clip", "inf"], "--grad-clip"),
])
def test_numbers_that_would_wreck_the_run_are_usage_errors(tmp_path, text, cache, capsys, argv, flag):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(text), "--out", str(out), "--data-cache", str(cache), *TINY, "--steps", "1", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and flag in err[-1] and "Traceback" not in "\n".join(err), err
    assert not out.exists()


def _saving_args(run):
    """save_checkpoint's arguments for a finished run's folder, with weights changed by a step."""
    from gpt2.distributed import Dist
    from gpt2.train import param_groups

    state = torch.load(run / STATE, weights_only=True)
    args = argparse.Namespace(**state["args"])
    model = GPT2.from_pretrained(run)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay))
    return args, model, optimizer, Dist("cpu", False)


def _resumable(out):
    """(step, whether the weights are the ones its state was saved with): what --resume checks."""
    from gpt2.__main__ import build_parser
    from gpt2.run_folder import fingerprint
    from gpt2.train import build_model, resolve_args

    parser = build_parser().subcommands["train"]
    args = parser.parse_args(["--out", str(out), "--resume", "--steps", "10"])
    args, state = resolve_args(args, {"out", "resume", "steps"}, parser)
    return state["step"], state["weights"] == fingerprint(build_model(args, out))


def test_a_checkpoint_cut_short_anywhere_leaves_one_complete(tmp_path, one_process, monkeypatch):
    """A second Ctrl-C or a SIGTERM at any point of a checkpoint's write (each file move) leaves
    a folder that --resume takes: the checkpoint before, or the new one whole."""
    from gpt2.run_folder import save_checkpoint

    real = os.replace
    calls = []
    monkeypatch.setattr(os, "replace", lambda *a: calls.append(a) or real(*a))
    scratch = _copy(one_process, tmp_path, "scratch")
    args, model, optimizer, dist = _saving_args(scratch)
    save_checkpoint(scratch, 5, args, model, model, optimizer, dist)
    assert _resumable(scratch) == (5, True)
    for cut in range(len(calls)):
        out = _copy(one_process, tmp_path, f"cut{cut}")
        args, model, optimizer, dist = _saving_args(out)
        moves = []

        def interrupted(*a):
            if len(moves) == cut:
                raise KeyboardInterrupt
            moves.append(a)
            return real(*a)

        monkeypatch.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(out, 5, args, model, model, optimizer, dist)
        monkeypatch.setattr(os, "replace", real)
        step, same = _resumable(out)
        assert step in (4, 5) and same, (cut, calls[cut], step)


def test_a_checkpoint_of_weights_that_are_not_finite_is_never_written(tmp_path, one_process):
    from gpt2.run_folder import save_checkpoint

    out = _copy(one_process, tmp_path)
    before = _contents(out)
    args, model, optimizer, dist = _saving_args(out)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[3, 2] = float("nan")
    with pytest.raises(RuntimeError, match=r"transformer.h.0.mlp.c_fc.weight .*not finite.* checkpoint of step 5 "
                                           r"was not written"):
        save_checkpoint(out, 5, args, model, model, optimizer, dist)
    assert _contents(out) == before


def _damage_state(path, how):
    state = torch.load(path, weights_only=True)
    if how == "random bytes":
        path.write_bytes(os.urandom(300))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing keys":
        torch.save({k: v for k, v in state.items() if k not in ("optimizer", "weights")}, path)
    elif how == "not a dict":
        torch.save([1, 2, 3], path)
    elif how == "missing args":
        torch.save({**state, "args": {k: v for k, v in state["args"].items() if k != "lr"}}, path)


@pytest.mark.parametrize("how", ["random bytes", "empty", "missing keys", "not a dict", "missing args"])
def test_resume_with_a_damaged_training_state_is_one_line(tmp_path, cache, capsys, one_process, how):
    out = _copy(one_process, tmp_path)
    _damage_state(out / STATE, how)
    assert main(["train", "--out", str(out), "--resume", "--steps", "6", "--data-cache", str(cache)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m gpt2: error: {out / STATE}"), err


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace(",", ";"), "expected the header step,train_loss"),
    (lambda t: t.split("\n", 1)[1], "expected the header step,train_loss"),
    (lambda t: t.replace("\n1,", "\none,", 1), "line 3: step 'one' is not a whole number"),
    (lambda t: t.replace("\n2,", "\n2,abc", 1), "line 4: train_loss 'abc"),
    (lambda t: t + "5,1.0\n", "line 7: expected 7 fields"),
], ids=["semicolons", "no header", "bad step", "bad number", "short row"])
def test_resume_with_an_edited_log_is_one_line(tmp_path, cache, capsys, one_process, edit, message):
    out = _copy(one_process, tmp_path)
    (out / LOG).write_text(edit((out / LOG).read_text()))
    assert main(["train", "--out", str(out), "--resume", "--steps", "6", "--data-cache", str(cache)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"python -m gpt2: error: {out / LOG}") and message in err[-1], err


def test_resume_with_a_log_saved_with_a_byte_order_mark_goes_on(tmp_path, cache, one_process):
    out = _copy(one_process, tmp_path)
    (out / LOG).write_bytes(b"\xef\xbb\xbf" + (out / LOG).read_bytes())  # as a spreadsheet saves it
    assert main(["train", "--out", str(out), "--resume", "--steps", "5", "--data-cache", str(cache)]) == 0
    assert [int(r["step"]) for r in log(out)] == [0, 1, 2, 3, 4, 5]


def test_a_step_that_does_not_log_never_waits_for_the_device(tmp_path, text, cache, monkeypatch):
    """No host sync (.item(), float(tensor), bool(tensor): aten._local_scalar_dense) in a step that
    neither logs, evaluates nor checkpoints: its loss stays on the device until a step that does.
    With the same logging, evaluations and checkpoints, 9 steps sync exactly as often as 3."""
    from tests.gpt2.test_generate import CountSyncs

    class FusedAdamW(torch.optim.AdamW):
        """AdamW's CPU loop reads its step count back (torch.optim's _get_value); the fused one,
        which the trainer runs on a GPU, keeps it on the device."""

        def __init__(self, params, **kwargs):
            super().__init__(params, **{**kwargs, "fused": True})

    monkeypatch.setattr(torch.optim, "AdamW", FusedAdamW)
    syncs = {}
    for steps in (3, 9):
        with CountSyncs() as c:  # logs, evaluates and checkpoints at steps 0 and `steps` only
            train(tmp_path / str(steps), text, cache, "--batch-size", "2", "--steps", str(steps),
                  "--log-interval", "100", "--eval-interval", "100")
        syncs[steps] = c.n
    assert [int(r["step"]) for r in log(tmp_path / "9")] == list(range(10))  # every step still has its row
    assert syncs[9] == syncs[3] > 0, syncs  # > 0: the counter sees the evaluations' and checkpoints' reads


def test_a_log_interval_writes_the_same_rows(tmp_path, text, cache, one_process):
    out = tmp_path / "run"
    train(out, text, cache, "--batch-size", "8", "--steps", "4", "--warmup-steps", "2", "--lr", "3e-3",
          "--log-interval", "3")
    assert [int(r["step"]) for r in log(out)] == [0, 1, 2, 3, 4]
    exact = {"atol": 0, "rtol": 0}
    assert_same_run(one_process, out, exact, exact)


def test_resume_of_a_run_saved_before_a_resumable_flag_existed(tmp_path, cache, one_process):
    out = _copy(one_process, tmp_path)
    state = torch.load(out / STATE, weights_only=True)
    torch.save({**state, "args": {k: v for k, v in state["args"].items() if k != "log_interval"}}, out / STATE)
    assert main(["train", "--out", str(out), "--resume", "--steps", "5", "--data-cache", str(cache)]) == 0
    assert [int(r["step"]) for r in log(out)] == [0, 1, 2, 3, 4, 5]


def test_a_loss_that_is_not_finite_is_named_by_its_step_when_it_is_read_back(tmp_path, text, cache, capsys,
                                                                              monkeypatch):
    import gpt2.train

    real = gpt2.train.lr_at
    monkeypatch.setattr(gpt2.train, "lr_at", lambda step, args: math.nan if step == 2 else real(step, args))
    out = tmp_path / "run"
    argv = ["train", "--data", str(text), "--out", str(out), "--data-cache", str(cache), *TINY, "--batch-size", "2",
            "--steps", "6", "--eval-interval", "6", "--log-interval", "10"]
    assert main(argv) == 1  # step 3 steps at lr nan: its weights, then step 4's loss, are nan
    assert "the training loss is nan at step 4; lower --lr" in capsys.readouterr().err
    assert [r["train_loss"] for r in log(out)][4:] == ["nan"] * 3  # read back and logged at step 6
    assert not (out / STATE).exists()  # never checkpointed
