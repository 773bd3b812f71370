"""The whole benchmark pipeline, end to end, through Triton's interpreter on the CPU."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from bench.points import SMOKE_LABEL
from bench.results import STATUSES, load_csv, load_results

from ..conftest import ON_GPU

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _has(module):
    return importlib.util.find_spec(module) is not None


def _run(args, timeout):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.skipif(ON_GPU, reason="a GPU machine runs the real benchmark (bench/gpu_check.sh)")
def test_without_a_gpu_python_m_bench_says_so():
    proc = _run([], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "No CUDA GPU is present" in proc.stdout
    assert ("No GPU results are shipped" in proc.stdout) or ("Redrawing" in proc.stdout)


@pytest.mark.skipif(ON_GPU, reason="the interpreter smoke run is for machines without a GPU")
def test_smoke_run_writes_labelled_results_and_plots(tmp_path):
    t0 = time.monotonic()
    proc = _run(["--smoke", "--out", str(tmp_path)], timeout=240)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta, rows = load_results(tmp_path)
    assert meta["smoke"] is True and meta["label"] == SMOKE_LABEL and meta["interpreter"] is True
    assert meta["status"] == "complete"
    assert meta["limits"]["copy_gbps"] > 0 and meta["limits"]["matmul_tflops"] > 0
    assert load_csv(tmp_path / "results.csv") == rows
    assert {r["family"] for r in rows} == {"attention", "layer_norm", "gelu", "model", "hf", "add_layer_norm", "loss"}
    assert all(r["status"] in STATUSES for r in rows)
    # every timing keeps its spread (the 20th and 80th percentile of the timed runs)
    for r in rows:
        if r["status"] == "ok":
            assert r["ms_p20"] <= r["ms"] <= r["ms_p80"], r
    # the PyTorch baselines run anywhere
    for r in rows:
        if r["impl"] in ("eager", "compile", "sdpa-math", "eager+sdpa"):
            assert r["status"] == "ok", r
            assert r["ms"] > 0 and r["speedup_vs_eager"] is not None
    # the Triton kernels that exist are used (through the interpreter), not reported missing
    ours = {"layer_norm": "gpt2_kernels.layer_norm", "gelu": "gpt2_kernels.gelu", "attention": "gpt2_kernels.attention"}
    for fam, module in ours.items():
        for r in (r for r in rows if r["family"] == fam and r["impl"] == "triton"):
            if _has(module):
                assert r["status"] == "ok", r
                assert r["pass"] != "fwd" or r["max_abs_err"] < 1e-3, r
            else:
                assert r["status"] == "unavailable", r
    # the same kernel with the sm_80 candidates forced is timed beside it; nothing was tuned without a GPU
    sm80 = [r for r in rows if r["family"] == "attention" and r["impl"] == "triton-sm80"]
    assert sm80 and all(r["status"] == "ok" and r["role"] == "variant" for r in sm80), sm80
    assert meta["attention_configs"] == []
    if all(_has(m) for m in ours.values()):
        for r in rows:
            if r["family"] == "model" and r["impl"].startswith("triton"):
                assert r["status"] == "ok", r
    # Hugging Face's GPT-2 patched with our kernels, and as shipped; no attention call fell back
    for r in (r for r in rows if r["family"] == "hf"):
        assert r["status"] == ("ok" if _has("transformers") else "unavailable"), r
        if r["impl"] == "triton" and r["status"] == "ok":
            assert "0 attention calls fell back" in r["note"], r
    for name in ("speedup_attention.png", "speedup_layer_norm.png", "speedup_gelu.png", "throughput.png",
                 "model.png", "targets.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name
    summary = (tmp_path / "summary.md").read_text()
    assert SMOKE_LABEL in summary
    assert "interpreter smoke run" in proc.stdout
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["meta"]["settings"]["compile_backend"] == "aot_eager"
    assert took < 120, f"the smoke run took {took:.0f} s (the issue asks for under two minutes on 2 cores)"


def test_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    from bench.__main__ import main

    file = tmp_path / "results.txt"
    file.write_text("kept")
    for argv in (["--smoke", "--out", str(file)], ["--plot", str(tmp_path), "--out", str(file)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and f"--out {file} is a file; it takes a folder" in err[-1], err
    assert file.read_text() == "kept"


@pytest.mark.skipif(ON_GPU, reason="the interpreter smoke run is for machines without a GPU")
def test_a_run_whose_every_point_errors_is_a_failure_not_complete(tmp_path, capsys, monkeypatch):
    """`--only hf` where Hugging Face's model fails at every point: the run says so and exits 1."""
    import torch

    import bench.model
    from bench.__main__ import main

    def broken(point, impl, ctx):
        raise RuntimeError(f"{impl} cannot run here")

    monkeypatch.setattr(bench.model, "hf_run", broken)
    threads = torch.get_num_threads()
    try:
        rc = main(["--smoke", "--only", "hf", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # the smoke run sets one thread for its process
    out = capsys.readouterr().out
    meta, rows = load_results(tmp_path)
    assert rows and all(r["status"] == "error" for r in rows)
    assert rc == 1 and meta["status"].startswith(f"failed: all {len(rows)} points errored (first: ")
    assert "cannot run here" in meta["status"] and "complete" not in out.splitlines()[-1]
