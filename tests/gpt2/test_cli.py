"""``python -m gpt2``: the commands run as a user runs them (subprocesses), and the argument
errors in-process through ``main(argv)`` (argparse's messages, without paying an interpreter
start for each)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2 import GPT2, GPT2Config, Tokenizer
from gpt2.__main__ import main
from gpt2.checkpoint import save_pretrained
from gpt2.config import SIZES

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args, env=None, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gpt2", *args], capture_output=True, text=True, env=env, cwd=cwd or REPO, timeout=300
    )


def expected_counts(n_layer, n_embd, vocab_size=50257, block_size=1024, **_):
    """GPT-2's parameter count from its shapes, written out independently of the model code:
    per block two LayerNorms (2d each), c_attn (d x 3d + 3d), attn c_proj (d x d + d),
    c_fc (d x 4d + 4d), mlp c_proj (4d x d + d): 12 d^2 + 13 d."""
    d = n_embd
    per_block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    embeddings = vocab_size * d + block_size * d
    total = embeddings + n_layer * per_block + 2 * d  # + ln_f; the LM head is tied to wte
    return {"total": total, "non_embedding": total - embeddings, "per_block": per_block}


def test_param_formula_matches_published_size():
    # OpenAI's smallest model is widely quoted as 124M (124,439,808 with the tied head).
    assert expected_counts(**SIZES["gpt2"])["total"] == 124_439_808


def test_info_xl():
    r = run_cli("info", "--model", "gpt2-xl")
    assert r.returncode == 0, r.stderr
    want = expected_counts(**SIZES["gpt2-xl"])
    out = r.stdout
    assert "n_layer=48, n_head=25, n_embd=1600, head_size=64" in out

    def count(label):
        m = re.search(rf"^{label}:\s+([\d,]+)", out, re.M)
        assert m, f"no {label!r} line in:\n{out}"
        return m.group(1)

    assert count("total parameters") == f"{want['total']:,}"
    assert count("without embeddings") == f"{want['non_embedding']:,}"
    assert count("per block") == f"{want['per_block']:,}"
    L, d = SIZES["gpt2-xl"]["n_layer"], SIZES["gpt2-xl"]["n_embd"]
    parts = {
        "token embedding wte": 50257 * d, "position table wpe": 1024 * d,
        "attention": L * (4 * d * d + 4 * d), "MLP": L * (8 * d * d + 5 * d),
        "LayerNorms in blocks": L * 4 * d, "final LayerNorm ln_f": 2 * d,
    }
    for label, n in parts.items():
        m = re.search(rf"^  {label}\s+([\d,]+)", out, re.M)
        assert m and m.group(1) == f"{n:,}", label
    assert sum(parts.values()) == want["total"]
    assert "transformer.h.N.attn.c_attn.weight" in out and "(4800, 1600)" in out
    assert "(6400, 1600)" in out and "(50257, 1600)" in out and "tied" in out


def test_info_all(capsys):
    assert main(["info", "--all"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert list(rows) == list(SIZES)
    for name, cfg in SIZES.items():
        want = expected_counts(**cfg)
        assert rows[name][1:4] == [str(cfg["n_layer"]), str(cfg["n_head"]), str(cfg["n_embd"])]
        assert rows[name][4:7] == [f"{want['total']:,}", f"{want['non_embedding']:,}", f"{want['per_block']:,}"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50257, block_size=64)
    model = GPT2(cfg).eval()
    return save_pretrained(model, tmp_path_factory.mktemp("cli") / "tiny"), model


def test_generate_with_checkpoint(tiny_checkpoint):
    path, model = tiny_checkpoint
    prompt = "Hello, I'm a language model,"
    r = run_cli("generate", "--checkpoint", str(path), "--prompt", prompt, "--max-new-tokens", "12",
                "--temperature", "0", "--attention", "sdpa")
    assert r.returncode == 0, r.stderr
    assert "random weights" not in r.stderr
    tok = Tokenizer()
    ids = tok.encode(prompt)
    model.set_kernels(attention="sdpa")  # the same arithmetic as the CLI's, so the same argmaxes
    want = prompt + tok.decode(model.generate(torch.tensor([ids]), 12, temperature=0)[0, len(ids):])
    assert r.stdout == want + "\n"


def test_generate_random_weights_says_so(capsys, monkeypatch):
    # The real code path with "gpt2" shrunk to one narrow layer: the full 124M random init
    # costs seconds of CPU and tests nothing more.
    monkeypatch.setitem(SIZES, "gpt2", dict(n_layer=1, n_head=2, n_embd=16))
    argv = ["generate", "--prompt", "Hi", "--max-new-tokens", "5", "--seed", "3", "--num-samples", "2",
            "--device", "cpu"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "no checkpoint: random weights, the text will be gibberish" in err
    samples = out.rstrip("\n").split("\n" + "-" * 40 + "\n")
    assert len(samples) == 2 and all(s.startswith("Hi") and len(s) > 2 for s in samples)
    assert main(argv) == 0
    assert capsys.readouterr().out == out  # --seed fixes the weights and the sampling
    other = list(argv)
    other[other.index("--seed") + 1] = "4"
    assert main(other) == 0  # another seed, another text
    assert capsys.readouterr().out != out


def test_hub_name_offline(tmp_path):
    """A Hub name with HF_HUB_OFFLINE=1 and an empty cache: a one-line error, no traceback.
    Run from a folder holding a ./gpt2 directory, as the repository root does."""
    (tmp_path / "gpt2").mkdir()
    r = run_cli("generate", "--checkpoint", "gpt2-medium", env={"HF_HOME": str(tmp_path / "hf")}, cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "error: could not get 'gpt2-medium' (openai-community/gpt2-medium) from the Hugging Face Hub" in r.stderr
    assert "HF_HUB_OFFLINE is set" in r.stderr


@pytest.mark.parametrize(
    "argv,match",
    [
        ([], "required: command|the following arguments are required"),
        (["generate", "--max-new-tokens", "-1"], "--max-new-tokens: must be >= 0"),
        (["generate", "--temperature", "-0.5"], "--temperature: must be >= 0"),
        (["generate", "--temperature", "nan"], "--temperature: must be >= 0"),
        (["generate", "--top-k", "0"], "--top-k: must be >= 1"),
        (["generate", "--attention", "flash"], "--attention: invalid choice: 'flash'"),
        (["generate", "--kernels", "sdpa"], "--kernels: invalid choice: 'sdpa'"),
        (["generate", "--model", "gpt3"], "--model: invalid choice: 'gpt3'"),
        (["info", "--model", "gpt2", "--all"], "not allowed with argument"),
        (["info", "--model", "gpt5"], "invalid choice: 'gpt5'"),
    ],
)
def test_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_errors_found_after_parsing(tiny_checkpoint, capsys, tmp_path):
    path, _ = tiny_checkpoint
    with pytest.raises(SystemExit) as e:
        main(["generate", "--checkpoint", str(path), "--model", "gpt2"])
    assert e.value.code == 2 and "a --checkpoint brings its own" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # block_size is 64
        main(["generate", "--checkpoint", str(path), "--prompt", "a b c", "--max-new-tokens", "62"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "the prompt (3 tokens) + --max-new-tokens (62) = 65 exceeds the model's block_size (64)" in err
    assert main(["generate", "--checkpoint", str(tmp_path / "nowhere")]) == 1
    assert "error: " in capsys.readouterr().err


@pytest.mark.parametrize("generate, train, message", [
    (["--temperature", "inf"], ["--lr", "inf"], r"must be (>= 0.0|in \[0.0, 1.0\]) and finite, got inf"),
    (["--top-k", "0"], ["--steps", "0"], "must be >= 1, got 0"),
    (["--top-k", "1.5"], ["--steps", "1.5"], "invalid int value: '1.5'"),
])
def test_the_commands_refuse_a_number_with_the_same_words(generate, train, message, tmp_path, capsys):
    for argv in (["generate", *generate], ["train", "--data", "x", "--out", str(tmp_path), *train]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and re.search(message, capsys.readouterr().err), argv


def test_the_commands_refuse_a_device_with_the_same_words(tmp_path, capsys):
    message = "--device 'tpu:x' is not a device; use cpu, cuda or cuda:N"
    with pytest.raises(SystemExit) as e:  # a usage error before generate loads anything
        main(["generate", "--device", "tpu:x"])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert main(["train", "--data", "x", "--out", str(tmp_path / "o"), "--device", "tpu:x"]) == 1
    assert message in capsys.readouterr().err
