"""What every op shares: where it may run, the checks that turn bad input into clear errors, and
the shape of a launch configuration."""

import contextlib
import functools
import os
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import FakeTensor

# Triton reads TRITON_INTERPRET when @triton.jit decorates a function, i.e. when an op
# module is imported, so the value at import time is the one that counts.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_runnable(op, *tensors):
    """Raise unless the tensors can go to a Triton kernel: all on one device, and that device
    CUDA (or the CPU under Triton's interpreter); or tensors without data (``has_data``), which
    go to the op's fake implementation instead."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        names = ", ".join(str(d) for d in sorted(devices, key=str))
        raise ValueError(f"{op}: all tensors must be on one device, got {names}")
    (device,) = devices
    if device.type == "cuda" or not all(has_data(t) for t in tensors):
        return  # a tensor without data only ever reaches the op's fake implementation
    if device.type == "cpu" and INTERPRET:
        return
    if device.type == "cpu":
        raise ValueError(
            f"{op}: got CPU tensors, but Triton kernels need CUDA tensors. To run them on the CPU "
            "(slowly, for testing), set TRITON_INTERPRET=1 before importing `kernels`; or use "
            "the eager PyTorch path (model.set_kernels('torch'))."
        )
    raise ValueError(f"{op}: tensors on {device.type} are not supported; use CUDA tensors")


def has_data(t):
    """False for a tensor that holds no values: a meta tensor or a FakeTensorMode fake (shape,
    dtype and device only, as torch.compile traces with and ``python -m bench --memory`` counts
    bytes with). Such a tensor reaches only an op's fake implementation, never a kernel, and
    a check that reads values (a target's range) has nothing to read."""
    return not (t.is_meta or isinstance(t, FakeTensor))


def check_float_dtype(op, name, t, allowed=FLOAT_DTYPES):
    if t.dtype not in allowed:
        ok = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{op}: {name} has dtype {str(t.dtype).replace('torch.', '')}; supported: {ok}")


def check_same_dtype(op, **tensors):
    dtypes = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{n}={str(d).replace('torch.', '')}" for n, d in dtypes.items())
        raise TypeError(f"{op}: tensors must share one dtype, got {desc}")


def autocast_dtype(t):
    """The dtype torch.autocast computes in on t's device, or None where autocast is off (or t is
    not a tensor). Each public function applies its op's cast policy with it, once, before its
    checks: the custom ops themselves see inputs of one dtype."""
    if not isinstance(t, torch.Tensor):
        return None
    device = t.device.type
    # cuda and cpu always have autocast. Asking torch.amp.is_autocast_available about them anyway
    # broke torch.compile's fullgraph trace on torch 2.11 (dynamo cannot trace that builtin; seen
    # on an H200 in generate(compile=True)); other types ("meta") may have none, so ask for those.
    if device not in ("cuda", "cpu") and not torch.amp.is_autocast_available(device):
        return None
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def cast_floats(dtype, *tensors):
    """Each float32/float16/bfloat16 tensor in ``dtype`` (a differentiable cast, so gradients
    reach the originals in their dtype); None, float64 and non-tensors as they are, for the
    checks to judge, as autocast leaves float64 alone."""
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in FLOAT_DTYPES else t for t in tensors)


class Launch(NamedTuple):
    """How one kernel is launched: what each op's `_launch_config` returns, to both its launcher
    and its `registry.configs_of` generator, so that what `python -m gpt2_kernels.sass` compiles
    is what runs."""

    constexprs: dict  # every tl.constexpr argument's value, e.g. {"BLOCK_N": 1024}
    num_warps: int
    num_stages: int


# Head dims the attention kernels (training and decode) are compiled for.
HEAD_DIMS = (16, 32, 64, 128)


def check_qkv(op, q, k, v):
    """The checks both attention ops share: q (B, H, Sq, D) and k, v (B, H, Sk, D) tensors of
    one supported float dtype and head dim. Returns (B, H, Sq, Sk, D)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D (B, H, S, D), got shape {tuple(t.shape)}")
    check_same_dtype(op, q=q, k=k, v=v)
    check_float_dtype(op, "q", q)
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"{op}: k must be (B, H, Sk, D) = ({B}, {H}, Sk, {D}) to match q {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"{op}: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if D not in HEAD_DIMS:
        raise ValueError(f"{op}: head dim D={D} is not supported; supported: {', '.join(map(str, HEAD_DIMS))}")
    return B, H, Sq, Sk, D


# Triton's name for each dtype, as registered kernel signatures spell pointer types.
TRITON_TYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@functools.lru_cache(maxsize=None)
def num_sms(device):
    """The device's SM count, which sizes the fixed backward grids (a few programs per SM)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # the interpreter runs programs one by one; a couple still exercises the loop


def arch_family(device):
    """The family of launch configurations for a device: 100 for the Blackwell data-centre parts
    (compute capability 10.x: B200, GB200, B300, with tcgen05 tensor cores and tensor memory),
    90 for Hopper, 80 for every other GPU (consumer Blackwell, sm_120, has neither wgmma nor
    tcgen05), None off the GPU (Triton's interpreter)."""
    if device.type != "cuda":
        return None
    return {10: 100, 9: 90}.get(torch.cuda.get_device_capability(device)[0], 80)


def as_rows(t, N):
    """t as an (M, N) tensor whose last dim is contiguous (a view when possible)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, N)


def device_guard(t):
    """Make t's GPU the current device: Triton launches on the current device, which for
    tensors on another GPU (cuda:1 while cuda:0 is current) would be the wrong one."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------- scratch memory

_WORKSPACE = {}  # a custom op's "gpt2_kernels::name" -> f(*its arguments) -> bytes


def workspace_of(op):
    """Decorator: declare the scratch memory of custom op ``op``. The decorated f takes the op's
    arguments (tensors with or without data) and returns the most bytes the op's implementation
    holds at once besides its inputs and its outputs (buffers, partial sums, copies of inputs
    whose layout a kernel does not take), all alive when its outputs are. A fake implementation
    allocates only the outputs; this is the rest, so that a run on fake tensors can count what
    the real run holds (``python -m bench --memory``, which checks the two against each other)."""

    def register(f):
        _WORKSPACE[op._qualname] = f  # "namespace::name", what a dispatched OpOverload's name() gives
        return f

    return register


def workspace_bytes(name, *args, **kwargs):
    """The scratch bytes of the op named ``name`` ("gpt2_kernels::attention_bwd") for these
    arguments. KeyError for an op that declares none."""
    return _WORKSPACE[name](*args, **kwargs)


def nbytes(t):
    return t.numel() * t.element_size()


def contiguous_copy_bytes(t):
    """What ``t.contiguous()`` allocates: nothing for a contiguous tensor, a copy otherwise."""
    return 0 if t is None or t.is_contiguous() else nbytes(t)


def rows_copy_bytes(t, N):
    """What ``as_rows(t, N)`` allocates: nothing when the leading dims fold into one as a view
    (each stride the next one's times its size; size-1 dims do not count), a copy otherwise."""
    if t.stride(-1) != 1:
        return nbytes(t)
    dims = [(n, s) for n, s in zip(t.shape[:-1], t.stride()[:-1]) if n != 1]
    foldable = all(outer == inner * n for (_, outer), (n, inner) in zip(dims, dims[1:]))
    return 0 if foldable else nbytes(t)
