"""python -m bench.breakdown without a GPU: it says it needs one (exit 2), and its host profile
names the Python functions where a call's time goes, per call."""

import time

import pytest
import torch

from bench import breakdown


def test_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert breakdown.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_host_profile_finds_the_slow_function():
    def slow_part():
        t = time.perf_counter()
        while time.perf_counter() - t < 2e-3:
            pass

    def call():
        slow_part()
        return sum(range(10))

    top = breakdown._host_profile(call, n=5)
    name, us = next(iter(top.items()))
    assert "slow_part" in name or "perf_counter" in name
    assert us > 500  # about 2 ms a call, most of it in slow_part's loop
