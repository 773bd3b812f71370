"""What every benchmark shares: sizes and batches, FLOP and byte counts, timing, the device's
measured limits, the results schema, and a progress line.

Batch sizes (every point fills the GPU)
---------------------------------------
A point is one shape; its batch B is chosen from the sequence length S so that the launch has
enough work to fill the chip and run well past launch overhead:

- LayerNorm and GELU are row-wise: B = ceil(ROWS_TARGET / S), so B*S >= 65,536 rows (the
  kernel targets ask for >= 8,192). At width 768 one bf16 tensor is then 100 MB, about twice
  an H100's or H200's L2, and the L2 is flushed between runs anyway (see ``Timer``). Since the
  op only sees rows x width, every S <= 65,536 gives the same shape; it is measured once and
  the other S reuse that measurement (their rows say so).
- Attention: B = ceil(ATTN_TOKENS_TARGET / S) (B*S >= 16,384 tokens), then raised until the
  FlashAttention grid, B * heads * ceil(S / 128) query tiles, is at least 4 per multiprocessor.
- The model: B = ceil(MODEL_TOKENS_TARGET / S), 8,192 tokens a step, GPT-2 style.
- Generation: batch 1 (the target is stated at batch 1), a 128-token prompt, 256 new tokens.

Every batch is then halved while its fused-path working set would exceed a quarter of the
GPU's memory; a shape that still does not fit an implementation is recorded as "oom".

FLOP and byte counts (the same for every implementation of a point)
-------------------------------------------------------------------
Bytes are what a one-pass implementation must move at least (inputs read once, outputs
written once); GB/s from them is an *effective* bandwidth, comparable across implementations.

- LayerNorm, rows R, width N, element size e:
  fwd  = R*N*e (read x) + R*N*e (write y) + 2*N*e (weight, bias) + 8*R (fp32 mean, rstd)
  bwd  = 2*R*N*e (read x, dy) + N*e (weight) + 8*R (mean, rstd) + R*N*e (write dx) + 2*N*e
         (write dweight, dbias); a kernel's per-block partial sums are not counted.
- GELU with bias, rows R, width N: fwd = 2*R*N*e + N*e; bwd = 2*R*N*e (read x, dy) + N*e
  (bias) + R*N*e (dx) + N*e (dbias).
- Attention, causal, q (B,H,S,D): fwd FLOPs = 4*B*H*S*S*D / 2 (two matmuls, QK^T and PV, of
  2*S*S*D each per head, half of them masked); backward = 2.5 x forward (FlashAttention's
  convention: five matmuls of which one recomputes QK^T), so fwd+bwd = 3.5 x forward.
  Bytes fwd = (q, k, v, o) 4*B*H*S*D*e + 4*B*H*S (fp32 logsumexp); bwd = read q,k,v,o,dO and
  write dq,dk,dv: 8*B*H*S*D*e + 4*B*H*S.
- The model (model FLOPs, no recomputation; PaLM's appendix B): per token, 2 FLOPs per weight of
  every matmul, 12*L*d^2 (attention qkv and projection, MLP up and down) + d*V (LM head), plus
  causal attention 2*L*S*d (QK^T and PV, halved); a training step is 3x the forward. Biases,
  LayerNorm, GELU, softmax and the optimizer are not counted. MFU = achieved / measured matmul rate.
"""

import csv
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
DTYPES = ("bf16", "fp16", "fp32")
FAMILIES = ("attention", "layer_norm", "gelu", "model")

# Batch-size rules (see the module docstring).
ROWS_TARGET = 65536
ATTN_TOKENS_TARGET = 16384
ATTN_TILE_M = 128
PROGRAMS_PER_SM = 4
MODEL_TOKENS_TARGET = 8192
GEN_BATCH, GEN_PROMPT, GEN_NEW = 1, 128, 256
MEM_FRACTION = 0.25

# What a run without a GPU plans for (``--dry-run``): an H100 SXM.
DEFAULT_DEVICE = dict(name="(no GPU: planned for an H100)", sm_count=132, total_mem=80 * 2**30)

# A tiny GPT-2 for the interpreter smoke run; D = 64 as in every real GPT-2.
SMOKE_SIZE = "tiny"
SMOKE_CONFIG = dict(n_layer=2, n_head=2, n_embd=128, vocab_size=512, block_size=64)
SMOKE_SEQ_LENS = (16, 32)
SMOKE_MODEL_SEQ_LENS = (16,)
SMOKE_TARGETS = dict(rows=32, attn_tokens=32, model_tokens=16, gen_prompt=4, gen_new=4)

# ok; oom (out of memory); error (the note says what); unavailable (not installed, or no kernel
# for this shape/dtype/device); skipped (not measured: --budget, or the CUDA context was lost).
STATUSES = ("ok", "oom", "error", "unavailable", "skipped")
# ours: all-Triton; baseline: eager, torch.compile, SDPA; peer: Liger, flash-attn, Hugging Face;
# variant: one Triton kernel in an otherwise eager model (never a "best baseline").
ROLES = ("ours", "baseline", "peer", "variant")

# The row schema (JSON and CSV); every row has every field, None where it does not apply.
FIELDS = (
    "family", "op", "pass", "impl", "role", "size", "width", "heads", "seq_len", "batch", "dtype",
    "ms", "gbps", "tflops", "frac_bw", "frac_flops", "speedup_vs_eager", "speedup_vs_best_baseline",
    "tokens_per_s", "peak_mem_bytes", "compile_s", "max_abs_err", "flops", "bytes",
    "status", "note",
)

SMOKE_LABEL = "interpreter smoke run — not performance"


def dtype_bytes(dtype):
    return {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]


def torch_dtype(dtype):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def model_config(size, **overrides):
    """The GPT2Config of a size name (or the smoke run's tiny one)."""
    from gpt2.config import GPT2Config

    if size == SMOKE_SIZE:
        return GPT2Config(**{**SMOKE_CONFIG, **overrides})
    return GPT2Config.from_name(size, **overrides)


# ----------------------------------------------------------------------------------------
# Points and batch sizes
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One shape of one benchmark; every implementation is measured on it."""

    family: str  # "layer_norm" | "gelu" | "attention" | "model"
    op: str  # "layer_norm", "gelu_bias", "attention_causal", "gpt2_forward", ...
    pass_: str  # "fwd" | "bwd" | "fwd+bwd" | "train" | "generate"
    size: str  # a GPT-2 size name
    width: int  # the row width the op sees (n_embd; 4*n_embd for GELU; head size for attention)
    heads: int
    seq_len: int
    batch: int
    dtype: str
    extra: tuple = ()  # (key, value) pairs, e.g. (("prompt", 128), ("new", 256)) for generation

    @property
    def rows(self):
        return self.batch * self.seq_len

    def get(self, key, default=None):
        return dict(self.extra).get(key, default)

    def key(self):
        """Rows of one point share this key (speedups compare within it)."""
        return (self.family, self.op, self.pass_, self.size, self.width, self.heads, self.seq_len,
                self.batch, self.dtype)

    def shape_key(self):
        """What the measured kernel actually sees; row-wise ops at different S can share it."""
        if self.family in ("layer_norm", "gelu"):
            return (self.family, self.op, self.pass_, self.width, self.rows, self.dtype)
        return self.key()

    def label(self):
        return f"{self.family} {self.pass_} {self.size} S={self.seq_len} B={self.batch}"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    sm_count: int
    total_mem: int


def family_points(family, ops, sizes, seq_lens, dtype, info, smoke=False, width=lambda cfg: cfg.n_embd):
    """A point per size, S and pass; ops maps each pass to its op name, width(cfg) is the row
    width the op sees."""
    out = []
    for size in sizes:
        cfg = model_config(size)
        w = width(cfg)
        for S in seq_lens:
            B = batch_for(family, S, width=w, heads=cfg.n_head, dtype=dtype, device=info, smoke=smoke)
            out += [Point(family, op, p, size, w, cfg.n_head, S, B, dtype) for p, op in ops.items()]
    return out


def batch_for(family, seq_len, *, width, heads, dtype, device, smoke=False):
    """The batch B for a point (module docstring: "Batch sizes"); at least 1."""
    elem = dtype_bytes(dtype)
    if family in ("layer_norm", "gelu"):
        target = SMOKE_TARGETS["rows"] if smoke else ROWS_TARGET
        b = max(1, math.ceil(target / seq_len))
        working = lambda b: 4 * b * seq_len * width * elem  # noqa: E731 (x, y, dy, dx)
    elif family == "attention":
        target = SMOKE_TARGETS["attn_tokens"] if smoke else ATTN_TOKENS_TARGET
        b = max(1, math.ceil(target / seq_len))
        tiles = math.ceil(seq_len / ATTN_TILE_M)
        min_programs = PROGRAMS_PER_SM * device.sm_count
        while b * heads * tiles < min_programs:
            b += 1
        working = lambda b: 8 * b * heads * seq_len * width * elem  # noqa: E731 (q,k,v,o + grads)
    elif family == "model":
        target = SMOKE_TARGETS["model_tokens"] if smoke else MODEL_TOKENS_TARGET
        return max(1, math.ceil(target / seq_len))
    else:
        raise ValueError(f"unknown family {family!r}")
    while b > 1 and working(b) > MEM_FRACTION * device.total_mem:
        b //= 2
    return b


# ----------------------------------------------------------------------------------------
# FLOP and byte counts (module docstring: "FLOP and byte counts")
# ----------------------------------------------------------------------------------------


def layer_norm_bytes(rows, width, elem, pass_):
    fwd = 2 * rows * width * elem + 2 * width * elem + 8 * rows
    bwd = 3 * rows * width * elem + 3 * width * elem + 8 * rows
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def gelu_bytes(rows, width, elem, pass_):
    fwd = 2 * rows * width * elem + width * elem
    bwd = 3 * rows * width * elem + 2 * width * elem
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def attention_flops(batch, heads, seq_q, seq_k, head_dim, pass_, causal=True):
    fwd = 4 * batch * heads * seq_q * seq_k * head_dim
    if causal:
        fwd //= 2
    return {"fwd": fwd, "bwd": fwd * 5 // 2, "fwd+bwd": fwd * 7 // 2}[pass_]


def attention_bytes(batch, heads, seq_q, seq_k, head_dim, elem, pass_):
    bh = batch * heads
    fwd = bh * (2 * seq_q + 2 * seq_k) * head_dim * elem + 4 * bh * seq_q
    bwd = bh * (4 * seq_q + 4 * seq_k) * head_dim * elem + 4 * bh * seq_q
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[pass_]


def model_matmul_params(cfg):
    """Weights that take part in a matmul per token: 12*L*d^2 in the blocks, d*V in the LM head."""
    return 12 * cfg.n_layer * cfg.n_embd**2 + cfg.n_embd * cfg.vocab_size


def model_flops(cfg, batch, seq_len, pass_):
    tokens = batch * seq_len
    fwd = 2 * model_matmul_params(cfg) * tokens + 2 * cfg.n_layer * batch * seq_len**2 * cfg.n_embd
    return {"fwd": fwd, "train": 3 * fwd}[pass_]


def generation_bytes(cfg, batch, prompt, new, elem):
    """Bytes a decode step must read, summed over the new tokens: every weight once per step
    (the parameters, counted once: the LM head is tied to the token embedding), and the
    keys and values cached so far."""
    params = model_matmul_params(cfg)  # the tied embedding is read once, as the LM head
    total = 0
    for step in range(new):
        cached = prompt + step
        total += params * elem + 2 * cfg.n_layer * batch * cached * cfg.n_embd * elem
    return total


def counts(point):
    """(flops, bytes) of a point; None where the count does not apply."""
    elem = dtype_bytes(point.dtype)
    if point.family == "layer_norm":
        return None, layer_norm_bytes(point.rows, point.width, elem, point.pass_)
    if point.family == "gelu":
        return None, gelu_bytes(point.rows, point.width, elem, point.pass_)
    if point.family == "attention":
        args = (point.batch, point.heads, point.seq_len, point.seq_len, point.width)
        return attention_flops(*args, point.pass_), attention_bytes(*args, elem, point.pass_)
    if point.family == "model":
        cfg = model_config(point.size, block_size=max(1024, point.seq_len))
        if point.pass_ == "generate":
            prompt, new = point.get("prompt"), point.get("new")
            return None, generation_bytes(cfg, point.batch, prompt, new, elem)
        return model_flops(cfg, point.batch, point.seq_len, point.pass_), None
    raise ValueError(f"unknown family {point.family!r}")


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------


class Timer:
    """Median time of a callable, in milliseconds.

    On CUDA: ``triton.testing.do_bench`` with its median: it warms up, then times each run
    with CUDA events, and zeroes a 256 MB buffer before every run so that the inputs come
    from HBM, not from the L2 (50-60 MB on H100/H200). ``slow=True`` (a training step, a
    generation) uses CUDA events over a fixed number of runs instead, since do_bench's time
    budget would give one or two runs of a 100 ms step. On the CPU (the interpreter smoke run):
    ``time.perf_counter`` medians, which say nothing about GPU performance.
    """

    def __init__(self, device, warmup_ms=25, rep_ms=100, slow_warmup=2, slow_reps=5):
        self.device = device
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms
        self.slow_warmup, self.slow_reps = slow_warmup, slow_reps

    @property
    def method(self):
        if self.device == "cuda":
            return (f"triton.testing.do_bench median (warmup {self.warmup_ms} ms, rep {self.rep_ms} ms, "
                    f"L2 flushed before each run); slow points: CUDA events, median of "
                    f"{self.slow_reps} after {self.slow_warmup} warm-up runs")
        return (f"time.perf_counter median of {self.slow_reps} runs after {self.slow_warmup} "
                "warm-up run(s) on the CPU — not performance")

    def __call__(self, fn, grad_to_none=None, slow=False, warmup=None, reps=None):
        warmup = self.slow_warmup if warmup is None else warmup
        reps = self.slow_reps if reps is None else reps
        if self.device != "cuda":
            return self._cpu(fn, grad_to_none, warmup, reps)
        if slow:
            return self._events(fn, grad_to_none, warmup, reps)
        import triton.testing

        return float(triton.testing.do_bench(
            fn, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=grad_to_none, return_mode="median"
        ))

    def _cpu(self, fn, grad_to_none, warmup, reps):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            _clear_grads(grad_to_none)
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def _events(self, fn, grad_to_none, warmup, reps):
        import torch

        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            _clear_grads(grad_to_none)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def _clear_grads(tensors):
    for t in tensors or ():
        t.grad = None


def synchronize(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def is_oom(exc):
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_memory(device, collect=False):
    """Return cached GPU memory to the allocator's pool (and collect cycles: slow, on request)."""
    import gc

    if collect:
        gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def peak_memory(fn, device):
    """Peak bytes allocated on the GPU while fn runs once (None, and fn not run, on the CPU)."""
    if device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


# ----------------------------------------------------------------------------------------
# The device: what it is, and its measured limits
# ----------------------------------------------------------------------------------------


def device_info(smoke=False):
    import torch

    if smoke or not torch.cuda.is_available():
        if smoke:
            return DeviceInfo(name=f"CPU ({platform.processor() or platform.machine()}), Triton interpreter",
                              sm_count=1, total_mem=8 * 2**30)
        return DeviceInfo(**DEFAULT_DEVICE)
    p = torch.cuda.get_device_properties(0)
    return DeviceInfo(name=p.name, sm_count=p.multi_processor_count, total_mem=p.total_memory)


def measure_limits(device, dtype, timer):
    """The device's copy bandwidth (GB/s) and matmul rate (TFLOP/s), measured now.

    Copy: ``dst.copy_(src)`` of 1 GiB (16 MiB on the CPU), counting bytes read plus written.
    Matmul: ``a @ b`` with 8192 x 8192 random matrices (256 on the CPU) in the run's dtype
    (bf16 by default), 2*n^3 FLOPs.
    """
    nbytes = 2**30 if device == "cuda" else 2**24
    n = 8192 if device == "cuda" else 256
    copy_ms = _time_copy(nbytes, device, timer)
    mm_ms = _time_matmul(n, torch_dtype(dtype), device, timer)
    free_memory(device)
    return {
        "copy_gbps": 2 * nbytes / (copy_ms * 1e-3) / 1e9,
        "matmul_tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12,
        "matmul_dtype": dtype,
        "method": f"copy: dst.copy_(src) of {nbytes} bytes, (read+write)/time; "
                  f"matmul: {n}x{n}x{n} {dtype} torch.matmul on random data, 2*n^3/time",
    }


def _time_copy(nbytes, device, timer):
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src))


def _time_matmul(n, dt, device, timer):
    import torch

    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    return timer(lambda: a @ b)


# ----------------------------------------------------------------------------------------
# Results: rows, speedups, files
# ----------------------------------------------------------------------------------------


def make_row(point, impl, role, status="ok", note="", **values):
    row = dict.fromkeys(FIELDS)
    row.update(
        family=point.family, op=point.op, **{"pass": point.pass_}, impl=impl, role=role,
        size=point.size, width=point.width, heads=point.heads, seq_len=point.seq_len,
        batch=point.batch, dtype=point.dtype, status=status, note=note,
    )
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown result field(s): {', '.join(sorted(unknown))}")
    row.update(values)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    return row


def fill_rates(row, limits):
    """GB/s, TFLOP/s and their fractions of the measured limits, from ms, flops and bytes."""
    ms = row.get("ms")
    if row.get("status") != "ok" or not ms:
        return row
    if row.get("bytes"):
        row["gbps"] = row["bytes"] / (ms * 1e-3) / 1e9
        if limits and limits.get("copy_gbps"):
            row["frac_bw"] = row["gbps"] / limits["copy_gbps"]
    if row.get("flops"):
        row["tflops"] = row["flops"] / (ms * 1e-3) / 1e12
        if limits and limits.get("matmul_tflops"):
            row["frac_flops"] = row["tflops"] / limits["matmul_tflops"]
    return row


def row_key(row):
    return tuple(row[k] for k in ("family", "op", "pass", "size", "width", "heads", "seq_len", "batch", "dtype"))


def by_point(rows):
    """The rows grouped by point: {row_key: [rows]}."""
    groups = {}
    for r in rows:
        groups.setdefault(row_key(r), []).append(r)
    return groups


def fill_speedups(rows):
    """speedup_vs_eager = eager's ms / this row's ms; speedup_vs_best_baseline = the fastest
    baseline's or peer's ms / this row's ms, within each point. In place; returns rows."""
    for group in by_point(rows).values():
        ok = [r for r in group if r["status"] == "ok" and r.get("ms")]
        eager = next((r["ms"] for r in ok if r["impl"] == "eager"), None)
        base = [r["ms"] for r in ok if r["role"] in ("baseline", "peer")]
        best = min(base) if base else None
        for r in group:
            r["speedup_vs_eager"] = eager / r["ms"] if eager and r in ok else None
            r["speedup_vs_best_baseline"] = best / r["ms"] if best and r in ok else None
    return rows


def best_baseline(rows, row):
    """The name of the fastest baseline at a row's point (for summaries)."""
    same = [r for r in rows if row_key(r) == row_key(row) and r["status"] == "ok"
            and r["role"] in ("baseline", "peer") and r.get("ms")]
    return min(same, key=lambda r: r["ms"])["impl"] if same else None


def results_paths(out_dir):
    return os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.csv")


def write_results(out_dir, meta, rows):
    """results.json ({"meta": ..., "rows": [...]}) and results.csv (the same rows), atomically."""
    os.makedirs(out_dir, exist_ok=True)
    jpath, cpath = results_paths(out_dir)
    clean = [{k: _jsonable(r.get(k)) for k in FIELDS} for r in rows]
    tmp = jpath + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": clean}, f, indent=1, default=str)
    os.replace(tmp, jpath)
    tmp = cpath + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in clean:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    os.replace(tmp, cpath)
    return jpath, cpath


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


_INT_FIELDS = {"width", "heads", "seq_len", "batch", "peak_mem_bytes", "flops", "bytes"}
_STR_FIELDS = {"family", "op", "pass", "impl", "role", "size", "dtype", "status", "note"}


def load_results(path):
    """(meta, rows) from a results.json, or from a results folder holding one."""
    if os.path.isdir(path):
        path = results_paths(path)[0]
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "meta" not in data or "rows" not in data:
        raise ValueError(f"{path}: not a benchmark results file (expected keys 'meta' and 'rows')")
    rows = []
    for i, r in enumerate(data["rows"]):
        missing = set(FIELDS) - set(r)
        if missing:
            raise ValueError(f"{path}: row {i} lacks field(s) {', '.join(sorted(missing))}")
        if r["status"] not in STATUSES:
            raise ValueError(f"{path}: row {i} has unknown status {r['status']!r}")
        rows.append({k: r[k] for k in FIELDS})
    return data["meta"], rows


def load_csv(path):
    """Rows from a results.csv, typed like the JSON's."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k in FIELDS:
                v = r.get(k, "")
                if k in _STR_FIELDS:
                    row[k] = v if (v != "" or k == "note") else None
                elif v == "":
                    row[k] = None
                elif k in _INT_FIELDS:
                    row[k] = int(v)
                else:
                    row[k] = float(v)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------
# Run metadata
# ----------------------------------------------------------------------------------------


def git_commit():
    env = os.environ.get("BENCH_GIT_COMMIT")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def peer_version(module, dist):
    """The version of an optional package if it can be imported here, else None."""
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    return package_version(dist) or "installed"


def device_slug(name):
    """A folder name for a device: "NVIDIA H200" -> "nvidia-h200"."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "device"


def base_meta(device, info, settings, smoke):
    import torch

    meta = {
        "device": info.name,
        "device_slug": device_slug(info.name),
        "sm_count": info.sm_count,
        "total_mem_bytes": info.total_mem,
        "capability": None,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "argv": sys.argv[1:],
        "settings": settings,
        "smoke": bool(smoke),
        "label": SMOKE_LABEL if smoke else "",
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        "batch_rules": {
            "rows_target": SMOKE_TARGETS["rows"] if smoke else ROWS_TARGET,
            "attn_tokens_target": SMOKE_TARGETS["attn_tokens"] if smoke else ATTN_TOKENS_TARGET,
            "attn_programs_per_sm": PROGRAMS_PER_SM, "attn_tile_m": ATTN_TILE_M,
            "model_tokens_target": SMOKE_TARGETS["model_tokens"] if smoke else MODEL_TOKENS_TARGET,
            "mem_fraction": MEM_FRACTION,
        },
        "conventions": {
            "bytes": "minimum bytes a one-pass implementation moves (see bench/common.py)",
            "attention_flops": "fwd 4*B*H*S*S*D/2 (causal); bwd 2.5x fwd (FlashAttention convention)",
            "model_flops": "2*(12*L*d^2 + d*V) per token + causal attention 2*L*S*d per token; "
                           "train = 3x forward (no recomputation counted)",
            "speedups": "ratio of median times within a point; best baseline = fastest "
                        "baseline or peer (never ours or a single-kernel variant)",
        },
        "limits": None,
        "peers": {},
        "status": "running",
    }
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        meta["capability"] = f"{major}.{minor}"
    return meta


# ----------------------------------------------------------------------------------------
# Progress line
# ----------------------------------------------------------------------------------------


class Progress:
    """``[ 12/340]  3% 0:42 elapsed, ~4:10 left  attention fwd gpt2 S=1024 triton`` on stderr.

    On a terminal the line is rewritten in place; in a log, one line per step.
    """

    def __init__(self, total, stream=None, budget=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self.budget = budget

    def step(self, label):
        self.done += 1
        elapsed = time.monotonic() - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        if self.budget is not None:
            left = min(left, max(0.0, self.budget - elapsed))
        pct = 100.0 * self.done / max(1, self.total)
        width = len(str(self.total))
        line = (f"[{self.done:>{width}}/{self.total}] {pct:3.0f}% {_hms(elapsed)} elapsed, "
                f"~{_hms(left)} left  {label}")
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Context:
    """Everything a task needs besides its point."""

    device: str
    dtype: str
    timer: Timer
    info: DeviceInfo
    smoke: bool = False
    limits: dict = None
    compile_backend: str = "inductor"
    check: bool = True  # compare each forward output against an fp32 reference
    cache: dict = field(default_factory=dict)  # models built once per size
    meta: dict = field(default_factory=dict)


class Unavailable(Exception):
    """An implementation that cannot run here (not installed, no such op, no kernel for it)."""


def compiled(fn, ctx):
    """``torch.compile`` of an eager function for one shape (dynamic=False).

    Dynamo caches compiled code per Python code object and, past a limit of recompilations,
    silently falls back to eager; one benchmark compiles the same function for many shapes,
    so the caches are reset before each compile.
    """
    import torch

    torch._dynamo.reset()
    return torch.compile(fn, backend=ctx.compile_backend, dynamic=False)


def make_inputs(point, ctx, shape, n=1, params=()):
    """Fresh random inputs of a kernel: n tensors of ``shape``, then a (width,) parameter
    around each value of ``params`` (value + 0.1 * randn), all requiring grad unless the pass
    is fwd; and the output gradient of ``shape`` (None for fwd). Returns (inputs, dout)."""
    import torch

    dt = torch_dtype(point.dtype)
    grad = point.pass_ != "fwd"
    xs = [torch.randn(shape, device=ctx.device, dtype=dt, requires_grad=grad) for _ in range(n)]
    xs += [(c + 0.1 * torch.randn(point.width, device=ctx.device)).to(dt).requires_grad_(grad) for c in params]
    dout = torch.randn(shape, device=ctx.device, dtype=dt) if grad else None
    return tuple(xs), dout


def time_kernel(point, impl, ctx, f, inputs, dout, *, reference=None):
    """Time ``f(*inputs)`` for the point's pass on the given fresh inputs.

    fwd: under no_grad. bwd: one forward, then the backward alone (retain_graph) is timed.
    fwd+bwd: forward then backward with ``dout``. The gradients of the inputs are reset
    between runs. Returns a dict of result fields: ms, peak_mem_bytes, compile_s (impl
    "compile": the first call), max_abs_err.
    """
    import torch

    pass_ = point.pass_
    grads = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    out = {}
    if pass_ == "fwd":
        with torch.no_grad():
            run = lambda: f(*inputs)  # noqa: E731
            t0 = time.perf_counter()
            y = run()
            synchronize(ctx.device)
            first = time.perf_counter() - t0
            if reference is not None and ctx.check:
                ref = reference(*inputs)
                out["max_abs_err"] = float((y.float() - ref.float()).abs().max())
                del ref
            del y
            out["ms"] = ctx.timer(run)
            out["peak_mem_bytes"] = peak_memory(run, ctx.device)
    elif pass_ == "fwd+bwd":
        def run():
            f(*inputs).backward(dout)

        t0 = time.perf_counter()
        run()
        synchronize(ctx.device)
        first = time.perf_counter() - t0
        out["ms"] = ctx.timer(run, grad_to_none=grads)
        _clear_grads(grads)
        out["peak_mem_bytes"] = peak_memory(run, ctx.device)
    elif pass_ == "bwd":
        t0 = time.perf_counter()
        y = f(*inputs)
        y.backward(dout, retain_graph=True)
        synchronize(ctx.device)
        first = time.perf_counter() - t0
        run = lambda: y.backward(dout, retain_graph=True)  # noqa: E731
        out["ms"] = ctx.timer(run, grad_to_none=grads)
        _clear_grads(grads)
        out["peak_mem_bytes"] = peak_memory(run, ctx.device)
    else:
        raise ValueError(f"unknown pass {pass_!r}")
    if impl == "compile":
        out["compile_s"] = first
    return out

