"""How a point is timed: ``time_kernel`` (a kernel's pass) and ``Timer`` (any callable).

Each timing keeps its spread: the median (``ms``) and the 20th and 80th percentiles
(``ms_p20``, ``ms_p80``) of the timed runs, which the plots draw as a band. Also here: the
device's measured limits (copy bandwidth, matmul rate), peak memory, and the Context a task
runs in.
"""

import statistics
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from .points import DeviceInfo, torch_dtype

QUANTILES = (0.5, 0.2, 0.8)  # median first: do_bench's order


class Timing(NamedTuple):
    """Milliseconds of the timed runs: median, 20th and 80th percentile."""

    ms: float
    p20: float
    p80: float

    def scaled(self, k):
        return Timing(self.ms * k, self.p20 * k, self.p80 * k)

    def fields(self):
        """The result row's fields."""
        return {"ms": self.ms, "ms_p20": self.p20, "ms_p80": self.p80}


def _quantile(sorted_xs, q):
    """Linear interpolation between the closest ranks (numpy's default)."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(times):
    """A Timing from the milliseconds of each run."""
    xs = sorted(times)
    return Timing(statistics.median(xs), _quantile(xs, 0.2), _quantile(xs, 0.8))


class Timer:
    """The time of a callable, in milliseconds: a ``Timing`` (median, p20, p80).

    On CUDA: ``triton.testing.do_bench`` with quantiles (0.5, 0.2, 0.8): it warms up, then
    times each run with CUDA events, and zeroes a 256 MB buffer before every run so that the inputs come
    from HBM, not from the L2 (50-60 MB on H100/H200). ``slow=True`` (a training step, a
    generation) uses CUDA events over a fixed number of runs instead, since do_bench's time
    budget would give one or two runs of a 100 ms step. On the CPU (the interpreter smoke run):
    ``time.perf_counter``, which says nothing about GPU performance.
    """

    def __init__(self, device, warmup_ms=25, rep_ms=100, slow_warmup=2, slow_reps=5):
        self.device = device
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms
        self.slow_warmup, self.slow_reps = slow_warmup, slow_reps

    @property
    def method(self):
        if self.device == "cuda":
            return (f"triton.testing.do_bench median, p20, p80 (warmup {self.warmup_ms} ms, "
                    f"rep {self.rep_ms} ms, L2 flushed before each run); slow points: CUDA events, median of "
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

        ms, p20, p80 = triton.testing.do_bench(
            fn, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=grad_to_none, quantiles=list(QUANTILES)
        )
        return Timing(float(ms), float(p20), float(p80))

    def _cpu(self, fn, grad_to_none, warmup, reps):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            _clear_grads(grad_to_none)
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return summarize(times)

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
        return summarize(times)


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
# The device's measured limits
# ----------------------------------------------------------------------------------------


def measure_limits(device, dtype, timer):
    """The device's copy bandwidth (GB/s) and matmul rate (TFLOP/s), measured now.

    Copy: ``dst.copy_(src)`` of 1 GiB (16 MiB on the CPU), counting bytes read plus written.
    Matmul: ``a @ b`` with 8192 x 8192 random matrices (256 on the CPU) in the run's dtype
    (bf16 by default), 2*n^3 FLOPs.
    """
    nbytes = 2**30 if device == "cuda" else 2**24
    n = 8192 if device == "cuda" else 256
    copy_ms = _time_copy(nbytes, device, timer).ms
    mm_ms = _time_matmul(n, torch_dtype(dtype), device, timer).ms
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
# A kernel's pass
# ----------------------------------------------------------------------------------------


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
    between runs. Returns a dict of result fields: ms, ms_p20, ms_p80, peak_mem_bytes, compile_s (impl
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
            out.update(ctx.timer(run).fields())
            out["peak_mem_bytes"] = peak_memory(run, ctx.device)
    elif pass_ == "fwd+bwd":
        def run():
            f(*inputs).backward(dout)

        t0 = time.perf_counter()
        run()
        synchronize(ctx.device)
        first = time.perf_counter() - t0
        out.update(ctx.timer(run, grad_to_none=grads).fields())
        _clear_grads(grads)
        out["peak_mem_bytes"] = peak_memory(run, ctx.device)
    elif pass_ == "bwd":
        t0 = time.perf_counter()
        y = f(*inputs)
        y.backward(dout, retain_graph=True)
        synchronize(ctx.device)
        first = time.perf_counter() - t0
        run = lambda: y.backward(dout, retain_graph=True)  # noqa: E731
        out.update(ctx.timer(run, grad_to_none=grads).fields())
        _clear_grads(grads)
        out["peak_mem_bytes"] = peak_memory(run, ctx.device)
    else:
        raise ValueError(f"unknown pass {pass_!r}")
    if impl == "compile":
        out["compile_s"] = first
    return out

