"""PNG plots of a results file, readable at a glance (matplotlib, Agg backend).

    speedup_attention.png   per pass: the Triton kernel's speedup over the target's reference
                            (top) and over eager PyTorch (bottom) vs S, a line per GPT-2 size
    speedup_layer_norm.png, speedup_gelu.png
                            the same against the row width (hidden size): every S is one shape
    throughput.png          achieved GB/s (LayerNorm, GELU) and TFLOP/s (attention) of every
                            implementation against the measured copy bandwidth / matmul rate
    model.png               training-step speedups vs S, each kernel alone and all together,
                            MFU, generation tokens/s vs Hugging Face
    memory.png              peak memory of the training step per configuration and of attention
                            (python -m bench --memory draws its own memory.png: bench/plots/memory.py)
    targets.png             every target: met, missed or not measured, with its worst point
    compare.png             (python -m bench --compare) the ratio of two runs, point by point

How to read them: speedup axes are log2 and centred on 1x (a 0.001x and a 1.07x are both
readable; up is faster); bands and error bars are the 20th-80th percentiles of the timed runs;
a target is a red dashed line and a point that misses it a red cross; a point that was not
measured (out of memory, skipped, error) is a marker at the bottom of its panel. Every title
carries the device and date; a smoke run's carry "interpreter smoke run — not performance".
"""

import os

from .end_to_end import plot_memory, plot_model, plot_targets
from .ops import plot_kernel_speedups, plot_throughput
from .style import finish

__all__ = ["finish", "plot_kernel_speedups", "plot_memory", "plot_model", "plot_targets", "plot_throughput",
           "render_all"]


def render_all(meta, rows, out_dir):
    """Every plot that the rows have data for; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for family in ("attention", "layer_norm", "gelu"):
        written.append(plot_kernel_speedups(meta, rows, family, os.path.join(out_dir, f"speedup_{family}.png")))
    written.append(plot_throughput(meta, rows, os.path.join(out_dir, "throughput.png")))
    written.append(plot_model(meta, rows, os.path.join(out_dir, "model.png")))
    written.append(plot_memory(meta, rows, os.path.join(out_dir, "memory.png")))
    written.append(plot_targets(meta, rows, os.path.join(out_dir, "targets.png")))
    return [p for p in written if p]
