"""``python -m bench --memory``: the peak bytes of GPT-2's forward pass and training step in every
configuration, counted without a GPU (the run, its files and the largest batch that fits an H100
or H200 at S = 1024: bench/memory_sweep.py).

How it counts. The model runs on tensors without data (PyTorch's FakeTensorMode: shape, dtype,
device, no memory), so gpt2-xl at S = 8192 costs nothing, while ``LiveBytes``, a
TorchDispatchMode, counts the bytes of every storage from the op that makes it until it dies,
and their peak: what a caching allocator's max_memory_allocated reports, without its rounding.
Scratch that an op allocates inside itself is counted for this project's ops (the
``gpt2_kernels.workspace_bytes`` each declares beside its code), not for PyTorch's (cuBLAS
workspaces, the backward accumulator of SDPA's FlashAttention); --measure-cuda shows that rest.

What runs is gpt2/train.py's step: fp32 weights, gradients and fused AdamW state (the state made
by a step before, as after the first), the forward under bf16 autocast, backward, gradient
clipping, the optimizer step, the forward's outputs (the logits) held until the step ends. The
fake tensors are CPU tensors, so the CPU's autocast runs; ``cuda_autocast_rules`` gives the ops
that CUDA's autocast runs in fp32 and the CPU's leaves in bf16 (softmax, pow, layer_norm, ...)
CUDA's rule, so that the tensors and dtypes are a CUDA run's (the ops both run in bf16, matmuls
and SDPA, need nothing). The forward pass: eval, no_grad, bf16 autocast, the logits returned.

Configurations: bench/model.py's (torch.compile aside) and Hugging Face's GPT2LMHeadModel as
shipped (hf-eager, hf-sdpa) and patched by gpt2.hf.apply_kernels (hf-triton).
"""

import gc
import weakref
from contextlib import contextmanager, nullcontext

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only

from .model import CONFIGS, configure_hf, hf_model
from .points import model_config

SEQ_LENS = (1024, 2048, 4096, 8192)
PASSES = ("fwd", "train")
HF_CONFIGS = {"hf-eager": "eager", "hf-sdpa": "sdpa", "hf-triton": "triton"}
# Decimal GB, as the GPUs are sold: below their memory (nvidia-smi: 81,559 MiB = 85.5e9 bytes on an
# H100, 143,771 MiB = 150.8e9 on an H200), a margin for the CUDA context and uncounted scratch.
CAPACITIES = (("H100 80 GB", 80e9), ("H200 141 GB", 141e9))
TABLE_SEQ_LEN = 1024


def configs():
    return [c for c in CONFIGS if c != "compile"] + list(HF_CONFIGS)


# ---- CUDA's autocast rules on the CPU --------------------------------------------------------

# CUDA autocast's fp32 rules (aten/src/ATen/autocast_mode.cpp; the AMP docs' "CUDA ops that can autocast to
# float32") for ops these models run that CPU autocast leaves in bf16. "cast": the floating inputs are cast to
# fp32; "out": the result is made fp32 unless a dtype is given. Only overloads that CUDA's autocast has a kernel
# for and the CPU's has none for get one.
CUDA_FP32 = {
    "cast": ("pow", "exp", "log", "log1p", "rsqrt", "reciprocal", "softplus", "layer_norm", "native_layer_norm",
             "group_norm", "logsumexp", "norm"),
    "out": ("softmax", "log_softmax", "sum", "cumsum", "cumprod"),
}
_EXCLUDE_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _fp32_kernel(op, rule):
    names = [a.name for a in op._schema.arguments]
    at = names.index("dtype") if "dtype" in names else None

    def kernel(_keyset, *args, **kwargs):
        if rule == "cast":
            args, kwargs = tree_map_only(torch.Tensor, _to_fp32, (args, kwargs))
        elif args[0].dtype in (torch.float16, torch.bfloat16, torch.float32):  # CUDA: a floating first input
            if at is not None and at < len(args) and not op._schema.arguments[at].kwarg_only:
                args = (*args[:at], args[at] or torch.float32, *args[at + 1:])
            elif kwargs.get("dtype") is None:
                kwargs = {**kwargs, "dtype": torch.float32}
        with torch._C._ExcludeDispatchKeyGuard(_EXCLUDE_AUTOCAST_CPU):
            return op(*args, **kwargs)

    return kernel


def _to_fp32(t):
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _rule_ops():
    """(overload, rule) for every overload of CUDA_FP32 that gets CUDA's rule on the CPU."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    registered = set(torch._C._dispatch_get_all_op_names())  # not TorchScript's overloads (pow.int)
    for rule, names in CUDA_FP32.items():
        for name in names:
            packet = getattr(torch.ops.aten, name)
            for op in (getattr(packet, overload) for overload in packet.overloads()):
                if op.name() in registered and has(op.name(), "AutocastCUDA") and not has(op.name(), "AutocastCPU"):
                    yield op, rule


@contextmanager
def cuda_autocast_rules():
    """CPU autocast with CUDA's fp32 rules added (CUDA_FP32), for as long as the block runs."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        for op, rule in _rule_ops():
            lib.impl(op.name().split("::")[1], _fp32_kernel(op, rule), "AutocastCPU", with_keyset=True)
        yield
    finally:
        lib._destroy()


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive (``live``) and their most at once (``peak``).

    Every op's outputs are looked at: a storage not seen before is counted (``count``) until a
    weakref finalizer sees it die (a storage keeps its Python object while it lives, so the
    finalizer fires with the memory's release). An op of gpt2_kernels on tensors without data
    makes only its outputs; its declared scratch is added to the peak at that op. On real
    tensors its implementation runs under this mode instead, and its scratch is counted as made.
    """

    def __init__(self, real=False):
        super().__init__()
        self.live = self.peak = 0
        self._bytes = {}  # storage id -> bytes counted
        self._inside = 0  # > 0 while a gpt2_kernels op's implementation runs
        self._real = real and gc.isenabled()  # on real tensors the collector runs by hand (see count)

    def __enter__(self):
        if self._real and not self._inside:  # not when entered again to run an op (see below)
            gc.collect()
            gc.disable()
        return super().__enter__()

    def __exit__(self, *exc):
        if self._real and not self._inside:
            gc.enable()
        return super().__exit__(*exc)

    def count(self, tensors):
        """Count the storages of these tensors not counted yet. Tensors made before the mode are
        counted when first seen; on real tensors, count them before running ops (see below)."""
        storages = [t.untyped_storage() for t in tree_leaves(tensors) if isinstance(t, torch.Tensor)]
        if self._inside and any(s._cdata not in self._bytes and s.nbytes() for s in storages):
            # Triton's interpreter holds a launch's arguments in a reference cycle (the recursive
            # closures of GridExecutor._init_args_hst), which only the cyclic collector frees:
            # collected before a new allocation is counted, they die where a GPU run's would. The
            # collector runs only here (disabled in between), so the cycles made since the last
            # collection are all in its youngest generation, which alone is quick to collect.
            gc.collect(0)
        for storage in storages:
            key, n = storage._cdata, storage.nbytes()
            if key not in self._bytes:
                weakref.finalize(storage, self._release, key)
                self._bytes[key] = 0
            self.live += n - self._bytes[key]  # a storage may have grown (resize_, out=)
            self._bytes[key] = n
        self.peak = max(self.peak, self.live)

    def _release(self, key):
        self.live -= self._bytes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        scratch = 0
        if func.namespace == "gpt2_kernels":
            from gpt2_kernels import workspace_bytes
            from gpt2_kernels._common import has_data

            if all(has_data(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
                # The op's own Python implementation (what its CPU/CUDA kernel calls), under this mode.
                from torch._library.custom_ops import OPDEFS

                self._inside += 1
                try:
                    with self:
                        out = OPDEFS[func.name()]._init_fn(*args, **kwargs)
                finally:
                    self._inside -= 1
                gc.collect(0)  # the last launch's arguments (see count)
                self.count(out)
                return out
            scratch = workspace_bytes(func.name(), *args, **kwargs)
        out = func(*args, **kwargs)
        self.count(out)
        self.peak = max(self.peak, self.live + scratch)
        return out


# ---- one measurement -------------------------------------------------------------------------


def _build(size, hf, S, device):
    """GPT-2 of a size (ours, or Hugging Face's with ``hf``), its position table at least S long,
    on ``device`` ("meta": no memory and no init, made fake by ``_materialize``)."""
    block = _block_size(size, S)
    with torch.device(device):
        if hf:
            return hf_model(size, block)
        from gpt2.model import GPT2

        cfg = model_config(size, block_size=block)
        return GPT2.meta(cfg) if device == "meta" else GPT2(cfg)


def _block_size(size, S):
    return max(model_config(size).block_size, S)


def _configure(model, config):
    return configure_hf(model, HF_CONFIGS[config]) if config in HF_CONFIGS else model.set_kernels(**CONFIGS[config])


def _materialize(model):
    """Replace every meta parameter and buffer by a tensor of its shape made here (a fake one
    under FakeTensorMode), keeping tied ones tied."""
    made = {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is not None:
                    if id(t) not in made:
                        new = torch.empty(t.shape, dtype=t.dtype)
                        made[id(t)] = torch.nn.Parameter(new, t.requires_grad) if isinstance(t, torch.nn.Parameter) else new
                    store[name] = made[id(t)]
    return model


def _step(model, hf, pass_, B, S, device, autocast, start):
    """One forward pass or training step on (B, S) random ids. ``start()`` is called once the
    model (and, to train, AdamW's state) is in place: the peak is counted from there."""
    model.zero_grad(set_to_none=True)  # a cached fake model after a failed point
    V = model.config.vocab_size
    idx = torch.randint(0, V, (B, S), device=device)
    if pass_ == "fwd":
        model.eval()
        start()
        with torch.no_grad(), autocast:
            model(idx)
        return
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # AdamW's state, as after a first step
    opt.zero_grad(set_to_none=True)
    start()
    with autocast:
        out = model(idx, labels=idx) if hf else model(idx, torch.randint(0, V, (B, S), device=device))
    (out.loss if hf else out[1]).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    del out  # the logits, held until here as gpt2/train.py holds them


_FAKE = {}  # this process's FakeTensorMode ("mode") and fake models, each built once


def peak_bytes(size, config, pass_, S, B, device="fake"):
    """(peak, resident) bytes of one pass: the most held at once, and what was held when it began
    (weights, and to train AdamW's state). device "fake" counts on tensors without data, "cpu"
    the same way on real CPU tensors (Triton kernels through the interpreter), "cuda" reads a
    GPU's allocator (max_memory_allocated)."""
    hf = config in HF_CONFIGS
    if device == "cuda":
        gc.collect()  # the models of the points before
        torch.cuda.empty_cache()
        base, resident = torch.cuda.memory_allocated(), []

        def start():
            torch.cuda.reset_peak_memory_stats()  # the peak from what is allocated now
            resident.append(torch.cuda.memory_allocated() - base)

        model, autocast = _configure(_build(size, hf, S, "cuda"), config), torch.autocast("cuda", dtype=torch.bfloat16)
        # A first step compiles the Triton kernels and times attention's candidates, whose timing
        # (triton.testing.do_bench) allocates a buffer to flush the L2 with: measured, the second.
        _step(model, hf, pass_, B, S, "cuda", autocast, lambda: None)
        _step(model, hf, pass_, B, S, "cuda", autocast, start)
        return torch.cuda.max_memory_allocated() - base, resident[0]
    from torch._subclasses.fake_tensor import FakeTensorMode

    if device == "fake":
        mode = _FAKE.setdefault("mode", FakeTensorMode())
        key = (size, hf, _block_size(size, S))
        if key not in _FAKE:
            with mode:
                _FAKE[key] = _materialize(_build(size, hf, S, "meta"))
        model = _configure(_FAKE[key], config)
    else:
        mode, model = nullcontext(), _configure(_build(size, hf, S, "cpu"), config)
    live, resident = LiveBytes(real=device == "cpu"), []

    def start():
        live.count([*model.parameters(), *model.buffers()])
        live.peak = live.live
        resident.append(live.live)

    with mode, cuda_autocast_rules(), live:
        _step(model, hf, pass_, B, S, "cpu", torch.autocast("cpu", dtype=torch.bfloat16), start)
    return live.peak, resident[0]
