"""bench/gpu_check.sh's control flow, on a CPU, with a fake `python` standing in for the
benchmark and pytest: steps stopped at their limit still return what they wrote, a crashing
step leaves the others running, the deadline skips what it cannot fit, --steps reruns a subset,
OUT never holds more than the 8 files a GPU lease returns, TRITON_INTERPRET never reaches the
steps, and --dry-run prints the plan within the default 390 s."""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("bash") is None,
                                reason="needs bash and coreutils' timeout")
SCRIPT = ROOT / "bench" / "gpu_check.sh"

# The fake interpreter. FAKE="attention=ok,model=hang,tests=fail,rest=crash" says what each
# step does; FAKE_GPU=0 makes the environment check report no GPU.
FAKE = r'''#!PYTHON
import json, os, sys, time
args = sys.argv[1:]
mode = dict(p.split("=") for p in os.environ.get("FAKE", "").split(",") if p)
if args == ["-"]:  # the environment check, a script on stdin
    sys.stdin.read()
    print("device: FAKE GPU" if os.environ.get("FAKE_GPU", "1") == "1" else "device: none")
    print("versions: python 3 torch fake triton fake cuda fake")
    print("plugins: xdist, pytest_timeout")
    sys.exit(0 if os.environ.get("FAKE_GPU", "1") == "1" else 3)
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({"args": args, "interpret": os.environ.get("TRITON_INTERPRET")}) + "\n")
if args[:2] == ["-m", "pytest"]:
    how = mode.get("tests", "ok")
    try:
        if how == "hang":
            time.sleep(60)
        print("...")
        print("5 passed in 0.1s")
    except KeyboardInterrupt:  # what pytest does on SIGINT: name what failed, then stop
        print("FAILED tests/gpt2/test_gpt2_shapes.py::test_training_step_equals_eager - boom")
        print("!!! KeyboardInterrupt !!!")
        print("1 failed, 4 passed in 3.0s")
        sys.exit(2)
    sys.exit(0)
if args[:2] == ["-m", "bench.breakdown"]:
    with open(args[args.index("--out") + 1], "w") as f:
        json.dump({"cases": []}, f)
    print("attention   triton      fwd          0.238    0.191    0.223  _attn_fwd_kernel 0.191")
    sys.exit(0)
if args[:2] == ["-m", "bench"]:
    step = "memory" if "--memory" in args else {"attention": "attention", "model": "model"}.get(
        args[args.index("--only") + 1], "rest")
    out = args[args.index("--out") + 1]
    how = mode.get(step, "ok")
    os.makedirs(out, exist_ok=True)
    def write(status):
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"meta": {"status": status}, "rows": []}, f)
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(f"summary of {step}: {status}\n")
        print(f"bench: {status} in 1 s")
    if how == "crash":
        print("Traceback (most recent call last):\nRuntimeError: CUDA error: an illegal memory access")
        sys.exit(1)
    try:
        if how == "hang":
            time.sleep(60)
        write("complete")
    except KeyboardInterrupt:  # bench writes what it measured, then stops
        write("interrupted after 1 of 9 tasks")
        sys.exit(130)
    sys.exit(0)
sys.exit(f"fake python: unexpected call {args}")
'''


def run(tmp_path, *args, fake="", gpu=True, **env_extra):
    fake_py = tmp_path / "python"
    fake_py.write_text(FAKE.replace("#!PYTHON", "#!" + sys.executable))
    fake_py.chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PYTHON": str(fake_py), "FAKE": fake, "FAKE_GPU": "1" if gpu else "0",
           "FAKE_CALLS": str(calls), "WHEELS": str(tmp_path / "no-wheels"), "TRITON_INTERPRET": "1",
           "GPU_CHECK_RESERVE": "2", "GPU_CHECK_MIN_STEP": "2", "TMPDIR": str(tmp_path), **env_extra}
    out = tmp_path / "OUT"
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(SCRIPT), str(out), *args], env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    called = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return p, out, called, seconds


def archive(out):
    """{path inside steps.tar.gz: its bytes (None for a folder)}."""
    with tarfile.open(out / "steps.tar.gz") as t:
        return {m.name.removeprefix("./"): (t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()}


def step_status(out):
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \|", (out / "SUMMARY.md").read_text(), re.M)
    return {name: status.strip() for name, status in rows if name != "step"}


def test_every_step_runs_in_order_and_out_holds_few_files(tmp_path):
    p, out, called, _ = run(tmp_path, "--deadline", "60")
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(os.listdir(out)) == ["SUMMARY.md", "env.txt", "gpu_check.log", "pytest.log", "steps.tar.gz"]
    assert step_status(out) == {"attention": "ok", "model": "ok", "tests": "ok", "breakdown": "ok", "rest": "ok"}
    assert [c["args"][1] for c in called] == ["bench", "bench", "pytest", "bench.breakdown", "bench"]
    assert [c["args"][3] for c in called if c["args"][1] == "bench"][:2] == ["attention", "model"]
    pytest_args = next(c["args"] for c in called if c["args"][1] == "pytest")
    assert pytest_args[2:4] == ["-m", "gpu"] and "-n" in pytest_args and "--timeout" in pytest_args
    assert all(c["interpret"] is None for c in called), "TRITON_INTERPRET reached a step"
    names = archive(out)
    for step in ("attention", "model", "rest"):
        assert f"steps/{step}/results.json" in names and f"steps/{step}.log" in names
    assert "steps/breakdown.json" in names
    summary = (out / "SUMMARY.md").read_text()
    assert "FAKE GPU" in summary and "summary of attention: complete" in summary and "5 passed" in summary
    assert "_attn_fwd_kernel 0.191" in summary


def test_a_step_past_its_limit_or_crashing_leaves_the_rest_running(tmp_path):
    p, out, called, seconds = run(tmp_path, "--deadline", "40", "--limits", "model=3,tests=3",
                                  fake="model=hang,tests=hang,rest=crash")
    assert p.returncode == 1
    status = step_status(out)
    assert status["attention"] == "ok"
    assert status["model"].startswith("stopped at its limit") and status["tests"].startswith("stopped at its limit")
    assert status["rest"] == "failed (exit 1)"
    assert seconds < 30  # two 3 s limits, not two 60 s hangs
    # SIGINT, not SIGKILL: the benchmark wrote what it had, pytest named its failure.
    names = archive(out)
    assert json.loads(names["steps/model/results.json"])["meta"]["status"].startswith("interrupted")
    log = (out / "pytest.log").read_text()
    assert "FAILED tests/gpt2/test_gpt2_shapes.py::test_training_step_equals_eager" in log
    summary = (out / "SUMMARY.md").read_text()
    assert "FAILED tests/gpt2/test_gpt2_shapes.py" in summary and "illegal memory access" not in summary


def test_the_deadline_skips_what_it_cannot_fit(tmp_path):
    p, out, called, seconds = run(tmp_path, "--deadline", "8", "--limits", "attention=5", fake="attention=hang",
                                  GPU_CHECK_MIN_STEP="3")
    status = step_status(out)
    assert status["attention"].startswith("stopped at its limit")
    assert all(status[s].startswith("skipped") for s in ("model", "tests", "breakdown", "rest")), status
    assert [c["args"][1] for c in called] == ["bench"] and seconds < 15


def test_steps_reruns_a_subset(tmp_path):
    p, out, called, _ = run(tmp_path, "--steps", "tests,rest", "--deadline", "60")
    assert p.returncode == 0
    assert [c["args"][1] for c in called] == ["pytest", "bench"]
    assert set(step_status(out)) == {"tests", "rest"}


def test_the_memory_step_runs_only_when_named(tmp_path):
    p, out, called, _ = run(tmp_path, "--steps", "memory", "--deadline", "60")
    assert p.returncode == 0, p.stdout + p.stderr
    (args,) = [c["args"] for c in called]
    assert args[:3] == ["-m", "bench", "--memory"] and "--measure-cuda" in args
    assert step_status(out) == {"memory": "ok"}


def test_no_gpu_is_said_and_runs_nothing(tmp_path):
    p, out, called, _ = run(tmp_path, gpu=False)
    assert p.returncode == 3 and called == []
    assert "no CUDA GPU" in (out / "gpu_check.log").read_text()
    assert set(step_status(out).values()) == {"not run: no GPU"}


def test_dry_run_prints_each_step_within_the_default_deadline(tmp_path):
    p = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "OUT"), "--dry-run"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0 and not (tmp_path / "OUT").exists()
    starts = re.findall(r"^  (\w+)\s+at \+\s*(\d+)s, limit\s+(\d+)s: (.+)$", p.stdout, re.M)
    assert [s[0] for s in starts] == ["attention", "model", "tests", "breakdown", "rest"]
    assert int(starts[-1][1]) + int(starts[-1][2]) <= 390
    assert "-m gpu" in starts[2][3] and "total at most 390s" in p.stdout


@pytest.mark.parametrize("args", [[], ["OUT", "--steps", "nope"], ["OUT", "--deadline", "soon"],
                                  ["OUT", "--limits", "tests=x"], ["OUT", "--what"]])
def test_bad_arguments_are_usage_errors(tmp_path, args):
    p = subprocess.run(["bash", str(SCRIPT), *[str(tmp_path / a) if a == "OUT" else a for a in args]],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.strip() and "Traceback" not in p.stderr
