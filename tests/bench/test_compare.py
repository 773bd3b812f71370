"""python -m bench --compare OLD NEW, on two smoke-like FAKE result folders (invented numbers)."""

import csv

import pytest

import bench.__main__ as cli
from bench.compare import MATCH_KEYS, pairs
from bench.results import load_results, write_results

from .fake_results import fake_meta, fake_rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """OLD and NEW: the same smoke points, the Triton kernels 1.25x slower in OLD."""
    root = tmp_path_factory.mktemp("compare")
    old, new = root / "old", root / "new"
    write_results(old, dict(fake_meta(), git_commit="old"), fake_rows(seed=1, smoke=True, slower={"triton": 1.25}))
    write_results(new, dict(fake_meta(), git_commit="new"), fake_rows(seed=2, smoke=True))
    return old, new


def test_compare_matches_every_point_and_divides_the_times(runs, tmp_path, capsys):
    old, new = runs
    assert cli.main(["--compare", str(old), str(new), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    _, old_rows = load_results(old)
    _, new_rows = load_results(new)
    with open(tmp_path / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(new_rows) == len(old_rows)
    old_by = {tuple(str(r[k]) for k in MATCH_KEYS): r for r in old_rows}
    new_by = {tuple(str(r[k]) for k in MATCH_KEYS): r for r in new_rows}
    for row in table:
        key = tuple(row[k] for k in MATCH_KEYS)
        o, n = old_by[key], new_by[key]
        if o["status"] == n["status"] == "ok":
            assert float(row["speedup"]) == pytest.approx(o["ms"] / n["ms"])
            assert float(row["ratio"]) == pytest.approx(n["ms"] / o["ms"])
            assert float(row["speedup_p20"]) <= float(row["speedup"]) <= float(row["speedup_p80"])
        else:
            assert row["speedup"] == "" and (row["old_status"], row["new_status"]) == (o["status"], n["status"])
    ours = [float(r["speedup"]) for r in table if r["impl"] == "triton" and r["speedup"]]
    assert ours and all(1.1 < s < 1.4 for s in ours)  # the invented 1.25x, within the jitter
    assert "geomean" in out and "commit old" in out and "commit new" in out
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_compare_writes_into_the_new_folder_by_default(runs):
    old, new = runs
    assert cli.main(["--compare", str(old), str(new)]) == 0
    assert (new / "compare.csv").exists() and (new / "compare.png").exists()


def test_compare_refuses_folders_without_results_or_common_points(runs, tmp_path, capsys):
    old, _ = runs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        cli.main(["--compare", str(empty), str(old)])
    assert "OLD folder" in capsys.readouterr().err
    no_rows = tmp_path / "no_rows"
    write_results(no_rows, fake_meta(), [])
    with pytest.raises(SystemExit):
        cli.main(["--compare", str(old), str(no_rows)])
    assert "no rows" in capsys.readouterr().err
    other = tmp_path / "other"
    write_results(other, fake_meta(), fake_rows(sizes="gpt2", seq_lens="1024"))
    with pytest.raises(SystemExit):
        cli.main(["--compare", str(old), str(other)])
    err = capsys.readouterr().err
    assert "no point in common" in err and "sizes tiny" in err and "sizes gpt2" in err


def test_pairs_say_when_a_change_is_beyond_the_noise():
    rows = fake_rows(seed=3, smoke=True)
    ok = next(r for r in rows if r["status"] == "ok" and r["impl"] == "triton")
    slow = dict(ok, ms=ok["ms"] * 2, ms_p20=ok["ms"] * 1.9, ms_p80=ok["ms"] * 2.1)
    same = dict(ok, ms=ok["ms"] * 1.001)
    assert pairs([ok], [slow])[0]["verdict"] == "slower"
    assert pairs([slow], [ok])[0]["verdict"] == "faster"
    assert pairs([ok], [same])[0]["verdict"] == "same"
