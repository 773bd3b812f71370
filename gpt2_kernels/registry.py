"""The kernel configurations that ``python -m gpt2_kernels.sass`` compiles: every one a launcher can pick.

An op module registers a zero-argument generator, which yields one `CompileConfig` per
configuration, built from the same launch heuristic its launcher calls (so what is compiled
is what ships):

    @registry.configs_of("gelu")
    def _configs():
        for dtype in ("bf16", "fp16", "fp32"):
            launch = _launch_config(...)
            yield registry.CompileConfig(_gelu_fwd_kernel, "gelu", f"{dtype} ...", dtype, **launch._asdict())

Nothing runs at import: `configs_of` only stores the generator, and `configs()` calls each one
the first time configurations are asked for. A config's Triton signature is derived from the
kernel's own argument list, so it cannot drift from the kernel (see `CompileConfig.signature`).
"""

import inspect
from dataclasses import dataclass, field

_TRITON_TYPES = ("fp32", "fp16", "bf16")


def _python_function(kernel):
    """The Python function behind a @triton.jit kernel, jitted or interpreted."""
    return getattr(kernel, "fn", kernel)


def _is_constexpr(param):
    return "constexpr" in str(param.annotation)


@dataclass(frozen=True)
class CompileConfig:
    kernel: object  # the @triton.jit function
    op: str  # "attention", "layer_norm", "gelu", ...
    label: str  # unique per kernel, e.g. "fwd bf16 BLOCK_N=2048"
    dtype: str  # "fp32" | "fp16" | "bf16": the type of every pointer argument not named in `types`
    constexprs: dict  # every tl.constexpr argument's value (those with a default may be left out)
    num_warps: int = 4
    num_stages: int = 1
    types: dict = field(default_factory=dict)  # overrides, e.g. {"MEAN": "*fp32", "eps": "fp32"}
    divisible_by_16: tuple = ()  # int arguments a launch passes as multiples of 16 (Triton specializes them)
    arch: int | None = None  # 80, 90 or 100 when the config exists for one architecture only; None = all
    tile: tuple | None = None  # (rows, cols) of scores one main-loop iteration computes (attention)
    options: dict = field(default_factory=dict)  # extra Triton compile options (maxnreg=...)

    def __post_init__(self):
        if self.dtype not in _TRITON_TYPES:
            raise ValueError(f"{self.name} [{self.label}]: dtype must be one of {_TRITON_TYPES}, got {self.dtype!r}")

    @property
    def name(self):
        fn = _python_function(self.kernel)
        return getattr(fn, "__name__", str(fn))

    def parameters(self):
        """The kernel's arguments in order: name -> inspect.Parameter."""
        return inspect.signature(_python_function(self.kernel)).parameters

    def signature(self):
        """Every non-constexpr argument of the kernel, in order, with its Triton type: a name
        that starts with an upper-case letter is a pointer to `dtype` (the kernels' CAPITALS
        convention), any other an "i32"; `types` overrides both. Raises ValueError when
        `types`, `constexprs` or `divisible_by_16` name something the kernel does not take."""
        params = self.parameters()
        unknown = (set(self.types) | set(self.constexprs) | set(self.divisible_by_16)) - set(params)
        if unknown:
            raise ValueError(f"{self.name}({', '.join(params)}) [{self.label}]: not arguments: "
                             f"{', '.join(sorted(unknown))}")
        sig = {}
        for name, param in params.items():
            if _is_constexpr(param) or name in self.constexprs:
                continue
            sig[name] = self.types.get(name, f"*{self.dtype}" if name[0].isupper() else "i32")
        return sig


_GENERATORS = []  # (op, generator function), in registration order
_CONFIGS = []  # what the generators yielded, once they have run
_DONE = set()  # indices into _GENERATORS already run


def configs_of(op):
    """Decorator: register a zero-argument generator of `op`'s CompileConfigs. The generator is
    stored, not called; `configs()` calls it."""

    def register(generator):
        _GENERATORS.append((op, generator))
        return generator

    return register


def configs(op=None):
    """Every registered configuration (of one op, if given), in registration order. Runs the
    generators not run yet; a config yielded twice (same kernel and label, same fields) is
    kept once, and the same kernel and label with different fields is an error."""
    for i, (gen_op, generator) in enumerate(_GENERATORS):
        if i in _DONE:
            continue
        _DONE.add(i)
        for cfg in generator():
            if cfg.op != gen_op:
                raise ValueError(f"a generator registered for {gen_op!r} yielded a config of {cfg.op!r}: {cfg.label}")
            same = [c for c in _CONFIGS if c.name == cfg.name and c.label == cfg.label]
            if same and same[0] != cfg:
                raise ValueError(f"{cfg.name}: two different configs labelled {cfg.label!r}")
            if not same:
                _CONFIGS.append(cfg)
    return [c for c in _CONFIGS if op is None or c.op == op]
