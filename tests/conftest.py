"""Runs before any test module is imported: without CUDA, route Triton through its interpreter.

Triton reads TRITON_INTERPRET when @triton.jit decorates a kernel, i.e. when `kernels.*` is
imported, so it must be set here, before the test modules import anything.
"""

import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def _interpreter_rounds_bf16_to_nearest():
    """Make Triton's interpreter round fp32 -> bf16 to nearest-even, as a GPU does.

    The interpreter (3.6 to 3.9) converts fp32 to bf16 by dropping the low 16 bits: truncation,
    every error toward zero. A kernel storing bf16 then errs by up to one ulp, always the same
    way, and sums of such results drift where a GPU's rounding errors cancel. Seen in CI: dK at
    a key range of one key (exactly 0 in float64, P = 1 so dP - rowsum(dO * O) cancels) summed
    41 truncated O's into 0.042 against a bf16 tolerance of 0.04; on a GPU the same cancellation
    leaves rounding noise. fp16 is unaffected (numpy's astype rounds to nearest). The test
    tests/gpt2_kernels/test_interpreter.py fails if this stops taking effect.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    truncating = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            # In numpy, not torch: the memory tests count the bytes torch allocates during a kernel.
            x = np.asarray(src.data, dtype=np.float32)
            bits = x.view(np.uint32).astype(np.uint64)
            nearest = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # ties to even; carries into the exponent
            bf16 = np.where(np.isnan(x), 0x7FC0 | (bits >> 16) & 0x8000, nearest).astype(np.uint16)
            return interpreter.TensorHandle(bf16, dst_type.scalar)
        return truncating(self, src, dst_type)

    builder.cast_impl = cast_impl


if not torch.cuda.is_available():
    _interpreter_rounds_bf16_to_nearest()

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


# Every test draws fresh random inputs, but from a seed: one per session (random unless
# GPT2_TEST_SEED is set), mixed with the test's id, set before the test runs. A failing test
# prints the line that replays it exactly: GPT2_TEST_SEED=<seed> python -m pytest <test id>.
SEED = int(os.environ.get("GPT2_TEST_SEED") or random.SystemRandom().randrange(2**31))


def seed_of(nodeid):
    """The seed a test runs with: the session's seed mixed with the test's id."""
    return (SEED + zlib.crc32(nodeid.encode())) % 2**31


def pytest_report_header(config):
    return f"random inputs seeded: GPT2_TEST_SEED={SEED} (set it to replay this session)"


@pytest.fixture(autouse=True)
def _seeded(request):
    seed = seed_of(request.node.nodeid)
    random.seed(seed)
    torch.manual_seed(seed)  # the CPU and every CUDA generator
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        report.sections.append(("replay", f"GPT2_TEST_SEED={SEED} python -m pytest '{item.nodeid}'"))


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


def value_errors_without_interpreter(setup, *calls):
    """Without TRITON_INTERPRET (see run_without_interpreter): run ``setup``, then each call,
    printing "ValueError: <message>" for each that raises one; returns what was printed."""
    tries = "".join(f"try:\n    {call}\nexcept ValueError as e:\n    print('ValueError:', e)\n" for call in calls)
    out = run_without_interpreter(f"import torch, gpt2_kernels\n{setup}\n{tries}")
    assert out.returncode == 0, out.stderr
    return out.stdout


def atomic_calls(*modules):
    """(module, "atomic_add") for each ``tl.atomic_*`` call in the source of the named modules (e.g.
    "gpt2_kernels.gelu"): a reduction without them has a fixed order on a GPU as well. Read from the source,
    because the interpreter runs programs one at a time, so no run can show an atomic's order."""
    import ast
    import importlib
    import inspect

    trees = {name: ast.parse(inspect.getsource(importlib.import_module(name))) for name in modules}
    return [(name, n.attr) for name, tree in trees.items() for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr.startswith("atomic_")]


def repeat_on_gpu(test):
    """Mark a test that runs a kernel twice and asks for the same bits as part of the GPU subset,
    skipped without CUDA: Triton's interpreter runs a grid's programs one at a time, so the order
    of their adds never varies and such a test cannot fail there."""
    reason = ("Triton's interpreter runs a grid's programs one at a time, so the order of their adds never "
              "varies and a repeat cannot differ; on a GPU it can")
    return pytest.mark.gpu(pytest.mark.skipif(not ON_GPU, reason=reason)(test))
