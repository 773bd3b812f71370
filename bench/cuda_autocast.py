"""CUDA's autocast rules on the CPU: ``cuda_autocast_rules()`` makes CPU autocast run in fp32 the
ops that CUDA's autocast runs in fp32 and the CPU's leaves in bf16 (softmax, pow, layer_norm, ...),
so that a model run on CPU tensors (bench/memory.py's fake ones) makes the tensors, and dtypes, of
a CUDA run. The ops both run in bf16 (matmuls, linear, SDPA) need nothing.
"""

from contextlib import contextmanager

import torch
from torch.utils._pytree import tree_map_only

# CUDA autocast's fp32 rules (aten/src/ATen/autocast_mode.cpp; the AMP docs' "CUDA ops that can
# autocast to float32") for ops these models run that CPU autocast leaves in bf16. "cast": the
# floating inputs are cast to fp32; "out": the result is made fp32 (dtype=float32) unless a dtype
# is given. Only overloads CUDA's autocast has a kernel for, and the CPU's has none for, get one.
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
