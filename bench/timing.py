"""How a point is timed: ``time_kernel`` (a kernel's pass), ``time_step`` (a whole step: the
model's forward or training step, Hugging Face's, a generate call) and ``Timer`` (any callable).

Each timing keeps its spread: the median (``ms``) and the 20th and 80th percentiles
(``ms_p20``, ``ms_p80``) of the timed runs, which the plots draw as a band. Also here: peak
memory, and the Context a task runs in.
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
            y, first = first_call(run, ctx.device)
            if reference is not None and ctx.check:
                ref = reference(*inputs)
                out["max_abs_err"] = float((y.float() - ref.float()).abs().max())
                del ref
            del y
            out.update(ctx.timer(run).fields())
            out["peak_mem_bytes"] = peak_memory(run, ctx.device)
        return _with_compile_s(out, impl, first)
    if pass_ == "fwd+bwd":
        def run():
            f(*inputs).backward(dout)

        _, first = first_call(run, ctx.device)
    elif pass_ == "bwd":
        def forward_backward():
            y = f(*inputs)
            y.backward(dout, retain_graph=True)
            return y

        y, first = first_call(forward_backward, ctx.device)
        run = lambda: y.backward(dout, retain_graph=True)  # noqa: E731
    else:
        raise ValueError(f"unknown pass {pass_!r}")
    out.update(ctx.timer(run, grad_to_none=grads).fields())
    _clear_grads(grads)
    out["peak_mem_bytes"] = peak_memory(run, ctx.device)
    return _with_compile_s(out, impl, first)


def _with_compile_s(out, impl, first):
    if impl == "compile":
        out["compile_s"] = first  # the first call compiled
    return out


# ----------------------------------------------------------------------------------------
# A whole step: a model's forward or training step, a generate call
# ----------------------------------------------------------------------------------------


def first_call(fn, device):
    """(fn()'s result, the seconds it took, waited for): the warm-up call, which compiles."""
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def time_step(step, ctx, tokens, *, per=1, warmup=None, reps=None):
    """Time a step that runs for milliseconds or more (``Timer(slow=True)``: CUDA events over a
    fixed number of runs): its first call (the warm-up), then the timer, then the peak memory of
    one more call. The interpreter takes seconds per step: there one timed run is enough.

    tokens: the tokens one call processes (for tokens/s); per: the row's ms is per this many
    (a generate call's new tokens). Returns (the first call's result, its seconds, the row's
    fields: ms, ms_p20, ms_p80, tokens_per_s, peak_mem_bytes).
    """
    first, first_s = first_call(step, ctx.device)
    t = ctx.timer(step, slow=True, warmup=warmup, reps=1 if ctx.smoke else reps)
    fields = {**t.scaled(1 / per).fields(), "tokens_per_s": tokens / (t.ms * 1e-3),
              "peak_mem_bytes": peak_memory(step, ctx.device)}
    return first, first_s, fields
