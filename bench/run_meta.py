"""What a run records about itself (device, versions, commit, settings), and its progress line."""

import datetime as _dt
import os
import platform
import subprocess
import sys
import time

from .points import (
    ATTN_TILE_M, ATTN_TOKENS_TARGET, MEM_FRACTION, MODEL_TOKENS_TARGET, PROGRAMS_PER_SM, ROWS_TARGET,
    SMOKE_LABEL, SMOKE_TARGETS,
)


def git_commit():
    env = os.environ.get("BENCH_GIT_COMMIT")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def peer_version(module, dist):
    """The version of an optional package if it can be imported here, else None."""
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    return package_version(dist) or "installed"


def device_slug(name):
    """A folder name for a device: "NVIDIA H200" -> "nvidia-h200"."""
    out = "".join(c.lower() if c.isalnum() else "-" for c in name)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "device"


def base_meta(device, info, settings, smoke):
    import torch

    meta = {
        "device": info.name,
        "device_slug": device_slug(info.name),
        "sm_count": info.sm_count,
        "total_mem_bytes": info.total_mem,
        "capability": None,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "argv": sys.argv[1:],
        "settings": settings,
        "smoke": bool(smoke),
        "label": SMOKE_LABEL if smoke else "",
        "interpreter": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        "batch_rules": {
            "rows_target": SMOKE_TARGETS["rows"] if smoke else ROWS_TARGET,
            "attn_tokens_target": SMOKE_TARGETS["attn_tokens"] if smoke else ATTN_TOKENS_TARGET,
            "attn_programs_per_sm": PROGRAMS_PER_SM, "attn_tile_m": ATTN_TILE_M,
            "model_tokens_target": SMOKE_TARGETS["model_tokens"] if smoke else MODEL_TOKENS_TARGET,
            "mem_fraction": MEM_FRACTION,
        },
        "conventions": {
            "bytes": "minimum bytes a one-pass implementation moves (see bench/counts.py)",
            "attention_flops": "fwd 4*B*H*S*S*D/2 (causal); bwd 2.5x fwd (FlashAttention convention)",
            "model_flops": "2*(12*L*d^2 + d*V) per token + causal attention 2*L*S*d per token; "
                           "train = 3x forward (no recomputation counted)",
            "speedups": "ratio of median times within a point; best baseline = fastest "
                        "baseline or peer (never ours or a single-kernel variant)",
        },
        "limits": None,
        "peers": {},
        "status": "running",
    }
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        meta["capability"] = f"{major}.{minor}"
    return meta



class Progress:
    """``[ 12/340]  3% 0:42 elapsed, ~4:10 left  attention fwd gpt2 S=1024 triton`` on stderr.

    On a terminal the line is rewritten in place; in a log, one line per step.
    """

    def __init__(self, total, stream=None, budget=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self.budget = budget

    def step(self, label):
        self.done += 1
        elapsed = time.monotonic() - self.t0
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        if self.budget is not None:
            left = min(left, max(0.0, self.budget - elapsed))
        pct = 100.0 * self.done / max(1, self.total)
        width = len(str(self.total))
        line = (f"[{self.done:>{width}}/{self.total}] {pct:3.0f}% {_hms(elapsed)} elapsed, "
                f"~{_hms(left)} left  {label}")
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty and self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def attention_configs():
    """The tiles gpt2_kernels.attention's first-call tuner chose in this run ([] when nothing was timed)."""
    module = sys.modules.get("gpt2_kernels.attention")
    return module.chosen_configs() if module is not None else []
