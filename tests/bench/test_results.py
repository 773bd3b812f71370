"""The results schema, speedups and rates, the targets, and how the runner records what happens."""

import collections
import json
import types

import pytest
import torch

import bench.runner as runner
from bench.runner import Progress
from bench.impls import Unavailable
from bench.points import DeviceInfo, Point
from bench.results import (
    FIELDS, STATUSES, fill_rates, fill_speedups, load_csv, load_results, make_row, results_paths, write_results,
)
from bench.timing import Context, Timer
from bench.sweep import Task
from bench.targets import TARGETS, evaluate

from .fake_results import fake_meta, fake_rows


def _pt(family="attention", pass_="fwd", size="gpt2", S=1024, B=16, dtype="bf16", width=64, heads=12):
    op = {"attention": "attention_causal", "layer_norm": "layer_norm", "gelu": "gelu_bias",
          "model": "gpt2_train_step"}[family]
    return Point(family, op, pass_, size, width, heads, S, B, dtype)


def _row(point, impl, ms, role="baseline", status="ok", **kw):
    return make_row(point, impl, role, status=status, ms=ms if status == "ok" else None, **kw)


def test_rows_round_trip_through_json_and_csv(tmp_path):
    rows = fake_rows(sizes="gpt2", seq_lens="1024")
    assert {r["status"] for r in rows} <= set(STATUSES)
    meta = fake_meta()
    jpath, cpath = write_results(tmp_path, meta, rows)
    assert (jpath, cpath) == results_paths(tmp_path)
    meta2, rows2 = load_results(tmp_path)
    assert meta2 == meta
    assert rows2 == rows
    assert list(rows2[0]) == list(FIELDS)
    ok = [r for r in rows2 if r["status"] == "ok"]
    assert ok and all(r["ms_p20"] <= r["ms"] <= r["ms_p80"] for r in ok)
    assert load_csv(cpath) == rows
    with open(cpath) as f:
        assert f.readline().strip().split(",") == list(FIELDS)


def test_load_rejects_a_file_that_is_not_results(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="meta"):
        load_results(bad)
    row = make_row(_pt(), "triton", "ours", ms=1.0)
    del row["ms"]
    bad.write_text(json.dumps({"meta": {}, "rows": [row]}))
    with pytest.raises(ValueError, match="ms"):
        load_results(bad)
    row = make_row(_pt(), "triton", "ours", ms=1.0)
    row["status"] = "great"
    bad.write_text(json.dumps({"meta": {}, "rows": [row]}))
    with pytest.raises(ValueError, match="great"):
        load_results(bad)


def test_make_row_refuses_unknown_fields_and_statuses():
    with pytest.raises(ValueError, match="speed"):
        make_row(_pt(), "triton", "ours", speed=3)
    with pytest.raises(ValueError, match="status"):
        make_row(_pt(), "triton", "ours", status="fine")


def test_speedups_compare_within_a_point_against_eager_and_the_fastest_baseline():
    p, q = _pt(S=1024), _pt(S=2048)
    rows = [
        _row(p, "eager", 8.0), _row(p, "compile", 4.0), _row(p, "sdpa-flash", 2.0),
        _row(p, "flash_attn", 2.5, role="peer"), _row(p, "triton", 1.0, role="ours"),
        _row(p, "sdpa-math", None, status="oom"),
        _row(q, "eager", 30.0), _row(q, "triton", 3.0, role="ours"),
        _row(q, "triton-attention", 1.0, role="variant"),
    ]
    fill_speedups(rows)
    by = {(r["seq_len"], r["impl"]): r for r in rows}
    assert by[1024, "triton"]["speedup_vs_eager"] == 8.0
    assert by[1024, "triton"]["speedup_vs_best_baseline"] == 2.0  # sdpa-flash, not the other point's
    assert by[1024, "eager"]["speedup_vs_best_baseline"] == 0.25
    assert by[1024, "sdpa-math"]["speedup_vs_eager"] is None
    # a single-kernel variant is never "the best baseline"
    assert by[2048, "triton"]["speedup_vs_best_baseline"] == 10.0


def test_rates_from_counts_and_limits():
    limits = {"copy_gbps": 2000.0, "matmul_tflops": 500.0}
    r = fill_rates(make_row(_pt(), "triton", "ours", ms=2.0, bytes=4 * 10**9, flops=4 * 10**11), limits)
    assert r["gbps"] == pytest.approx(2000.0)  # 4 GB in 2 ms
    assert r["frac_bw"] == pytest.approx(1.0)
    assert r["tflops"] == pytest.approx(200.0)  # 0.4 PFLOP in 2 ms
    assert r["frac_flops"] == pytest.approx(0.4)
    r = fill_rates(make_row(_pt(), "triton", "ours", status="oom", bytes=10), limits)
    assert r["gbps"] is None


def _target(tid):
    return next(t for t in TARGETS if t.id == tid)


def test_targets_judge_each_point():
    rows = []
    for S, ours in ((1024, 0.8), (2048, 0.85)):
        p = _pt(S=S)
        rows += [_row(p, "sdpa-flash", 1.0), _row(p, "sdpa-cudnn", 0.9), _row(p, "eager", 5.0),
                 _row(p, "triton", ours, role="ours")]
    p = _pt(S=512)
    rows += [_row(p, "sdpa-flash", 0.5), _row(p, "triton", 0.45, role="ours")]
    p = _pt(S=4096, dtype="fp32")  # the targets are stated for bf16
    rows += [_row(p, "sdpa-flash", 1.0), _row(p, "triton", 5.0, role="ours")]
    res = {t["id"]: t for t in evaluate(rows, [_target("attn_fwd_long"), _target("attn_fwd_short"),
                                               _target("attn_fwdbwd_flash")])}
    long = res["attn_fwd_long"]
    assert long["status"] == "missed" and (long["met"], long["total"]) == (1, 2)
    pts = {p["seq_len"]: p for p in long["points"]}
    assert pts[1024]["value"] == pytest.approx(0.9 / 0.8) and pts[1024]["versus"] == "sdpa-cudnn"
    assert pts[1024]["met"] and not pts[2048]["met"]
    assert long["worst"] == pytest.approx(0.9 / 0.85)
    assert res["attn_fwd_short"]["status"] == "met"
    assert res["attn_fwdbwd_flash"]["status"] == "not measured"


def test_memory_and_fraction_targets():
    p = _pt("model", "train", size="gpt2-xl", S=1024, B=8, width=1600, heads=25)
    rows = [_row(p, "eager+sdpa", 10.0, peak_mem_bytes=100), _row(p, "triton", 8.0, role="ours",
                                                                  peak_mem_bytes=101, frac_flops=0.52)]
    res = {t["id"]: t for t in evaluate(rows, [_target("train_memory"), _target("train_mfu_xl")])}
    assert res["train_memory"]["status"] == "missed" and res["train_memory"]["worst"] == pytest.approx(1.01)
    assert res["train_mfu_xl"]["status"] == "met"


def test_row_wise_targets_count_each_shape_once():
    rows = fake_rows(sizes="gpt2,gpt2-xl")
    res = {t["id"]: t for t in evaluate(rows)}
    assert res["ln_fwd_compile"]["total"] == 2  # two widths; every S is the same rows x width


# ---- the runner ----------------------------------------------------------------------------------


class _FakeFamily(types.SimpleNamespace):
    """A family whose implementations succeed, run out of memory, are missing, or fail."""

    def run(self, point, impl, ctx):
        self.calls.append((point.seq_len, impl))
        if impl == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        if impl == "na":
            raise Unavailable("not installed")
        if impl == "bad":
            raise ValueError("kernel exploded\nsecond line")
        return {"ms": 2.0, "note": "fine"}


@pytest.fixture
def fake_family(monkeypatch):
    fam = _FakeFamily(calls=[])
    monkeypatch.setattr(runner, "FAMILIES", collections.defaultdict(lambda: fam))
    return fam


def _ctx():
    return Context(device="cpu", dtype="bf16", timer=Timer("cpu"), info=DeviceInfo("cpu", 1, 2**30),
                   limits={"copy_gbps": 10.0, "matmul_tflops": 1.0})


def test_failures_become_rows_and_the_run_goes_on(fake_family):
    p = _pt("layer_norm", width=768)
    tasks = [Task(p, impl, "baseline") for impl in ("oom", "na", "bad", "eager")]
    saved = []
    rows = runner.execute(tasks, _ctx(), save=lambda rows: saved.append(len(rows)))
    assert [r["status"] for r in rows] == ["oom", "unavailable", "error", "ok"]
    assert "out of memory" in rows[0]["note"]
    assert rows[1]["note"] == "not installed"
    assert rows[2]["note"] == "ValueError: kernel exploded"
    assert rows[3]["note"] == "fine" and rows[3]["gbps"] is not None
    assert saved == [1, 2, 3, 4]  # written after every task


def test_same_row_wise_shape_is_measured_once(fake_family):
    a, b = _pt("layer_norm", S=1024, B=64, width=768), _pt("layer_norm", S=2048, B=32, width=768)
    rows = runner.execute([Task(a, "eager", "baseline"), Task(b, "eager", "baseline")], _ctx())
    assert fake_family.calls == [(1024, "eager")]
    assert rows[1]["seq_len"] == 2048 and rows[1]["batch"] == 32 and rows[1]["ms"] == rows[0]["ms"]
    assert "S=1024" in rows[1]["note"]
    # attention is not row-wise: both lengths run
    fake_family.calls.clear()
    runner.execute([Task(_pt(S=1024), "eager", "baseline"), Task(_pt(S=2048, B=8), "eager", "baseline")], _ctx())
    assert len(fake_family.calls) == 2


def test_budget_skips_what_would_overrun_and_keeps_going(fake_family):
    now = [0.0]

    def clock():
        return now[0]

    def run(point, impl, ctx):
        fake_family.calls.append((point.seq_len, impl))
        now[0] += 10.0 if impl == "compile" else 1.0
        return {"ms": 1.0}

    fake_family.run = run
    tasks = [Task(_pt(S=S), impl, "baseline") for S, impl in
             ((1024, "eager"), (1024, "compile"), (2048, "compile"), (2048, "eager"), (4096, "eager"))]
    rows = runner.execute(tasks, _ctx(), budget=14.0, clock=clock)
    # eager (1 s), compile (10 s): 11 s used; the next compile is expected to take 10 s more: skipped;
    # the cheap ones after it still fit
    assert [r["status"] for r in rows] == ["ok", "ok", "skipped", "ok", "ok"]
    assert "--budget" in rows[2]["note"]
    assert (2048, "compile") not in fake_family.calls


def test_a_lost_cuda_context_ends_the_measuring(fake_family):
    def run(point, impl, ctx):
        fake_family.calls.append(impl)
        if impl == "triton":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"ms": 1.0}

    fake_family.run = run
    tasks = [Task(_pt(), impl, "baseline") for impl in ("eager", "triton", "sdpa-flash", "compile")]
    rows = runner.execute(tasks, _ctx())
    assert [r["status"] for r in rows] == ["ok", "error", "skipped", "skipped"]
    assert fake_family.calls == ["eager", "triton"]
    assert "CUDA context was lost" in rows[2]["note"] and "triton" in rows[2]["note"]


def test_progress_line(capsys):
    import io

    buf = io.StringIO()
    prog = Progress(3, stream=buf)
    for label in ("a", "b", "c"):
        prog.step(label)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[1/3]") and lines[-1].startswith("[3/3] 100%")
    assert lines[1].endswith(" b")


def test_timer_keeps_the_spread_of_the_runs():
    from bench.timing import summarize

    t = summarize([5.0, 1.0, 2.0, 4.0, 3.0])
    assert (t.ms, t.p20, t.p80) == (3.0, 1.8, 4.2)  # numpy.percentile's linear interpolation
    assert t.fields() == {"ms": 3.0, "ms_p20": 1.8, "ms_p80": 4.2}
    assert t.scaled(0.5).fields() == {"ms": 1.5, "ms_p20": 0.9, "ms_p80": 2.1}
    calls = []
    timing = Timer("cpu", slow_warmup=1, slow_reps=4)(lambda: calls.append(1))
    assert len(calls) == 5 and 0 <= timing.p20 <= timing.ms <= timing.p80


def test_timer_asks_do_bench_for_the_median_and_the_20th_and_80th_percentiles(monkeypatch):
    import triton.testing

    asked = {}

    def do_bench(fn, warmup, rep, grad_to_none=None, quantiles=None, return_mode="mean"):
        asked.update(quantiles=quantiles, warmup=warmup, rep=rep)
        return [2.0, 1.5, 3.0]  # in the order asked: 0.5, 0.2, 0.8

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    t = Timer("cuda")(lambda: None)
    assert asked["quantiles"] == [0.5, 0.2, 0.8]
    assert t.fields() == {"ms": 2.0, "ms_p20": 1.5, "ms_p80": 3.0}


def test_merge_results_of_separate_steps(tmp_path):
    # bench/gpu_check.sh runs the benchmark as steps, one process and one folder each; the
    # merged folder holds every row once, a later step's row winning at the same point.
    import bench.__main__ as bench_main
    from bench.results import load_results, merge_results

    rows = fake_rows()
    attn = [r for r in rows if r["family"] == "attention"]
    model = [r for r in rows if r["family"] == "model"]
    redo = dict(attn[0], ms=attn[0]["ms"] * 2)
    for name, part, status in (("attention", attn, "complete"), ("model", model + [redo], "budget reached")):
        write_results(tmp_path / name, dict(fake_meta(), status=status, elapsed_s=1.0), part)
    meta, merged = merge_results([tmp_path / "attention", tmp_path / "model"], tmp_path / "all")
    assert len(merged) == len(attn) + len(model)
    assert meta["status"] == "attention: complete; model: budget reached"
    assert [r["dir"] for r in meta["runs"]] == ["attention", "model"]
    again = {(r["family"], r["pass"], r["size"], r["seq_len"], r["batch"], r["impl"]): r
             for r in load_results(tmp_path / "all")[1]}
    k = (redo["family"], redo["pass"], redo["size"], redo["seq_len"], redo["batch"], redo["impl"])
    assert again[k]["ms"] == redo["ms"]
    assert bench_main.main(["--merge", str(tmp_path / "attention"), str(tmp_path / "model"),
                            "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "summary.md").is_file() and list((tmp_path / "cli").glob("*.png"))
    assert bench_main.main(["--merge", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1
    with pytest.raises(SystemExit):
        bench_main.main(["--merge", str(tmp_path / "attention")])  # no --out
