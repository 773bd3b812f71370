"""The first-call tuner (gpt2_kernels/tuner.py), driven with fake launches so that it runs
here: every candidate compiled before any is timed, a failing candidate skipped, the choice
written to disk and read back by a second process without timing, nothing timed inside
CUDA-graph capture or torch.compile tracing, and a cache naming a candidate that no longer
exists ignored. On a GPU, tests/gpt2_kernels/test_gpt2_shapes.py runs the real one."""

import json
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from gpt2_kernels import tuner as tuner_mod
from gpt2_kernels.tuner import Tuner, cache_file

from ..conftest import ROOT

GPU = SimpleNamespace(type="cuda")  # a device as the tuner sees it; nothing is launched on it
KEY = ("fwd", 90, 64, "bfloat16", True, 1024)


def cands(*names):
    return [SimpleNamespace(name=n) for n in names]


class Fake:
    """Launch and compile callbacks that record the order of events; ``ms`` is each candidate's
    time, ``broken`` the candidates that fail to compile, ``crash`` those that fail to launch."""

    def __init__(self, ms, broken=(), crash=()):
        self.ms, self.broken, self.crash = ms, set(broken), set(crash)
        self.events, self.lock, self.running = [], threading.Lock(), 0
        self.overlap = 0

    def compile(self, cfg):
        with self.lock:
            self.running += 1
            self.overlap = max(self.overlap, self.running)
        time.sleep(0.05)  # long enough for the threads to overlap
        with self.lock:
            self.running -= 1
            self.events.append(("compile", cfg.name))
        if cfg.name in self.broken:
            raise RuntimeError("out of shared memory")

    def run(self, cfg):
        self.events.append(("run", cfg.name))
        if cfg.name in self.crash:
            raise RuntimeError("illegal launch")

    def bench(self, fn):
        fn()
        return self.ms[self.events[-1][1]]


def make(fake):
    return Tuner("attention", lambda c: c.name, bench=fake.bench)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv(tuner_mod.CACHE_ENV, str(tmp_path / "tuner"))
    monkeypatch.setattr(tuner_mod, "timing_is_safe", lambda: True)


def test_compiles_every_candidate_in_parallel_before_timing_and_keeps_the_fastest():
    fake = Fake({"a": 2.0, "b": 1.0, "c": 3.0, "d": 1.5})
    t = make(fake)
    best = t.pick(KEY, cands("a", "b", "c", "d"), fake.run, compile=fake.compile, device=GPU, device_name="NVIDIA H200")
    assert best.name == "b"
    kinds = [e[0] for e in fake.events]
    assert kinds == ["compile"] * 4 + ["run"] * 4, fake.events  # no compile inside a timing
    assert fake.overlap >= 2  # the candidates after the first compiled side by side
    assert t.records() == [{"key": KEY, "config": "b", "ms": {"a": 2.0, "b": 1.0, "c": 3.0, "d": 1.5},
                            "source": "timed"}]
    fake.events.clear()
    assert t.pick(KEY, cands("a", "b", "c", "d"), fake.run, compile=fake.compile, device=GPU,
                  device_name="NVIDIA H200").name == "b"
    assert fake.events == []  # remembered in this process


def test_a_candidate_that_does_not_compile_or_launch_is_skipped():
    fake = Fake({"a": 2.0, "b": 1.0, "c": 3.0}, broken={"b"}, crash={"a"})
    assert make(fake).pick(KEY, cands("a", "b", "c"), fake.run, compile=fake.compile, device=GPU,
                           device_name="x").name == "c"
    assert ("run", "b") not in fake.events
    fake = Fake({"a": 1.0, "b": 1.0}, crash={"a", "b"})
    with pytest.raises(RuntimeError, match="no candidate launch ran"):
        make(fake).pick(KEY, cands("a", "b"), fake.run, device=GPU, device_name="x")


def test_one_candidate_or_no_gpu_is_never_timed():
    fake = Fake({"a": 1.0, "b": 0.5})
    t = make(fake)
    assert t.pick(KEY, cands("a"), fake.run, compile=fake.compile, device=GPU, device_name="x").name == "a"
    assert t.pick(KEY, cands("a", "b"), fake.run, compile=fake.compile, device=torch.device("cpu")).name == "a"
    assert fake.events == [] and t.records() == []


def test_the_choice_is_written_per_device_and_triton_version_and_read_by_another_process(tmp_path):
    fake = Fake({"a": 2.0, "b": 1.0})
    make(fake).pick(KEY, cands("a", "b"), fake.run, compile=fake.compile, device=GPU, device_name="NVIDIA H200")
    path = cache_file("attention", "NVIDIA H200")
    assert path.parent == tmp_path / "tuner" and "nvidia-h200" in path.name
    import triton

    assert triton.__version__ in path.name
    assert json.loads(path.read_text()) == {"fwd|90|64|bfloat16|True|1024": {"config": "b", "ms": {"a": 2.0, "b": 1.0}}}
    # A second process reads it and times nothing (its bench would raise).
    code = (
        "from types import SimpleNamespace as N\n"
        "from gpt2_kernels.tuner import Tuner\n"
        "def no(fn): raise AssertionError('timed again')\n"
        "t = Tuner('attention', lambda c: c.name, bench=no)\n"
        "c = t.pick(('fwd', 90, 64, 'bfloat16', True, 1024), [N(name='a'), N(name='b')], lambda c: None,\n"
        "           device=N(type='cuda'), device_name='NVIDIA H200')\n"
        "print(c.name, t.records()[0]['source'])\n")
    env = {"PATH": "/usr/bin:/bin", tuner_mod.CACHE_ENV: str(tmp_path / "tuner"), "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["b", "cache"]
    # Another device, or a cache that names a candidate that is gone, is timed afresh.
    fake = Fake({"a": 2.0, "c": 0.5})
    assert make(fake).pick(KEY, cands("a", "c"), fake.run, device=GPU, device_name="NVIDIA H200").name == "c"
    assert ("run", "c") in fake.events
    fake = Fake({"a": 2.0, "b": 1.0})
    make(fake).pick(KEY, cands("a", "b"), fake.run, device=GPU, device_name="NVIDIA H100 80GB HBM3")
    assert ("run", "a") in fake.events


def test_damaged_or_disabled_cache(tmp_path, monkeypatch):
    path = cache_file("attention", "gpu0")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    fake = Fake({"a": 2.0, "b": 1.0})
    assert make(fake).pick(KEY, cands("a", "b"), fake.run, device=GPU, device_name="gpu0").name == "b"
    assert json.loads(path.read_text())["fwd|90|64|bfloat16|True|1024"]["config"] == "b"  # rewritten whole
    monkeypatch.setenv(tuner_mod.CACHE_ENV, "off")
    assert cache_file("attention", "gpu0") is None
    fake = Fake({"a": 2.0, "b": 1.0})
    assert make(fake).pick(KEY, cands("a", "b"), fake.run, device=GPU, device_name="gpu0").name == "b"


def test_never_times_inside_graph_capture_or_compile_tracing(monkeypatch):
    monkeypatch.setattr(tuner_mod, "timing_is_safe", lambda: False)
    fake = Fake({"a": 2.0, "b": 1.0})
    t = make(fake)
    assert t.pick(KEY, cands("a", "b"), fake.run, compile=fake.compile, device=GPU, device_name="g").name == "a"
    assert fake.events == [] and t.records() == []  # untimed and not remembered
    monkeypatch.setattr(tuner_mod, "timing_is_safe", lambda: True)
    assert t.pick(KEY, cands("a", "b"), fake.run, compile=fake.compile, device=GPU, device_name="g").name == "b"


def test_timing_is_safe_sees_compile_tracing(monkeypatch):
    monkeypatch.undo()  # the real check
    assert tuner_mod.timing_is_safe()
    seen = []

    def f(x):
        seen.append(tuner_mod.timing_is_safe())
        return x + 1

    torch.compile(f, backend="eager", fullgraph=False)(torch.ones(2))
    assert seen and seen[0] is False
    if torch.cuda.is_available():
        g = torch.cuda.CUDAGraph()
        x = torch.ones(2, device="cuda")
        with torch.cuda.graph(g):
            seen.append(tuner_mod.timing_is_safe())
            x.add_(1)
        assert seen[-1] is False
