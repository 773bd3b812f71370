"""The implementations a kernel benchmark compares: how each is looked up, and what happens when
one cannot run here (``Unavailable``: recorded as such, not as a failure)."""

from importlib import import_module


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
