"""python -m bench: measure the Triton kernels and GPT-2 end to end against the baselines.

    python -m bench                          the full sweep on a CUDA GPU
    python -m bench --only attention --sizes gpt2,gpt2-xl --seq-lens 1024,2048
    python -m bench --quick                  a reduced sweep, under a minute
    python -m bench --budget 240             most important points first, done in 240 s
    python -m bench --dry-run                print the plan (tasks, batches, order) and stop
    python -m bench --smoke --out DIR        the whole pipeline on the CPU through Triton's
                                             interpreter at tiny sizes (not performance)
    python -m bench --plot DIR               redraw the plots of a results folder
    python -m bench --compare OLD NEW        the ratio of two result folders, point by point
                                             (table, compare.csv and compare.png in --out or NEW)
    python -m bench --merge A B ... --out DIR   one results folder (and its plots) from the
                                             folders of one run's steps (bench/gpu_check.sh)
    python -m bench --memory [--batch B]     peak memory of every configuration, counted without a GPU

How a point is timed: bench/timing.py, ``Timer`` (built in ``run`` below) and ``time_kernel``.

Without a CUDA GPU (and without --smoke/--plot/--dry-run) it says so and redraws the plots of
the results shipped in bench/results/.

The run's status (results.json, summary.md, the last line) counts the points that errored; a run
in which every point errored measured nothing, says "failed" and exits 1.
"""

import argparse
import math
import os
import signal
import sys
import tempfile
import time

from .memory_sweep import add_arguments as add_memory_arguments, run as run_memory

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")

NO_GPU = ("No CUDA GPU is present: `python -m bench` measures GPU kernels and needs one.\n"
          "  python -m bench --smoke --out DIR   runs the pipeline through Triton's interpreter (not performance)\n"
          "  python -m bench --plot DIR          redraws the plots of a results folder")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        if action.dest != "only":
            return action.help
        from .sweep import families_help  # the families table imports torch: only for --help

        return f"{action.help}: {families_help()}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter, epilog=__doc__)
    p.add_argument("--only", help="benchmarks to run, comma-separated")
    p.add_argument("--sizes", help="GPT-2 sizes, comma-separated: gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    p.add_argument("--seq-lens", help="sequence lengths, comma-separated (default 128,256,...,8192)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                   help="default bf16 (fp32 with --smoke: the CPU has no fast bf16)")
    p.add_argument("--quick", action="store_true", help="gpt2 at S=1024 only, with a 55 s budget")
    p.add_argument("--budget", type=float, help="seconds for the whole run; the most important points "
                                               "run first and the rest are recorded as skipped")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baselines")
    p.add_argument("--out", help="results folder (default bench/results/<device>/)")
    p.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny sizes, not performance")
    p.add_argument("--plot", metavar="DIR", help="redraw the plots of the results in DIR (into --out or DIR)")
    p.add_argument("--compare", nargs=2, metavar=("OLD_DIR", "NEW_DIR"),
                   help="tabulate and plot NEW's speedup over OLD at every point both measured")
    p.add_argument("--merge", nargs="+", metavar="DIR",
                   help="merge these results folders (one run's steps) into --out, then plot them")
    p.add_argument("--dry-run", action="store_true", help="print the planned tasks in order and stop")
    p.add_argument("--verbose", action="store_true", help="print the traceback of every failing point")
    add_memory_arguments(p)  # --memory, --batch, --measure-cuda
    args = p.parse_args(argv)
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):  # refuses nan
        p.error(f"--budget must be a positive, finite number of seconds, got {args.budget}")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out} is a file; it takes a folder (made if missing)")
    return p, args


def replot(results_dir, out_dir=None, quiet=False):
    from .results import load_results, results_paths
    from .plots import render_all
    from .report import write_summary

    meta, rows = load_results(results_dir)
    if not any(r["status"] == "ok" for r in rows):
        statuses = ", ".join(sorted({r["status"] for r in rows})) or "none"
        path = results_paths(results_dir)[0] if os.path.isdir(results_dir) else results_dir
        raise ValueError(f"{path}: nothing to plot: {len(rows)} rows, none measured (statuses: {statuses})")
    out_dir = out_dir or (results_dir if os.path.isdir(results_dir) else os.path.dirname(results_dir))
    paths = render_all(meta, rows, out_dir)
    write_summary(meta, rows, os.path.join(out_dir, "summary.md"))
    if not quiet:
        label = f" ({meta['label']})" if meta.get("label") else ""
        print(f"plots of {meta.get('device')}, {meta.get('date')}{label}:")
        for path in paths:
            print(f"  {path}")
    return paths


def no_gpu(out=None):
    print(NO_GPU)
    from .results import shipped_results

    found = shipped_results(RESULTS_DIR)
    if not found:
        print("No GPU results are shipped in bench/results/ yet, so there are no plots to redraw.")
        return 0
    for path in found:
        folder = os.path.dirname(path)
        dest = os.path.join(out, os.path.basename(folder)) if out else folder
        print(f"Redrawing the shipped results of {os.path.relpath(folder)}:")
        replot(folder, dest)
    return 0


def main(argv=None):
    t_start = time.monotonic()
    parser, args = parse_args(argv)
    if args.memory or args.batch is not None or args.measure_cuda:
        return run_memory(args, parser.prog)
    if args.compare:
        from .compare import CompareError, compare

        try:
            text, csv_path, png = compare(*args.compare, out_dir=args.out)
        except CompareError as e:
            parser.error(f"--compare: {e}")
        print(text, end="")
        print(f"wrote {csv_path}" + (f" and {png}" if png else ""))
        return 0
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out, the folder to write the merged results to")
        from .results import merge_results

        try:
            merge_results(args.merge, args.out)
            replot(args.out, quiet=True)
        except (OSError, ValueError) as e:
            print(f"{parser.prog}: error: --merge: {e}", file=sys.stderr)
            return 1
        print(f"merged {len(args.merge)} results folders into {args.out}")
        return 0
    if args.plot:
        if not os.path.exists(args.plot):
            parser.error(f"--plot: {args.plot} does not exist")
        try:
            replot(args.plot, args.out)
        except (OSError, ValueError) as e:  # no results.json, not JSON, not results, nothing measured
            print(f"{parser.prog}: error: --plot: {e}", file=sys.stderr)
            return 1
        return 0
    if args.dtype is None:
        args.dtype = "fp32" if args.smoke else "bf16"
    if args.smoke:
        # Triton reads this when @triton.jit decorates a kernel, i.e. when `kernels` (or a peer
        # such as liger_kernel) is imported; every such import in bench/ happens after this line.
        os.environ["TRITON_INTERPRET"] = "1"

    from .sweep import QUICK_BUDGET_S, make_sweep, plan, print_plan

    try:
        sweep = make_sweep(args.only, args.sizes, args.seq_lens, args.dtype, quick=args.quick, smoke=args.smoke,
                           compile=not args.no_compile)
    except ValueError as e:
        parser.error(str(e))
    budget = args.budget if args.budget is not None else (QUICK_BUDGET_S if args.quick and not args.smoke else None)

    import torch

    from .points import device_info

    cuda = torch.cuda.is_available()
    info = device_info(smoke=args.smoke)
    if args.dry_run:
        print_plan(plan(sweep, info), info, budget)
        return 0
    if not args.smoke and not cuda:
        return no_gpu(args.out)
    return run(args, sweep, info, budget, t_start)


def run(args, sweep, info, budget, t_start):
    from . import plots
    from .results import fill_speedups, write_results
    from .report import attention_configs, base_meta, device_slug, measure_limits, peer_version, write_summary
    from .timing import Context, Timer
    from .runner import Progress, execute
    from .sweep import plan

    device = "cpu" if sweep.smoke else "cuda"
    if sweep.smoke:
        import torch

        torch.set_num_threads(1)  # tiny ops: threads only add contention on a small CI machine
    if args.out:
        out = args.out
    elif sweep.smoke:
        out = tempfile.mkdtemp(prefix="bench-smoke-")
    else:
        out = os.path.join(RESULTS_DIR, device_slug(info.name))
    os.makedirs(out, exist_ok=True)
    # Smoke: every task has already run its op once (compiling it) before timing starts.
    timer = Timer(device, slow_warmup=0, slow_reps=2) if sweep.smoke else Timer(device)
    ctx = Context(device=device, dtype=sweep.dtype, timer=timer, info=info, smoke=sweep.smoke,
                  compile_backend="aot_eager" if sweep.smoke else "inductor")
    # GPT-2's position table must cover the longest S of the sweep (1024 in the real model).
    block_size = max((64 if sweep.smoke else 1024, *sweep.model_seq_lens))
    ctx.meta = {"block_size": block_size, "verbose": args.verbose}
    settings = dict(sweep.settings(), budget=budget, out=out, timing=timer.method,
                    compile_backend=ctx.compile_backend)
    meta = base_meta(device, info, settings, sweep.smoke)
    meta["peers"] = {module: peer_version(module, dist) for module, dist in
                     (("liger_kernel", "liger-kernel"), ("flash_attn", "flash-attn"), ("transformers", "transformers"))}
    meta["notes"] = ["Triton's fused-attention tutorial is not shipped in the triton package: no line for it"]
    tasks = plan(sweep, info)

    print(f"bench: {info.name}, torch {meta['torch']}, Triton {meta['triton']}, CUDA {meta['cuda']}, "
          f"{sweep.dtype}{', ' + meta['label'] if sweep.smoke else ''}")
    print(f"bench: {len(tasks)} tasks -> {out}" + (f" (budget {budget:.0f} s)" if budget else ""))
    for name, ver in meta["peers"].items():
        if not ver:
            print(f"bench: {name} is not installed; its lines are recorded as unavailable")

    done = []  # the runner's rows so far, kept by save() for an interrupted run

    def save(rows):
        nonlocal done
        done = rows
        write_results(out, meta, fill_speedups([dict(r) for r in rows]))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    progress, rc = None, 0
    try:
        limits = measure_limits(device, sweep.dtype, timer)
        meta["limits"] = ctx.limits = limits
        print(f"bench: measured copy {limits['copy_gbps']:,.4g} GB/s, {sweep.dtype} matmul "
              f"{limits['matmul_tflops']:,.4g} TFLOP/s")
        remaining = None if budget is None else budget - (time.monotonic() - t_start)
        progress = Progress(len(tasks), budget=remaining)
        reserve = 0.0 if budget is None else min(20.0, 0.1 * budget)
        rows = execute(tasks, ctx, budget=remaining, reserve=reserve, progress=progress, save=save)
        skipped = sum(r["status"] == "skipped" for r in rows)
        errors = [r for r in rows if r["status"] == "error"]
        lost = next((r["note"] for r in rows if "CUDA context was lost" in (r["note"] or "")), None)
        if lost:
            status, rc = f"aborted: {lost.replace('not measured: ', '')}", 1
        elif errors and not any(r["status"] == "ok" for r in rows):  # nothing measured: not a result
            status, rc = f"failed: all {len(errors)} points errored (first: {errors[0]['note']})", 1
        else:
            status = f"budget reached: {skipped} of {len(rows)} tasks skipped" if skipped else "complete"
            if errors:  # the rest was measured; these points were not
                status += f", {len(errors)} of {len(rows)} points errored"
    except KeyboardInterrupt:
        status = f"interrupted after {len(done)} of {len(tasks)} tasks"
        print(f"\nbench: {status}; writing what was measured", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - write what was measured, then fail
        status, rc = f"failed after {len(done)} of {len(tasks)} tasks: {type(e).__name__}: {e}", 1
        import traceback

        traceback.print_exc()
    finally:
        signal.signal(signal.SIGTERM, old)
        if progress is not None:
            progress.close()
    rows = fill_speedups([dict(r) for r in done])
    meta["attention_configs"] = attention_configs()
    meta["status"] = status
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    jpath, cpath = write_results(out, meta, rows)
    try:
        paths = plots.render_all(meta, rows, out)
    except Exception as e:  # noqa: BLE001 - the numbers are written; a plot failure must not lose them
        paths = []
        print(f"bench: plotting failed ({type(e).__name__}: {e}); redraw with python -m bench --plot {out}")
    text = write_summary(meta, rows, os.path.join(out, "summary.md"))
    print(text)
    print(f"bench: {meta['status']} in {meta['elapsed_s']:.0f} s; wrote {jpath}, {cpath}, summary.md and "
          f"{len(paths)} plots in {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
