"""The implementations a kernel benchmark compares: how each is looked up, and what happens when
one cannot run here (``Unavailable``: recorded as such, not as a failure)."""

from contextlib import contextmanager
from importlib import import_module

# F.scaled_dot_product_attention pinned to one backend: impl -> torch.nn.attention.SDPBackend name.
SDPA_BACKENDS = {
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
    "sdpa-math": "MATH",
}


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


def sdpa(impl, causal):
    """``F.scaled_dot_product_attention(q, k, v)`` with only the backend of ``impl`` allowed."""
    import torch.nn.functional as F
    from torch.nn import attention as nn_attention

    backend = getattr(nn_attention.SDPBackend, SDPA_BACKENDS[impl], None)
    if backend is None:
        raise Unavailable(f"this PyTorch has no SDPA backend {SDPA_BACKENDS[impl]}")

    def f(q, k, v):
        with nn_attention.sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return f


@contextmanager
def sdpa_may_refuse(impl):
    """A pinned SDPA backend that cannot take this shape/dtype/device says so ("No available
    kernel", or on the CPU "No viable backend"): it does not run here, which is no failure."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e).lower()
        if impl in SDPA_BACKENDS and ("no available kernel" in msg or "no viable backend" in msg):
            raise Unavailable(f"{impl}: no kernel for this shape/dtype/device") from e
        raise


def op_function(impl, ctx, eager, imported=None):
    """The callable of one implementation of an op.

    eager: the textbook PyTorch function ("eager"; "compile" is ``torch.compile`` of it);
    imported: {impl: (module, attribute, adapt)}: a function found by import, wrapped by
    ``adapt(found)`` to take the same arguments as ``eager``; a module that does not import is
    ``Unavailable``.
    """
    if impl == "eager":
        return eager
    if impl == "compile":
        return compiled(eager, ctx)
    if imported and impl in imported:
        module, attr, adapt = imported[impl]
        try:
            found = getattr(import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise Unavailable(f"{module}.{attr} is not importable here ({e})") from e
        return adapt(found)
    known = ["eager", "compile", *(imported or ())]
    raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(known)}")
