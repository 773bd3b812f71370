"""Benchmarks of the Triton kernels and of GPT-2 end to end, with plots: ``python -m bench``.

    bench/points.py      sizes, sequence lengths, a Point, the batch that fills the GPU, its FLOP
                         and byte counts
    bench/timing.py      how a point is timed (Timer, time_kernel, time_step), peak memory
    bench/impls.py       looking up an implementation (pinned SDPA too); Unavailable
    bench/families.py    every family as one table (FAMILIES): the kernel ops as OpFamily rows
                         (attention, layer_norm, add_layer_norm, gelu, loss), and the whole models:
    bench/model.py       GPT-2 end to end (forward, training step, generation), and Hugging Face's
                         GPT2LMHeadModel as shipped and patched (gpt2.hf)
    bench/generation.py  tokens/s of generation and the decode attention (opt-in)
    bench/results.py     the row schema, speedups, results.json/.csv, merging runs' folders
    bench/report.py      what a run records about itself, the device's measured limits, summary.md
    bench/compare.py     --compare OLD NEW: the ratio of two result folders, point by point
    bench/sweep.py       what to measure and in which order (--budget keeps the important first)
    bench/runner.py      runs the tasks; OOM/errors/unavailable become rows, the run goes on; progress
    bench/targets.py     the performance targets, checked against results
    bench/memory.py      --memory: peak bytes counted on fake tensors (no GPU), with CUDA's autocast
                         rules; the run, the largest batch that fits, the savings and the files in
                         bench/memory_sweep.py
    bench/breakdown.py   python -m bench.breakdown: where a kernel's time goes (GPU kernels, host)
    bench/roofline.py    python -m bench.roofline: every op of a GPT-2 step on the A100/H100/H200 roofline
    bench/plots/         PNG plots (style, ops, end_to_end, compare, memory)
    bench/gpu_check.sh   tests + kernel inspection + benchmark on a GPU machine, packed in <= 8 files

Nothing here imports ``kernels`` at import time: ``--smoke`` must set TRITON_INTERPRET first.
"""
