"""Every command-line entry point turns an expected failure into a short message on stderr
and a non-zero exit, never a traceback (issue 16): a GPU asked for where there is none, a
results folder with nothing to plot, a NaN time budget, a filter that matches nothing, doc
files that are not what the doc updater expects. results.json is strict JSON, NaN or not."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import bench.__main__ as bench_main
import gpt2.__main__ as gpt2_main
from bench.results import write_results

from .bench.fake_results import fake_meta, fake_rows
from .conftest import ROOT


def _no_traceback(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device, words", [("cuda", "no CUDA GPU"), ("cuda:0", "no CUDA GPU"),
                                           ("potato", "--device"), ("mps:9", "--device")])
def test_gpt2_device_that_is_not_there(device, words, capsys):
    with pytest.raises(SystemExit) as e:
        gpt2_main.main(["generate", "--device", device, "--max-new-tokens", "1"])
    assert e.value.code != 0
    assert words in _no_traceback(capsys)


def test_gpt2_bad_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"n_layer": "two", "n_head": 2, "n_embd": 8, "vocab_size": 11, '
                                          '"n_positions": 8}')
    assert gpt2_main.main(["generate", "--checkpoint", str(tmp_path), "--device", "cpu"]) == 1
    err = _no_traceback(capsys).strip()
    assert "\n" not in err and "n_layer" in err and "config.json" in err


@pytest.mark.parametrize("content", [None, "{", '{"meta": {}, "rows": []}', "[]"],
                         ids=["no_file", "bad_json", "no_rows", "not_results"])
def test_bench_plot_without_usable_results(tmp_path, content, capsys):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    rc = bench_main.main(["--plot", str(tmp_path)])
    assert rc not in (0, None)
    err = _no_traceback(capsys).strip()
    assert "\n" not in err and "results.json" in err


@pytest.mark.parametrize("budget", ["nan", "inf", "-1", "0"])
def test_bench_budget_must_be_positive_and_finite(budget, capsys):
    with pytest.raises(SystemExit) as e:
        bench_main.main(["--budget", budget, "--dry-run"])
    assert e.value.code == 2
    assert "--budget" in _no_traceback(capsys)


def _strict(path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def test_results_json_is_strict_json(tmp_path):
    meta = {**fake_meta(), "limits": {"copy_gbps": math.nan, "matmul_tflops": math.inf}, "elapsed_s": -math.inf}
    rows = fake_rows()
    rows[0]["ms"], rows[1]["gbps"] = math.nan, math.inf
    jpath, _ = write_results(tmp_path, meta, rows)
    data = _strict(jpath)
    assert data["meta"]["limits"]["copy_gbps"] is None and data["rows"][0]["ms"] is None


def test_sass_filter_that_matches_nothing_fails():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "gpt2_kernels.sass", "--match", "no such label", "--json"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout
    assert "no such label" in proc.stderr and "Traceback" not in proc.stderr


def _docs_generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["missing", "directory", "binary", "unclosed_marker"])
def test_doc_update_on_odd_files(tmp_path, kind, capsys):
    generate = _docs_generate()
    path = tmp_path / "doc.md"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00 not text")
    elif kind == "unclosed_marker":
        path.write_text(generate.begin_mark("sizes") + "\nno end marker\n")
    assert generate.main([str(path)]) == 1
    err = _no_traceback(capsys)
    assert str(path) in err
