"""Runs before any test module is imported: without CUDA, route Triton through its interpreter.

Triton reads TRITON_INTERPRET when @triton.jit decorates a kernel, i.e. when `kernels.*` is
imported, so it must be set here, before the test modules import anything.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

ON_GPU = torch.cuda.is_available()

# Property-based tests (hypothesis). "ci", the default, is bounded so that every hypothesis
# suite together stays near a minute on two cores: few examples, no per-example deadline (the
# Triton interpreter's first call compiles), and derandomized, so CI runs the same examples
# every time and a failure reproduces. HYPOTHESIS_PROFILE=long draws 20x as many, at random.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the dev extra is not installed: the hypothesis suites skip themselves
    settings = None
if settings is not None:
    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                   print_blob=True)
    settings.register_profile("ci", max_examples=10, derandomize=True, **_common)
    settings.register_profile("long", max_examples=200, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n):
    """max_examples for a suite whose ci share is n examples: n in "ci", 20 n in "long"."""
    return n * (20 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "long" else 1)


@pytest.fixture
def device():
    return "cuda" if ON_GPU else "cpu"


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and matmuls: on a shared CPU, several threads' hand-offs cost more than the
    work (10x slower on a loaded 2-core machine). Use with pytest.mark.usefixtures."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_without_interpreter(code):
    """Run Python code in a fresh process from the repository root with TRITON_INTERPRET unset
    (this test process has it set), and return the finished process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
