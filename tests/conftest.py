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
