"""The ``--memory`` run: every size, S and configuration counted by bench/memory.py, the largest
batch at S = 1024 that fits each GPU, the savings, and the files, in --out:

    python -m bench --memory [--sizes gpt2,...] [--seq-lens 1024,...] [--batch B] [--out DIR]
    python -m bench --memory --measure-cuda ...    on a GPU: torch.cuda.max_memory_allocated beside

    memory.json   {"meta", "rows", "largest_batch", "savings"}
    memory.csv    the rows (FIELDS); resident_bytes is what the pass starts with (the weights, and to
                  train AdamW's state), measured_bytes a GPU's max_memory_allocated (--measure-cuda)
    memory.md     the largest-batch table, the savings and every peak, as printed
    memory.png    peak memory against S, a panel per size and pass (bench/plots/memory.py)

docs/generate.py renders the README's part from a memory.json (``readme_markdown``).
"""

import csv
import json
import math
import os
import sys
import time

from .points import MODEL_TOKENS_TARGET, SIZES
from .sweep import make_sweep

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "memory")
FIELDS = ("size", "impl", "pass", "seq_len", "batch", "peak_mem_bytes", "resident_bytes", "measured_bytes",
          "status", "note")
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


def gb(n):
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def add_arguments(parser):
    parser.add_argument("--memory", action="store_true", help="peak bytes of every configuration, counted without a GPU")
    parser.add_argument("--batch", type=int, help="--memory: the batch at every S (default ceil(8192 / S))")
    parser.add_argument("--measure-cuda", action="store_true", help="--memory: also torch.cuda.max_memory_allocated")


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
            B = batch or math.ceil(MODEL_TOKENS_TARGET / S)  # bench/model.py's B*S ~ 8192 tokens
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


# ---- the tables and files -------------------------------------------------------------------


def _sizes(data):
    return sorted({r["size"] for r in data["rows"]}, key=lambda s: SIZES.index(s) if s in SIZES else -1)


def batch_table(data):
    """The largest batch per configuration (rows) and size (columns), as 'H100 / H200'."""
    fit = {(t["size"], t["impl"]): t for t in data["largest_batch"]}
    caps = list(data["meta"]["settings"]["capacities"])
    sizes = [s for s in _sizes(data) if any(k[0] == s for k in fit)]
    lines = ["| configuration | " + " | ".join(f"{s}: {' / '.join(c.split()[0] for c in caps)}" for s in sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    for impl in dict.fromkeys(r["impl"] for r in data["rows"]):
        cells = [" / ".join(str(fit[(s, impl)][c]) if (s, impl) in fit else "-" for c in caps) for s in sizes]
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def savings_table(data, seq_len):
    """What each saving saves at one S, a column per size: GB and the share of the peak without it."""
    rows = [s for s in data["savings"] if s["seq_len"] == seq_len]
    sizes = [s for s in _sizes(data) if any(r["size"] == s for r in rows)]
    batches = sorted({r["batch"] for r in rows})
    lines = [f"| saving (training step, S = {seq_len}, B = {', '.join(map(str, batches))}) | without -> with | "
             + " | ".join(sizes) + " |", "| --- | --- |" + " ---: |" * len(sizes)]
    for what in dict.fromkeys(r["what"] for r in rows):
        at = {r["size"]: r for r in rows if r["what"] == what}
        first = next(iter(at.values()))
        cells = [f"{at[s]['saved_bytes'] / 1e9:.2f} GB ({at[s]['saved_frac']:.0%})" if s in at else "-" for s in sizes]
        lines.append(f"| {what} | {first['without']} -> {first['with']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def peaks_table(data):
    measured = any(r["measured_bytes"] for r in data["rows"])
    lines = ["| size | S x B | configuration | forward | training step | resident (train) |"
             + (" GPU forward | GPU train |" if measured else ""),
             "| --- | --- | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if measured else "")]
    by = {(r["size"], r["seq_len"], r["batch"], r["impl"], r["pass"]): r for r in data["rows"]}
    for (size, S, B, impl, pass_), r in by.items():
        if pass_ == "fwd":
            t = by.get((size, S, B, impl, "train"), dict.fromkeys(FIELDS))
            cells = [gb(r["peak_mem_bytes"]) if r["status"] == "ok" else r["status"],
                     gb(t["peak_mem_bytes"]) if t["status"] == "ok" else t["status"], gb(t["resident_bytes"])]
            if measured:  # the GPU's reading, and its ratio to the count
                cells += [gb(x["measured_bytes"]) + (f" ({x['measured_bytes'] / x['peak_mem_bytes']:.3f}x)"
                                                     if x["measured_bytes"] and x["peak_mem_bytes"] else "")
                          for x in (r, t)]
            lines.append(f"| {size} | {S} x {B} | {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(data):
    meta = data["meta"]
    text = f"# Peak memory of GPT-2\n\n{meta['method']}\n\n"
    if data["largest_batch"]:
        text += (f"## The largest batch at S = {meta['settings']['table_seq_len']} that fits (training step)\n\n"
                 + batch_table(data) + "\n")
    for S in dict.fromkeys(r["seq_len"] for r in data["savings"]):
        text += f"## Savings at S = {S}\n\n" + savings_table(data, S) + "\n"
    return text + "## Peaks\n\n" + peaks_table(data)


def readme_markdown(path=os.path.join(DEFAULT_OUT, "memory.json")):
    """The README's part: the largest-batch table and the savings at S = 1024 of a memory.json."""
    with open(path) as f:
        data = json.load(f)
    return batch_table(data) + "\n" + savings_table(data, seq_len=data["meta"]["settings"]["table_seq_len"])


def write_files(out, data):
    from .plots.memory import plot_memory_sweep
    from .results import _jsonable

    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"memory.{ext}") for ext in ("json", "csv", "md", "png")]
    with open(paths[0], "w") as f:
        json.dump(_jsonable(data), f, indent=1, allow_nan=False)
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: "" if r[k] is None else r[k] for k in FIELDS} for r in data["rows"])
    with open(paths[2], "w") as f:
        f.write(markdown(data))
    plot_memory_sweep(data, paths[3])
    return paths
