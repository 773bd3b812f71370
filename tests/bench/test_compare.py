"""python -m bench --compare OLD NEW, on two smoke-like FAKE result folders (invented numbers)."""

import csv

import pytest

import bench.__main__ as cli
from bench.compare import MATCH_KEYS, pairs, table
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


def test_the_table_keeps_its_columns_apart_whatever_the_names():
    # Names longer than a fixed column ("add_layer_norm", "triton+cudagraphs") and a time that one
    # run lacks ("—") once ran into their neighbours: "add_layer_normfwd", "1—     0.8113—".
    ok = next(r for r in fake_rows(seed=4, smoke=True) if r["status"] == "ok" and r["impl"] == "triton")
    long = dict(ok, family="add_layer_norm", impl="triton+cudagraphs", width=12345, batch=123456)
    failed = dict(long, status="error", ms=None, ms_p20=None, ms_p80=None)
    text = table(pairs([long], [long]) + pairs([failed], [long]), fake_meta(), fake_meta())
    means, points = text.split("\n\n")[1:3]
    head, *rest = points.splitlines()
    cells = [line.split() for line in rest]
    assert [c[:7] for c in cells] == [["add_layer_norm", ok["pass"], "triton+cudagraphs", ok["size"], "12345",
                                       str(ok["seq_len"]), "123456"]] * 2
    lo, hi = ok["ms_p20"], ok["ms_p80"]
    assert cells[0][9:] == ["1.000x", f"{lo / hi:.3f}-{hi / lo:.3f}", "same"]
    assert cells[1][7] == "—" and float(cells[1][8]) > 0 and cells[1][9:] == ["—", "old", "error,", "new", "ok"]
    for name in ("pass", "impl", "size", "p20-p80"):  # left-aligned: each cell starts under its header
        start = head.index(name)
        assert all(line[start - 2:start] == "  " and line[start] != " " for line in rest), name
    for name in ("width", "S", "B", "old ms", "new ms", "speedup"):  # right-aligned: ends under it
        end = head.index(name) + len(name)
        assert all(line[end - 1] != " " and line[end:end + 2] == "  " for line in rest), name
    assert means.splitlines()[1].split() == ["add_layer_norm", ok["pass"], "triton+cudagraphs", "1", "1.000x"]
