"""Runs before any test module is imported: without CUDA, route Triton through its interpreter.

Triton reads TRITON_INTERPRET when @triton.jit decorates a kernel, i.e. when `kernels.*` is
imported, so it must be set here, before the test modules import anything.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

ON_GPU = torch.cuda.is_available()


@pytest.fixture
def device():
    return "cuda" if ON_GPU else "cpu"
