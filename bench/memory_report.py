"""The files and tables of a ``--memory`` run (bench/memory_sweep.py), in --out:

    memory.json   {"meta", "rows", "largest_batch", "savings"}
    memory.csv    the rows: size, impl (the configuration), pass, seq_len, batch, peak_mem_bytes,
                  resident_bytes (the weights, and to train AdamW's state: what the pass starts
                  with), measured_bytes (a GPU's max_memory_allocated, with --measure-cuda), status
    memory.md     the largest-batch table, the savings and every peak, as printed
    memory.png    peak memory against S, a panel per size and pass (bench/plots/memory.py)

No torch here: docs/generate.py renders the README's part from a memory.json (``readme_markdown``).
"""

import csv
import json
import os

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "memory")
FIELDS = ("size", "impl", "pass", "seq_len", "batch", "peak_mem_bytes", "resident_bytes", "measured_bytes",
          "status", "note")


def gb(n):
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def _sizes(data):
    from .points import SIZES

    return sorted({r["size"] for r in data["rows"]}, key=lambda s: SIZES.index(s) if s in SIZES else -1)


def _impls(data):
    return list(dict.fromkeys(r["impl"] for r in data["rows"]))


def batch_table(data):
    """The largest batch per configuration (rows) and size (columns), as 'H100 / H200'."""
    fit = {(t["size"], t["impl"]): t for t in data["largest_batch"]}
    caps = list(data["meta"]["settings"]["capacities"])
    sizes = [s for s in _sizes(data) if any(k[0] == s for k in fit)]
    lines = ["| configuration | " + " | ".join(f"{s}: {' / '.join(c.split()[0] for c in caps)}" for s in sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    for impl in _impls(data):
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
