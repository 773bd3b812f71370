"""The project's performance targets, checked against a results file.

Each target compares our all-Triton rows ("triton") with a reference at the same point and
says, point by point, whether the threshold is met. The plots draw the thresholds and mark
each point met (filled) or missed (red cross); ``summary.md`` lists them.
"""

from dataclasses import dataclass

from .results import by_point, row_key

SDPA = ("sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math")
KERNEL_WIDTHS = {"layer_norm": (768, 1600), "gelu": (4 * 768, 4 * 1600)}


@dataclass(frozen=True)
class Target:
    id: str
    text: str
    family: str
    pass_: str
    metric: str  # "speedup" (reference ms / ours), "frac_bw", "frac_flops", "mem_ratio" (ours / reference)
    threshold: float
    versus: tuple = ()  # reference impls; the fastest of them that ran
    where: str = ""  # "S>=1024", "S<1024", "width", "xl", "bf16"

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


TARGETS = (
    Target("ln_fwd_bw", "LayerNorm fwd >= 90% of copy bandwidth", "layer_norm", "fwd", "frac_bw", 0.90, where="width"),
    Target("ln_fwdbwd_bw", "LayerNorm fwd+bwd >= 90% of copy bandwidth", "layer_norm", "fwd+bwd", "frac_bw", 0.90,
           where="width"),
    Target("ln_fwd_compile", "LayerNorm fwd >= torch.compile", "layer_norm", "fwd", "speedup", 1.0, ("compile",),
           "width"),
    Target("ln_fwdbwd_compile", "LayerNorm fwd+bwd >= torch.compile", "layer_norm", "fwd+bwd", "speedup", 1.0,
           ("compile",), "width"),
    Target("ln_bwd_liger", "LayerNorm backward >= 2x Liger-Kernel", "layer_norm", "bwd", "speedup", 2.0, ("liger",),
           "width"),
    Target("gelu_fwd_bw", "GELU+bias fwd >= 90% of copy bandwidth", "gelu", "fwd", "frac_bw", 0.90, where="width"),
    Target("gelu_fwdbwd_bw", "GELU+bias fwd+bwd >= 90% of copy bandwidth", "gelu", "fwd+bwd", "frac_bw", 0.90,
           where="width"),
    Target("gelu_fwd_compile", "GELU+bias fwd >= torch.compile", "gelu", "fwd", "speedup", 1.0, ("compile",), "width"),
    Target("gelu_fwdbwd_compile", "GELU+bias fwd+bwd >= torch.compile", "gelu", "fwd+bwd", "speedup", 1.0,
           ("compile",), "width"),
    Target("attn_fwd_long", "attention fwd >= 1.10x fastest SDPA backend (S >= 1024)", "attention", "fwd", "speedup",
           1.10, SDPA, "S>=1024"),
    Target("attn_fwd_short", "attention fwd >= 1.0x fastest SDPA backend (S 128-512)", "attention", "fwd", "speedup",
           1.0, SDPA, "S<1024"),
    Target("attn_fwdbwd_flash", "attention fwd+bwd >= SDPA flash", "attention", "fwd+bwd", "speedup", 1.0,
           ("sdpa-flash",)),
    Target("train_eager", "training step >= 1.25x eager PyTorch", "model", "train", "speedup", 1.25, ("eager",)),
    Target("train_eager_sdpa", "training step >= 1.25x eager with SDPA (stricter reading)", "model", "train",
           "speedup", 1.25, ("eager+sdpa",)),
    Target("train_compile", "training step >= 1.05x torch.compile", "model", "train", "speedup", 1.05, ("compile",)),
    Target("train_mfu_xl", "gpt2-xl training step >= 50% of measured matmul rate (MFU)", "model", "train",
           "frac_flops", 0.50, where="xl"),
    Target("gen_hf", "generation tokens/s >= 2x Hugging Face transformers (batch 1)", "model", "generate", "speedup",
           2.0, ("hf",)),
    Target("train_memory", "training step peak memory <= eager with SDPA", "model", "train", "mem_ratio", 1.0,
           ("eager+sdpa",)),
)


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
