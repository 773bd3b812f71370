"""The roofline: each op's intensity is its FLOPs over its bytes (recomputed here from the shapes),
the ridge points are the quoted peaks' ratio, the table and the figure say the same, measured
points are read from a results file, and the shipped figure is the command's."""

import pytest

from bench import roofline
from gpt2.config import GPT2Config
from tests.bench.fake_results import fake_meta, fake_rows


def test_ridges_and_bounds():
    a100, h100, h200 = roofline.GPUS
    assert round(a100.ridge) == 153 and round(h100.ridge) == 295 and round(h200.ridge) == 206
    assert h200.roof(1.0) == pytest.approx(4.8) and h200.roof(1e4) == 989.0


def test_intensities_from_the_shapes():
    ops = {o.name: o for o in roofline.gpt2_step_ops()}
    c = GPT2Config.from_name("gpt2")
    d, M, s = c.n_embd, 8192, 2
    fc = ops["mlp.c_fc (d→4d)"]
    assert fc.intensity == pytest.approx(2 * M * d * 4 * d / (s * (M * d + d * 4 * d + M * 4 * d)))
    # fused causal attention: I ~ S / (2 s) per (batch, head), the T x T scores never in memory
    for S in (256, 1024, 4096):
        assert ops[f"attention, fused, S={S}"].intensity == pytest.approx(S / (2 * s), rel=0.01)
    assert ops["LayerNorm"].intensity == pytest.approx(8 / (2 * s), rel=0.01)
    assert ops["attention, decode, 1024 cached"].intensity == pytest.approx(1.0)
    h200 = roofline.GPUS[-1]
    memory = [n for n, o in ops.items() if o.intensity < h200.ridge]
    assert {"LayerNorm", "GELU + bias", "loss (cross-entropy)", "attention, eager, S=1024"} <= set(memory)
    assert not any(n.startswith(("c_attn", "mlp.", "lm_head")) for n in memory)
    table = roofline.ops_table()
    assert "| LayerNorm | 2.0 | memory | memory | memory |" in table


def test_figure_and_measured_points(tmp_path):
    rows = fake_rows(sizes="gpt2", seq_lens="1024")
    pts = roofline.measured_points(rows)
    assert pts and all(i > 0 and t > 0 for _, i, t in pts)
    assert {p[0].split()[0] for p in pts} >= {"attention", "layer_norm", "gelu"}
    fig = roofline.plot_roofline(measured=pts, device="FAKE")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and "measured" in ax.get_title()
    assert "no GPU" in roofline.plot_roofline().axes[0].get_title()
    from bench.results import write_results

    write_results(tmp_path / "run", fake_meta(), rows)
    assert roofline.main(["--results", str(tmp_path / "run"), "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert roofline.main(["--results", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.png")]) == 2


def test_shipped_figure_exists():
    assert roofline.DEFAULT_OUT.is_file() and roofline.DEFAULT_OUT.stat().st_size > 20_000
