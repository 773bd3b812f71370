"""Every test's random inputs come from a seed (tests/conftest.py): a failing test prints the
line that replays it, and the same GPT2_TEST_SEED draws the same inputs again."""

import os
import subprocess
import sys

from .conftest import ROOT

PROBE = '''
import torch
def test_draw():
    print("DRAW", torch.randn(3).tolist())
    assert False
'''


def _run(tmp_path, seed):
    test = tmp_path / "test_probe.py"
    test.write_text(PROBE)
    env = {**os.environ, "GPT2_TEST_SEED": str(seed)}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                        "-c", str(ROOT / "pyproject.toml"), "--confcutdir", str(ROOT / "tests"), str(test)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    draw = next(line for line in p.stdout.splitlines() if line.startswith("DRAW"))
    return draw, p.stdout


def test_a_failing_test_prints_its_replay_line_and_the_seed_replays_it(tmp_path):
    (tmp_path / "conftest.py").write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                                          "from tests.conftest import _seeded, pytest_runtest_makereport  # noqa: F401\n")
    first, out = _run(tmp_path, 1234)
    assert "GPT2_TEST_SEED=1234 python -m pytest" in out and "test_draw" in out
    again, _ = _run(tmp_path, 1234)
    other, _ = _run(tmp_path, 99)
    assert first == again and first != other
