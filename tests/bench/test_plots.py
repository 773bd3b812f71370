"""Plots from a hand-made (FAKE, invented numbers) results file, and the command line around them."""

import os

import pytest

import bench.__main__ as cli
from bench import plots
from bench.points import SMOKE_LABEL
from bench.results import load_results, write_results

from .fake_results import FAKE_DEVICE, fake_meta, fake_rows

PNG = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"speedup_attention.png", "speedup_layer_norm.png", "speedup_gelu.png", "throughput.png",
             "model.png", "memory.png", "targets.png"}


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake_results")
    write_results(d, fake_meta(), fake_rows(sizes="gpt2,gpt2-xl", seq_lens="512,1024,2048"))
    return d


@pytest.fixture
def figures(monkeypatch):
    """What each plot draws: its title, and the axis labels of every panel with data."""
    seen = {}
    from bench.plots import style

    finish = style.finish

    def spy(fig, meta, path):
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison and (ax.lines or ax.patches)]
        seen[os.path.basename(path)] = dict(
            title=fig._suptitle.get_text() if fig._suptitle else "",
            labels=[(ax.get_xlabel(), ax.get_ylabel()) for ax in axes],
        )
        return finish(fig, meta, path)

    monkeypatch.setattr(style, "finish", spy)
    return seen


def test_plot_command_draws_every_plot_with_device_date_and_units(fake_dir, tmp_path, figures, capsys):
    assert cli.main(["--plot", str(fake_dir), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    meta, _ = load_results(fake_dir)
    assert ALL_PLOTS <= set(os.listdir(tmp_path)) and set(figures) == ALL_PLOTS
    for name in ALL_PLOTS:
        assert name in printed
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == PNG
        assert os.path.getsize(tmp_path / name) > 20_000
    for name, fig in figures.items():
        assert FAKE_DEVICE in fig["title"] and meta["date"] in fig["title"], name
        if name == "targets.png":
            continue
        assert fig["labels"], name
        for xlabel, ylabel in fig["labels"]:
            # every axis says what it measures in what unit: (GB/s), (x), (GiB), (tokens) ...
            assert "(" in ylabel and ")" in ylabel, (name, ylabel)
            if xlabel:
                assert "(" in xlabel, (name, xlabel)
    summary = (tmp_path / "summary.md").read_text()
    assert FAKE_DEVICE in summary and "| attention fwd >= 1.10x fastest SDPA backend (S >= 1024) |" in summary
    with pytest.raises(SystemExit):
        cli.main(["--plot", str(tmp_path / "nowhere")])


def test_smoke_results_are_labelled_not_performance(fake_dir, tmp_path, figures):
    meta, rows = load_results(fake_dir)
    meta = dict(meta, smoke=True, label=SMOKE_LABEL)
    attention = [r for r in rows if r["family"] == "attention"]
    plots.plot_kernel_speedups(meta, attention, "attention", tmp_path / "a.png")
    plots.plot_targets(meta, attention, tmp_path / "t.png")
    assert len(figures) == 2 and all(SMOKE_LABEL.upper() in f["title"] for f in figures.values())


def test_partial_and_failed_results_still_plot(fake_dir, tmp_path):
    meta, rows = load_results(fake_dir)
    gelu = [r for r in rows if r["family"] == "gelu"]
    paths = {os.path.basename(p) for p in plots.render_all(meta, gelu, tmp_path / "gelu")}
    assert paths == {"speedup_gelu.png", "throughput.png", "targets.png"}
    failed = [dict(r, status="oom", ms=None, gbps=None, peak_mem_bytes=None) for r in gelu]
    paths = {os.path.basename(p) for p in plots.render_all(meta, failed, tmp_path / "failed")}
    assert "targets.png" in paths


def test_without_a_gpu_it_says_so_and_redraws_the_shipped_results(fake_dir, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    shipped = tmp_path / "results"
    shipped.mkdir()
    monkeypatch.setattr(cli, "RESULTS_DIR", str(shipped))
    redrawn = []
    monkeypatch.setattr(cli, "replot", lambda src, dest=None: redrawn.append((src, dest)))
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU is present" in out and "No GPU results are shipped" in out and not redrawn
    write_results(shipped / "fake-gpu", fake_meta(), load_results(fake_dir)[1])
    write_results(shipped / "smoke", dict(fake_meta(), smoke=True), [])  # never counts as shipped
    assert cli.main(["--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU is present" in out and "Redrawing" in out
    assert redrawn == [(str(shipped / "fake-gpu"), str(tmp_path / "out" / "fake-gpu"))]


def test_dry_run_prints_the_plan_in_order(capsys):
    assert cli.main(["--dry-run", "--only", "attention", "--sizes", "gpt2,gpt2-xl", "--seq-lens", "1024,2048"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("72 tasks")
    first = out.splitlines()[2].split()
    assert first[2:8] == ["attention", "fwd", "gpt2", "1024", "16", "triton"]


def test_speedup_axes_are_log2_centred_on_1x_and_unmeasured_points_are_marked(fake_dir, tmp_path, monkeypatch):
    from bench.plots import style

    meta, rows = load_results(fake_dir)
    attention = [r for r in rows if r["family"] == "attention"]
    # one point out of memory for ours, and one speedup of 0.001x (a smoke-like value)
    oom = next(r for r in attention if r["impl"] == "triton" and r["pass"] == "fwd" and r["seq_len"] == 512)
    oom.update(status="oom", ms=None, ms_p20=None, ms_p80=None)
    slow = next(r for r in attention if r["impl"] == "triton" and r["pass"] == "fwd" and r["seq_len"] == 2048)
    slow.update(ms=slow["ms"] * 1000, ms_p20=slow["ms_p20"] * 1000, ms_p80=slow["ms_p80"] * 1000)
    seen = {}

    def spy(fig, meta, path):
        seen["axes"] = [(ax.get_yscale(), ax.get_ylim(), [t.get_text() for t in ax.get_yticklabels()],
                         [tuple(line.get_xdata()) for line in ax.lines]) for ax in fig.axes]
        return path

    monkeypatch.setattr(style, "finish", spy)
    plots.plot_kernel_speedups(meta, attention, "attention", tmp_path / "a.png")
    top = seen["axes"][0]  # forward: Triton vs the fastest SDPA backend
    scale, (lo, hi), labels, xs = top
    assert scale == "log" and lo * hi == pytest.approx(1.0)  # centred on 1x
    assert lo < 0.001 and "1x" in labels
    assert any(x == (512,) for x in xs)  # the out-of-memory point is a marker, not a gap


def test_speedup_axis_reads_small_differences():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plots.style import speedup_axis

    fig, ax = plt.subplots()
    ax.plot([1, 2], [1.07, 1.12])
    speedup_axis(ax, [1.07, 1.12], "speedup (x)")
    lo, hi = ax.get_ylim()
    assert hi < 1.25 and lo * hi == pytest.approx(1.0)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "1.05x" in labels and "1.1x" in labels
    plt.close(fig)
