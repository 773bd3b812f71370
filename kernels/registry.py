"""The list of compiled kernel configurations that ``python -m kernels.inspect`` checks.

Each op module registers, at import time, every configuration it can launch (derived from
the same launch heuristic that the launcher uses, so what is inspected is what ships):

    registry.register(_layer_norm_fwd_kernel, op="layer_norm", label="fwd N=1600",
                      signature={"X": "*bf16", "Y": "*bf16", ..., "N": "i32"},
                      constexprs={"BLOCK_N": 2048}, num_warps=8, num_stages=1)

``signature`` maps every non-constexpr argument, in order, to a Triton type string
("*fp16", "*bf16", "*fp32", "i32", "i64", "fp32"); ``constexprs`` gives every constexpr
argument's value. Extra keywords travel with the config to the inspector:
``divisible_by_16=("stride_xm", ...)`` names the int arguments that a launch always passes
as multiples of 16 (Triton specializes those, and the hint changes the generated code, so
registering it makes the inspected code the code that runs); any Triton compile option
(``maxnreg=...``) is passed to the compiler.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelConfig:
    kernel: object  # a triton JITFunction
    op: str
    label: str
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 2
    extra: dict = field(default_factory=dict)

    @property
    def name(self):
        fn = getattr(self.kernel, "fn", self.kernel)
        return getattr(fn, "__name__", str(fn))


_CONFIGS: list = []


def register(kernel, *, op, label, signature, constexprs, num_warps=4, num_stages=2, **extra):
    cfg = KernelConfig(kernel, op, label, dict(signature), dict(constexprs), num_warps, num_stages, extra)
    if not any(c.name == cfg.name and c.label == cfg.label for c in _CONFIGS):
        _CONFIGS.append(cfg)
    return cfg


def configs(op=None):
    """Every registered configuration (of one op, if given), in registration order."""
    return [c for c in _CONFIGS if op is None or c.op == op]
