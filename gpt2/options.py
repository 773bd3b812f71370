"""What the commands (``python -m gpt2 train``, ``generate``) check alike: counts, real numbers,
the kernel flags and ``--device``. One place, so that a flag the two share means the same and is
refused with the same words in both."""

import argparse
import math

from .switch import KERNELS


def int_at_least(lo):
    """An argparse type: a whole number >= lo."""

    def parse(s):
        n = int(s)
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {n}")
        return n

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def float_in(lo, hi=math.inf, lo_open=False, hi_open=False):
    """An argparse type: a finite number in the interval. inf or nan would reach the optimizer
    (NaN weights from the first step), the sampler or the log, never a meaningful setting."""
    if hi == math.inf:
        where = f"{'>' if lo_open else '>='} {lo}"
    else:
        where = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def parse(s):
        x = float(s)
        if not (math.isfinite(x) and (lo < x if lo_open else lo <= x) and (x < hi if hi_open else x <= hi)):
            raise argparse.ArgumentTypeError(f"must be {where} and finite, got {s}")
        return x

    parse.__name__ = "float"
    return parse


def add_kernel_flags(group, choices, help, ops=tuple(KERNELS), **kwargs):
    """--kernels (every op at once) and one --OP flag per op that overrides it."""
    group.add_argument("--kernels", choices=choices, help=help, **kwargs)
    for op in ops:
        group.add_argument(f"--{op}", choices=tuple(KERNELS[op]), help=f"overrides --kernels for {op}")


def kernel_overrides(args):
    """{op: implementation} of the --OP flags given."""
    return {op: getattr(args, op) for op in KERNELS if getattr(args, op, None) is not None}


def resolve_device(spec):
    """The torch.device that --device names (default: cuda when there is one), checked against
    this machine; a ValueError says what it has."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {spec}: only cpu and cuda (cuda:N) are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: there is no CUDA GPU on this machine (or torch is a CPU build); "
                         f"use --device cpu")
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.type == "cuda" and dev.index is not None and dev.index >= count:
        raise ValueError(f"--device {spec}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return dev
