"""The project's performance targets, checked against a results file.

Each target compares our all-Triton rows ("triton") with a reference at the same point and
says, point by point, whether the threshold is met. This table is the one place a target is
stated: the plots (``target(id)``, ``threshold_at``), ``summary.md`` and the sweep's order
read it from here.
"""

from dataclasses import dataclass

from .impls import SDPA_BACKENDS
from .points import model_config
from .results import by_point, row_key

SDPA = tuple(SDPA_BACKENDS)
# The row widths the kernel targets are stated for: gpt2's to gpt2-xl's.
_N = (model_config("gpt2").n_embd, model_config("gpt2-xl").n_embd)
KERNEL_WIDTHS = {"layer_norm": _N, "gelu": tuple(4 * n for n in _N)}
# How a reference is called in plots and tables.
REFERENCE_LABELS = {SDPA: "fastest SDPA backend", ("sdpa-flash",): "SDPA flash", ("compile",): "torch.compile",
                    ("liger",): "Liger-Kernel", ("eager",): "eager PyTorch", ("eager+sdpa",): "eager+SDPA",
                    ("hf",): "Hugging Face"}


@dataclass(frozen=True)
class Target:
    id: str
    what: str  # the measured thing: "attention fwd", "training step", ...
    family: str
    pass_: str
    metric: str  # "speedup" (reference ms / ours), "frac_bw", "frac_flops", "mem_ratio" (ours / reference)
    threshold: float
    versus: tuple = ()  # reference impls; the fastest of them that ran
    where: str = ""  # "S>=1024", "S<1024", "width", "xl", "bf16"
    note: str = ""  # said after the target, in brackets

    def applies(self, row):
        if row["family"] != self.family or row["pass"] != self.pass_ or row["dtype"] != "bf16":
            return False
        if self.where == "S>=1024":
            return row["seq_len"] >= 1024
        if self.where == "S<1024":
            return row["seq_len"] < 1024
        if self.where == "width":
            lo, hi = KERNEL_WIDTHS[self.family]
            return lo <= row["width"] <= hi and row["batch"] * row["seq_len"] >= 8192
        if self.where == "xl":
            return row["size"] == "gpt2-xl"
        return True

    @property
    def lower_is_better(self):
        return self.metric == "mem_ratio"

    @property
    def versus_label(self):
        return REFERENCE_LABELS.get(self.versus, ", ".join(self.versus))

    @property
    def short(self):
        """The threshold and its reference: "1.10x fastest SDPA backend", "90% of copy bandwidth"."""
        if self.metric == "frac_bw":
            return f"{self.threshold:.0%} of copy bandwidth"
        if self.metric == "frac_flops":
            return f"{self.threshold:.0%} of measured matmul rate (MFU)"
        if self.metric == "mem_ratio":
            return self.versus_label + ("" if self.threshold == 1 else f" x {self.threshold:g}")
        if self.threshold == 1:
            return self.versus_label
        x = f"{self.threshold:g}" if self.threshold == int(self.threshold) else f"{self.threshold:.2f}"
        return f"{x}x {self.versus_label}"

    @property
    def text(self):
        where = {"S>=1024": "S >= 1024", "S<1024": "S < 1024"}.get(self.where, "")
        brackets = "; ".join(x for x in (where, self.note) if x)
        sign = "<=" if self.lower_is_better else ">="
        return f"{self.what} {sign} {self.short}" + (f" ({brackets})" if brackets else "")


TARGETS = (
    Target("ln_fwd_bw", "LayerNorm fwd", "layer_norm", "fwd", "frac_bw", 0.90, where="width"),
    Target("ln_fwdbwd_bw", "LayerNorm fwd+bwd", "layer_norm", "fwd+bwd", "frac_bw", 0.90, where="width"),
    Target("ln_fwd_compile", "LayerNorm fwd", "layer_norm", "fwd", "speedup", 1.0, ("compile",), "width"),
    Target("ln_fwdbwd_compile", "LayerNorm fwd+bwd", "layer_norm", "fwd+bwd", "speedup", 1.0, ("compile",), "width"),
    Target("ln_bwd_liger", "LayerNorm backward", "layer_norm", "bwd", "speedup", 2.0, ("liger",), "width"),
    Target("gelu_fwd_bw", "GELU+bias fwd", "gelu", "fwd", "frac_bw", 0.90, where="width"),
    Target("gelu_fwdbwd_bw", "GELU+bias fwd+bwd", "gelu", "fwd+bwd", "frac_bw", 0.90, where="width"),
    Target("gelu_fwd_compile", "GELU+bias fwd", "gelu", "fwd", "speedup", 1.0, ("compile",), "width"),
    Target("gelu_fwdbwd_compile", "GELU+bias fwd+bwd", "gelu", "fwd+bwd", "speedup", 1.0, ("compile",), "width"),
    Target("attn_fwd_long", "attention fwd", "attention", "fwd", "speedup", 1.10, SDPA, "S>=1024"),
    Target("attn_fwd_short", "attention fwd", "attention", "fwd", "speedup", 1.0, SDPA, "S<1024"),
    Target("attn_fwdbwd_flash", "attention fwd+bwd", "attention", "fwd+bwd", "speedup", 1.0, ("sdpa-flash",)),
    Target("train_eager", "training step", "model", "train", "speedup", 1.25, ("eager",)),
    Target("train_eager_sdpa", "training step", "model", "train", "speedup", 1.25, ("eager+sdpa",),
           note="stricter reading"),
    Target("train_compile", "training step", "model", "train", "speedup", 1.05, ("compile",)),
    Target("train_mfu_xl", "gpt2-xl training step", "model", "train", "frac_flops", 0.50, where="xl"),
    Target("gen_hf", "generation tokens/s", "model", "generate", "speedup", 2.0, ("hf",), note="batch 1"),
    Target("train_memory", "training step peak memory", "model", "train", "mem_ratio", 1.0, ("eager+sdpa",)),
)


def target(tid):
    """The target with this id."""
    for t in TARGETS:
        if t.id == tid:
            return t
    raise KeyError(f"no target {tid!r}; the ids are {', '.join(t.id for t in TARGETS)}")


def speedup_targets(family, pass_):
    """The speedup targets of a kernel's pass (e.g. attention fwd: S < 1024 and S >= 1024)."""
    return [t for t in TARGETS if t.family == family and t.pass_ == pass_ and t.metric == "speedup"]


def threshold_at(row):
    """The speedup threshold that applies to a row, or None."""
    return next((t.threshold for t in speedup_targets(row["family"], row["pass"]) if t.applies(row)), None)


def _value(target, ours, same):
    if target.metric in ("frac_bw", "frac_flops"):
        return ours.get(target.metric), None
    refs = [r for r in same if r["impl"] in target.versus and r["status"] == "ok"]
    if target.metric == "speedup":
        refs = [r for r in refs if r.get("ms")]
        if not refs or not ours.get("ms"):
            return None, None
        ref = min(refs, key=lambda r: r["ms"])
        return ref["ms"] / ours["ms"], ref["impl"]
    if target.metric == "mem_ratio":
        refs = [r for r in refs if r.get("peak_mem_bytes")]
        if not refs or not ours.get("peak_mem_bytes"):
            return None, None
        ref = min(refs, key=lambda r: r["peak_mem_bytes"])
        return ours["peak_mem_bytes"] / ref["peak_mem_bytes"], ref["impl"]
    raise ValueError(f"unknown metric {target.metric!r}")


def evaluate(rows, targets=TARGETS):
    """For each target: its points (size, width, seq_len, value, versus, met) and an overall
    status: "met" (every measured point), "missed" (any point), or "not measured"."""
    groups = by_point(rows)
    out = []
    for t in targets:
        pts, seen = [], set()
        for r in rows:
            if r["impl"] != "triton" or r["status"] != "ok" or not t.applies(r):
                continue
            # A row-wise op is one shape at every S (its rows are copies): count it once.
            where = (r["size"], r["width"], r["batch"] * r["seq_len"]) if r["family"] in ("layer_norm", "gelu") \
                else (r["size"], r["width"], r["seq_len"], r["batch"])
            if where in seen:
                continue
            seen.add(where)
            value, versus = _value(t, r, groups[row_key(r)])
            if value is None:
                continue
            met = value <= t.threshold if t.lower_is_better else value >= t.threshold
            pts.append(dict(size=r["size"], width=r["width"], seq_len=r["seq_len"], batch=r["batch"],
                            value=value, versus=versus, met=bool(met)))
        status = "not measured" if not pts else ("met" if all(p["met"] for p in pts) else "missed")
        worst = None
        if pts:
            worst = (max if t.lower_is_better else min)(p["value"] for p in pts)
        out.append(dict(id=t.id, text=t.text, family=t.family, pass_=t.pass_, metric=t.metric,
                        threshold=t.threshold, status=status, worst=worst, points=pts,
                        met=sum(p["met"] for p in pts), total=len(pts)))
    return out


def format_value(metric, v):
    if v is None:
        return "—"
    if metric in ("frac_bw", "frac_flops"):
        return f"{100 * v:.1f}%"
    return f"{v:.2f}x"
