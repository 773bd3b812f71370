"""What to measure, and in which order.

A sweep is families x sizes x sequence lengths x passes, and every implementation at each
point: one *task* is one (point, implementation). Tasks run most important first, so that a
run cut short by ``--budget`` (or killed) has already measured what the targets (stated in
``bench/targets.py``) need:

    tier 0  what the targets are stated on: attention fwd and fwd+bwd at gpt2, S=1024, every
            implementation; LayerNorm and GELU at gpt2's and gpt2-xl's widths (768, 1600);
            the gpt2 training step at S=1024 (triton, eager, eager+sdpa, torch.compile), the
            gpt2-xl one (triton, eager+sdpa: MFU and memory); gpt2 generation (triton,
            eager+sdpa, Hugging Face). Cheap tasks first, then the torch.compile ones.
    tier 1  attention at every S for gpt2; the rest of the model at S=1024 for gpt2/gpt2-xl,
            generation for gpt2-xl; Hugging Face's GPT-2, patched and not (bench/model.py)
    tier 2  attention for the other sizes; LayerNorm/GELU at the middle widths; the model at
            S=1024 for gpt2-medium/large
    tier 3  the model at the other S; generation for the middle sizes
    torch.compile tasks go one tier later (each costs seconds to a minute), except those a
    target compares against: LayerNorm/GELU fwd and fwd+bwd, and the gpt2 training step.
Within a tier: family (in the order of ``FAMILIES``), pass, size (gpt2, gpt2-xl,
gpt2-medium, gpt2-large), S by distance from 1024 (1024, 2048, 512, 4096, 256, 8192, 128),
then implementation (ours first).
"""

import math
from dataclasses import dataclass, field

from .families import FAMILIES
from .points import DTYPES, SEQ_LENS, SIZES, SMOKE_MODEL_SEQ_LENS, SMOKE_SEQ_LENS, SMOKE_SIZE, Point


ALL_FAMILIES = tuple(FAMILIES)
DEFAULT_FAMILIES = tuple(name for name, f in FAMILIES.items() if not f.opt_in)
FAMILY_ALIASES = {alias: f.name for f in FAMILIES.values() for alias in (f.name, *f.aliases)}
PASS_ORDER = {"fwd": 0, "fwd+bwd": 1, "bwd": 2, "train": 0, "generate": 2}
SIZE_RANK = {"gpt2": 0, "gpt2-xl": 1, "gpt2-medium": 2, "gpt2-large": 3, SMOKE_SIZE: 0}
QUICK_SIZES, QUICK_SEQ_LENS, QUICK_BUDGET_S = ("gpt2",), (1024,), 55


def counts(point):
    """(flops, bytes) of a point, by its family's count; None where a count does not apply."""
    return FAMILIES[point.family].counts(point)


def families_help():
    """--only's list: every family, the opt-in ones marked."""
    return ", ".join(name + (" (opt-in)" if f.opt_in else "") for name, f in FAMILIES.items())


@dataclass
class Sweep:
    families: tuple = DEFAULT_FAMILIES
    sizes: tuple = SIZES
    seq_lens: tuple = SEQ_LENS
    model_seq_lens: tuple = SEQ_LENS
    dtype: str = "bf16"
    smoke: bool = False
    quick: bool = False
    compile: bool = True

    def settings(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _split(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def make_sweep(only=None, sizes=None, seq_lens=None, dtype="bf16", quick=False, smoke=False, compile=True):
    """A Sweep from the command line's strings; a clear ValueError for anything unknown."""
    families = []
    for name in _split(only):
        fam = FAMILY_ALIASES.get(name.lower())
        if fam is None:
            raise ValueError(f"--only: unknown benchmark {name!r}; choose from {', '.join(ALL_FAMILIES)}")
        if fam not in families:
            families.append(fam)
    families = tuple(sorted(families, key=ALL_FAMILIES.index)) or DEFAULT_FAMILIES
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    size_list = _split(sizes)
    for s in size_list:
        if s not in SIZES:
            raise ValueError(f"--sizes: unknown GPT-2 size {s!r}; choose from {', '.join(SIZES)}")
    lens = []
    for s in _split(seq_lens):
        try:
            n = int(s)
        except ValueError:
            raise ValueError(f"--seq-lens: {s!r} is not an integer") from None
        if n < 1:
            raise ValueError(f"--seq-lens: sequence lengths must be positive, got {n}")
        lens.append(n)
    if smoke:
        if size_list:
            raise ValueError("--smoke runs a fixed tiny model (2 layers, width 128); drop --sizes")
        size_list = [SMOKE_SIZE]
        model_lens = tuple(lens) if lens else SMOKE_MODEL_SEQ_LENS
        lens = lens or list(SMOKE_SEQ_LENS)
        if max(lens) > 64:
            raise ValueError("--smoke: sequence lengths above 64 are too slow for the interpreter")
    else:
        if not size_list:
            size_list = list(QUICK_SIZES if quick else SIZES)
        if not lens:
            lens = list(QUICK_SEQ_LENS if quick else SEQ_LENS)
        model_lens = tuple(sorted(set(lens)))
    size_list = sorted(dict.fromkeys(size_list), key=lambda s: SIZE_RANK[s])
    return Sweep(families, tuple(size_list), tuple(sorted(set(lens))), model_lens, dtype, smoke, quick, compile)


@dataclass
class Task:
    point: Point
    impl: str
    role: str
    key: tuple = field(default=(), compare=False)

    @property
    def tier(self):
        return self.key[0] if self.key else None

    def label(self):
        return f"{self.point.label()} {self.impl}"


def seq_rank(S):
    """1024 -> 0, 2048 -> 1, 512 -> 2, 4096 -> 3, 256 -> 4, 8192 -> 5, 128 -> 6."""
    k = math.log2(S / 1024)
    return 2 * abs(k) - (1 if k > 0 else 0)


def tier(point, impl):
    f, p, size, S = point.family, point.pass_, point.size, point.seq_len
    big2 = size in ("gpt2", "gpt2-xl", SMOKE_SIZE)
    if f in ("layer_norm", "gelu", "add_layer_norm", "loss"):
        t = 0 if big2 else 2
    elif f == "hf":
        t = 1  # no target is stated on Hugging Face's model patched
    elif f == "attention":
        t = 0 if size in ("gpt2", SMOKE_SIZE) and S == 1024 else 1 if size in ("gpt2", SMOKE_SIZE) else 2
    elif p == "generate":
        if size in ("gpt2", SMOKE_SIZE):
            t = 0 if impl in ("triton", "hf", "eager+sdpa", "triton+cudagraphs", "hf-static-compile") else 1
        else:
            t = 1 if size == "gpt2-xl" else 3
    elif p == "train" and S == 1024 and size in ("gpt2", SMOKE_SIZE) and impl in (
            "triton", "eager", "eager+sdpa", "compile", "triton-loss"):
        t = 0  # targets train_eager, train_eager_sdpa, train_compile (bench/targets.py)
    elif p == "train" and S == 1024 and size == "gpt2-xl" and impl in ("triton", "eager+sdpa"):
        t = 0  # targets train_mfu_xl, train_memory
    elif S == 1024:
        t = 1 if big2 else 2
    else:
        t = 3
    if impl == "compile" and (t > 0 or not _compile_in_tier0(point)):
        t += 1
    return t


def _compile_in_tier0(point):
    """torch.compile tasks that a target compares against: LayerNorm/GELU fwd and fwd+bwd
    (ln_/gelu_*_compile) and the gpt2 training step (train_compile)."""
    if point.family in ("layer_norm", "gelu"):
        return point.pass_ in ("fwd", "fwd+bwd")
    return point.family == "model" and point.pass_ == "train"


def importance(point, impl, impl_rank=0):
    """The sort key of a task: smaller runs earlier (module docstring)."""
    return (
        tier(point, impl),
        1 if impl == "compile" else 0,
        ALL_FAMILIES.index(point.family),
        PASS_ORDER.get(point.pass_, 3),
        SIZE_RANK.get(point.size, 9),
        seq_rank(point.seq_len),
        impl_rank,
    )


def plan(sweep, info):
    """Every task of a sweep, most important first."""
    tasks = []
    for fam in (FAMILIES[name] for name in sweep.families):
        if fam.whole_model:  # whole models: the model sequence lengths
            pts = fam.points(sweep.sizes, sweep.model_seq_lens, sweep.dtype, info, smoke=sweep.smoke, quick=sweep.quick)
        else:
            pts = fam.points(sweep.sizes, sweep.seq_lens, sweep.dtype, info, smoke=sweep.smoke)
        for pt in pts:
            for rank, (impl, role) in enumerate(fam.impls_for(pt)):
                if impl == "compile" and not sweep.compile:
                    continue
                tasks.append(Task(pt, impl, role, importance(pt, impl, rank)))
    tasks.sort(key=lambda t: t.key)
    return tasks


# Rough seconds per task on an H100/H200, before any task of the kind has been timed; the
# runner replaces them with what it observes.
_EST = {
    ("kernel", False): 1.5, ("kernel", True): 8.0,
    ("fwd", False): 4.0, ("fwd", True): 35.0,
    ("train", False): 6.0, ("train", True): 55.0,
    ("generate", False): 10.0,
}
_SIZE_FACTOR = {"gpt2": 1.0, "gpt2-medium": 1.7, "gpt2-large": 2.4, "gpt2-xl": 3.2, SMOKE_SIZE: 0.2}


def cost_class(task):
    p = task.point
    return (p.family, p.pass_, task.impl == "compile", task.impl == "hf", p.size if p.family == "model" else "")


def estimate(task, observed):
    """Seconds a task is expected to take: the last observed time of its class, else a default."""
    cls = cost_class(task)
    if cls in observed:
        return observed[cls]
    p = task.point
    if p.family in ("model", "hf") or p.pass_ == "generate":
        base = _EST.get((p.pass_, task.impl == "compile"), 10.0) * _SIZE_FACTOR.get(p.size, 1.0)
        if task.impl == "hf":
            base *= 1.5
        if p.pass_ != "generate":
            base *= max(1.0, p.seq_len / 2048)  # attention grows with S at fixed tokens
        return base
    return _EST[("kernel", task.impl == "compile")]


def print_plan(tasks, info, budget=None):
    total = 0.0
    print(f"{len(tasks)} tasks, planned for {info.name} ({info.sm_count} SMs, {info.total_mem / 2**30:.0f} GiB)")
    print(f"{'#':>4} tier {'family':<10} {'pass':<8} {'size':<12} {'S':>5} {'B':>4} {'impl':<17} "
          f"{'est s':>6} {'cum s':>7}")
    seen = set()
    for i, t in enumerate(tasks):
        p = t.point
        shape = (p.shape_key(), t.impl)
        est = 0.0 if shape in seen else estimate(t, {})
        seen.add(shape)
        total += est
        mark = "  <- past budget" if budget and total > budget else ""
        print(f"{i + 1:>4} {t.tier:>4} {p.family:<10} {p.pass_:<8} {p.size:<12} {p.seq_len:>5} {p.batch:>4} "
              f"{t.impl:<17} {est:>6.1f} {total:>7.0f}{mark}")
    print(f"expected total (before any timing is observed): {total / 60:.1f} min")
