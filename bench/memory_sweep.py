"""The ``--memory`` run: every size, S and configuration counted by bench/memory.py, the largest
batch at S = 1024 that fits each GPU, the savings; bench/memory_report.py writes the files.
Nothing here imports torch until a run starts (``python -m bench`` imports this module to parse).
"""

import math
import sys
import time

from .memory_report import DEFAULT_OUT, FIELDS, gb, markdown, write_files

# (what is saved, the configuration without it, the one with it), for the training step
SAVINGS = (
    ("fused loss (no logits)", "eager+sdpa", "triton-loss"),
    ("Triton attention over eager attention", "eager", "triton-attention"),
    ("SDPA over eager attention", "eager", "eager+sdpa"),
    ("all Triton over eager", "eager", "triton"),
    ("all Triton over eager+SDPA", "eager+sdpa", "triton"),
    ("Hugging Face patched over its SDPA", "hf-sdpa", "hf-triton"),
)
# The flags of a timing run that a --memory run has no use for.
NOT_WITH_MEMORY = ("only", "dtype", "quick", "budget", "smoke", "plot", "compare", "dry_run", "no_compile")


def add_arguments(parser):
    parser.add_argument("--memory", action="store_true", help="peak bytes of every configuration, counted without a GPU")
    parser.add_argument("--batch", type=int, help="--memory: the batch at every S (default ceil(8192 / S))")
    parser.add_argument("--measure-cuda", action="store_true", help="--memory: also torch.cuda.max_memory_allocated")


def default_batch(S):
    from .points import MODEL_TOKENS_TARGET

    return math.ceil(MODEL_TOKENS_TARGET / S)  # bench/model.py's B*S ~ 8192 tokens


def check_args(args):
    """The one-line complaint about a --memory command line, or None."""
    if not args.memory:
        return "--batch and --measure-cuda go with --memory"
    given = [f"--{name.replace('_', '-')}" for name in NOT_WITH_MEMORY if getattr(args, name, None) not in (None, False)]
    if given:
        return f"--memory does not take {', '.join(given)}"
    if args.batch is not None and args.batch < 1:
        return f"--batch must be a positive number of sequences, got {args.batch}"
    return None


def largest_batch(peak_at, capacity, known, limit=1 << 20):
    """The largest B <= limit whose peak ``peak_at(B)`` fits ``capacity`` (0 when B = 1 does not),
    for a peak that grows with B. ``known`` {B: peak} holds two or more points measured already
    (and keeps those measured here): the line through the two smallest gives a guess, steps of
    1, 2, 4, ... from it find a B that fits and one that does not, and halving closes the gap."""

    def fits(b):
        if b not in known:
            known[b] = peak_at(b)
        return known[b] <= capacity

    b0, b1 = sorted(known)[:2]
    slope = (known[b1] - known[b0]) / (b1 - b0)
    guess = min(limit, max(1, b0 + math.floor((capacity - known[b0]) / slope))) if slope > 0 else 2 * b1
    step = 1
    if fits(guess):  # lo fits, hi does not
        lo = guess
        while lo + step <= limit and fits(lo + step):
            lo, step = lo + step, 2 * step
        hi = min(lo + step, limit + 1)
    else:
        hi = guess
        while hi - step >= 1 and not fits(hi - step):
            hi, step = hi - step, 2 * step
        lo = max(0, hi - step)  # B = 0 fits trivially
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _measure(size, impl, pass_, S, B, measure_cuda):
    """A row: the count (and with measure_cuda the GPU's reading) of one point."""
    from . import memory
    from .impls import Unavailable

    row = dict.fromkeys(FIELDS)
    row.update(size=size, impl=impl, **{"pass": pass_}, seq_len=S, batch=B, status="ok", note="")
    try:
        row["peak_mem_bytes"], row["resident_bytes"] = memory.peak_bytes(size, impl, pass_, S, B)
    except Unavailable as e:
        return {**row, "status": "unavailable", "note": str(e)}
    except Exception as e:  # noqa: BLE001 - one point's failure is its row, the run goes on
        return {**row, "status": "error", "note": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    if measure_cuda:
        import torch

        try:
            row["measured_bytes"] = memory.peak_bytes(size, impl, pass_, S, B, device="cuda")[0]
        except torch.cuda.OutOfMemoryError:
            row["note"] = "measured: out of GPU memory"
        torch.cuda.empty_cache()
    return row


def sweep(sizes, seq_lens, batch=None, measure_cuda=False, log=print):
    from . import memory

    rows = []
    for size in sizes:
        for S in seq_lens:
            B = batch or default_batch(S)
            for impl in memory.configs():
                t0 = time.monotonic()
                for pass_ in memory.PASSES:
                    rows.append(_measure(size, impl, pass_, S, B, measure_cuda))
                log(f"memory: {size} S={S} B={B} {impl:<16} " + "  ".join(
                    f"{r['pass']} {gb(r['peak_mem_bytes'])}" + (f" (GPU {gb(r['measured_bytes'])})" if measure_cuda else "")
                    for r in rows[-len(memory.PASSES):]) + f"  [{time.monotonic() - t0:.1f} s]")
    return rows


def largest_batches(rows, log=print):
    """For each size and configuration trained at S = TABLE_SEQ_LEN: the largest batch that fits
    each of memory.CAPACITIES, from the row's batch, twice it, and what largest_batch measures."""
    from . import memory

    table = []
    for r in rows:
        if r["pass"] == "train" and r["seq_len"] == memory.TABLE_SEQ_LEN and r["status"] == "ok":
            known = {r["batch"]: r["peak_mem_bytes"]}
            peak_at = lambda b, r=r: memory.peak_bytes(r["size"], r["impl"], "train", r["seq_len"], b)[0]  # noqa: E731
            known[2 * r["batch"]] = peak_at(2 * r["batch"])
            fit = {name: largest_batch(peak_at, cap, known) for name, cap in memory.CAPACITIES}
            table.append({"size": r["size"], "impl": r["impl"], "seq_len": r["seq_len"], **fit})
            log(f"memory: largest batch at S={r['seq_len']}, {r['size']} {r['impl']}: "
                + ", ".join(f"{b} on {name}" for name, b in fit.items()))
    return table


def savings(rows):
    """What each step of SAVINGS saves in the training step, at every size, S and batch counted."""
    peak = {(r["size"], r["seq_len"], r["batch"], r["impl"]): r["peak_mem_bytes"]
            for r in rows if r["pass"] == "train" and r["status"] == "ok"}
    out = []
    for (size, S, B, impl), without in peak.items():
        for what, base, ours in SAVINGS:
            if impl == base and (size, S, B, ours) in peak:
                saved = without - peak[(size, S, B, ours)]
                out.append({"what": what, "size": size, "seq_len": S, "batch": B, "without": base, "with": ours,
                            "saved_bytes": saved, "saved_frac": saved / without})
    return sorted(out, key=lambda s: [what for what, _, _ in SAVINGS].index(s["what"]))  # stable: sweep order within


def run(args, prog):
    """``python -m bench --memory ...``: 0, or 2 with a one-line error for a bad command line."""
    from .sweep import make_sweep

    def fail(message):
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    problem = check_args(args)
    if problem:
        return fail(problem)
    from . import memory

    try:  # the timing run's checks of --sizes and --seq-lens
        plan = make_sweep(sizes=args.sizes, seq_lens=args.seq_lens or ",".join(map(str, memory.SEQ_LENS)))
    except ValueError as e:
        return fail(str(e))
    import torch

    if args.measure_cuda and not torch.cuda.is_available():
        return fail("--measure-cuda needs a CUDA GPU (without one, --memory counts alone)")
    from .report import git_commit, package_version

    measured = torch.cuda.get_device_name() if args.measure_cuda else None
    meta = {
        "device": "a CUDA GPU, counted on the CPU", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__, "triton": package_version("triton"), "cuda": torch.version.cuda,
        "transformers": package_version("transformers"), "git_commit": git_commit(), "argv": sys.argv[1:],
        "method": "Counted on the CPU, not measured on a GPU: the model runs on PyTorch's fake tensors (no data) "
                  "while every tensor's bytes are added up from its allocation to its release; bf16 autocast with "
                  "CUDA's rules, fp32 weights and fused AdamW (bench/memory.py)."
                  + (f" GPU: torch.cuda.max_memory_allocated on {measured}." if measured else ""),
        "settings": {"sizes": list(plan.sizes), "seq_lens": list(plan.model_seq_lens), "dtype": "bf16 autocast",
                     "batch": args.batch or "ceil(8192 / S)", "capacities": dict(memory.CAPACITIES),
                     "table_seq_len": memory.TABLE_SEQ_LEN, "measured_on": measured},
    }
    rows = sweep(plan.sizes, plan.model_seq_lens, args.batch, args.measure_cuda)
    table = largest_batches(rows) if memory.TABLE_SEQ_LEN in plan.model_seq_lens else []
    data = {"meta": meta, "rows": rows, "largest_batch": table, "savings": savings(rows)}
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    paths = write_files(args.out or DEFAULT_OUT, data)
    print(markdown(data))
    print(f"memory: {len(rows)} points in {meta['elapsed_s']:.0f} s; wrote {', '.join(paths)}")
    return 0
