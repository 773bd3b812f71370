"""``python -m gpt2 train``: train GPT-2 on text, with the kernels, from one CPU to many GPUs.

    python -m gpt2 train --data data/shakespeare --out out/tiny \\
        --n-layer 2 --n-head 2 --n-embd 64 --seq-len 64 --batch-size 8 --steps 200 --lr 3e-3
    torchrun --standalone --nproc_per_node 8 -m gpt2 train --data corpus/ --out out/gpt2 --model gpt2 \\
        --seq-len 1024 --batch-size 16 --grad-accum 4 --steps 5000 --compile
    python -m gpt2 train --out out/gpt2 --resume          # continue a run from its last checkpoint
    python -m gpt2 generate --checkpoint out/tiny --prompt "To be"

One optimizer step: ``--grad-accum`` micro-batches of ``--batch-size`` windows of ``--seq-len``
tokens in every process, the gradients averaged (mean loss over the global batch), clipped to
``--grad-clip``, then AdamW (weight decay on the matrices only: embeddings and linear weights,
not biases and LayerNorm gains) at a learning rate warmed up linearly over ``--warmup-steps`` and
decayed along a cosine to ``--min-lr`` at ``--steps``. On a GPU the forward runs under bf16
autocast (parameters and optimizer state stay fp32).

The trainer uses only the loss of ``model(idx, targets)``, never the logits, so a fused
loss kernel that never forms them fits in unchanged.

**Many processes.** Under ``torchrun`` each process drives one device (NCCL on GPUs, gloo on
CPUs) and the model is wrapped in DistributedDataParallel or, with ``--fsdp``, sharded with
FSDP (``fully_shard``: each block's parameters, gradients and AdamW moments are split across the
processes and gathered only while the block runs). The global batch of a micro-step is drawn
from the seed alone and each process takes its slice of it, so N processes with
``--batch-size B/N`` compute the same mean loss and gradient as one with ``--batch-size B``,
up to floating-point summation order.

**The output folder** (``--out``), written by the first process only (the token cache by the
first process of each machine):

- ``config.json`` and ``model.safetensors``: the latest weights, a Hugging Face GPT-2 checkpoint
  (``GPT2.from_pretrained(out)``, transformers' ``GPT2LMHeadModel.from_pretrained(out)``,
  ``python -m gpt2 generate --checkpoint out``);
- ``training_state.pt``: the step, the AdamW state and the run's arguments, for ``--resume``;
  the window sampler and the dropout generator are seeded from (seed, step), so a resumed run
  repeats an uninterrupted one exactly;
- ``train_log.csv``: ``step, train_loss, val_loss, lr, tokens_per_s, mfu, peak_mem``, one row a
  step (val_loss on evaluation steps; row 0 is the validation loss before training);
- ``loss.png``: the loss curves, redrawn at every evaluation.

A checkpoint (the first three files) is replaced whole: written into a folder beside them and
swapped in (``save_checkpoint``), so that a second Ctrl-C or a kill at any moment leaves one
complete checkpoint to resume; weights that are not finite are never written. A new run refuses
an ``--out`` that holds any of these files (``--init X --out X`` would replace X's weights; an old
log would get a second step 0), and numbers that would wreck a run (a learning rate above 1 or not
finite, ``--min-lr`` above ``--lr``, a non-positive ``--peak-flops``) are usage errors.
"""

import argparse
import contextlib
import csv
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .checkpoint import CONFIG, SAFETENSORS
from .config import SIZES, GPT2Config
from .model import GPT2
from .options import add_kernel_flags, float_in, int_at_least, kernel_overrides, resolve_device
from .switch import KERNELS

STATE, LOG, PLOT = "training_state.pt", "train_log.csv", "loss.png"
CHECKPOINT = (SAFETENSORS, CONFIG, STATE)  # the files of one checkpoint, in the order they are moved in
# A checkpoint being written, and one written whole but not yet moved into --out (save_checkpoint).
PARTIAL, PENDING = ".checkpoint.tmp", ".checkpoint"
COLUMNS = ("step", "train_loss", "val_loss", "lr", "tokens_per_s", "mfu", "peak_mem")

# Dense bf16 tensor-core peak, FLOP/s, from the vendors' data sheets (for MFU). Matched in order
# against torch.cuda.get_device_name(); an unlisted GPU gets no MFU unless --peak-flops says.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
)

# Arguments a --resume may change: how the run is executed, not what it computes. (Changing
# the kernels or compiling changes results only by rounding.)
RESUMABLE = {
    "out", "resume", "steps", "stop_at", "eval_interval", "save_interval", "device", "kernels",
    *KERNELS, "compile", "peak_flops", "data_cache", "data",
}


# ---- arguments ---------------------------------------------------------------------------
def add_parser(subparsers):
    """The ``train`` subcommand's parser, added to ``python -m gpt2``'s subparsers."""
    p = subparsers.add_parser(
        "train", help="train on text (one process, or many through torchrun)", allow_abbrev=False,
        description="Train GPT-2 on text: a tiny model on a CPU, or GPT-2 itself on many GPUs through torchrun.",
        formatter_class=_Help,
    )
    pos, nonneg, frac = int_at_least(1), int_at_least(0), float_in(0.0)
    g = p.add_argument_group("data and output")
    g.add_argument("--data", metavar="PATH",
                   help="a text file, a folder of .txt files, or a uint16 token file (.bin); "
                        "required unless --resume")
    g.add_argument("--out", metavar="DIR", required=True, help="the output folder (checkpoint, log, plot)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    g.add_argument("--val-fraction", type=float_in(0.0, 1.0, hi_open=True), default=0.1, metavar="F",
                   help="the tail of the text held out for validation")
    g.add_argument("--data-cache", metavar="DIR", help=f"where tokenized text is kept (default {D.default_cache_dir()})")

    g = p.add_argument_group("model (one of: --model, --init, or a custom shape)")
    g.add_argument("--model", choices=SIZES, help="a GPT-2 size, randomly initialised (default gpt2)")
    g.add_argument("--init", metavar="PATH", help="start from a checkpoint (an HF-format folder or Hub name)")
    g.add_argument("--n-layer", type=pos, help="custom shape: blocks (the rest from --model)")
    g.add_argument("--n-head", type=pos, help="custom shape: heads")
    g.add_argument("--n-embd", type=pos, help="custom shape: width")
    g.add_argument("--block-size", type=pos, help="context of a new model (default 1024; --seq-len for a custom shape)")
    g.add_argument("--vocab-size", type=pos,
                   help="embedding rows of a new model (default 50257; 50304, a multiple of 64, is faster on GPUs)")
    g.add_argument("--dropout", type=float_in(0.0, 1.0, hi_open=True), help="dropout of a new model (default 0)")

    g = p.add_argument_group("batches and optimiser")
    g.add_argument("--seq-len", type=pos, help="tokens a window (default: the model's block_size)")
    g.add_argument("--batch-size", type=pos, default=8, help="windows a micro-step, in each process")
    g.add_argument("--grad-accum", type=pos, default=1, help="micro-steps an optimizer step")
    g.add_argument("--steps", type=pos, default=1000, help="optimizer steps (the schedule's length)")
    g.add_argument("--stop-at", type=pos, metavar="STEP",
                   help="end this run after STEP (checkpointed), as if interrupted; --resume continues")
    # An AdamW step moves each weight by about lr: above 1 a GPT-2's weights (~0.02) are gone in one.
    g.add_argument("--lr", type=float_in(0.0, 1.0), default=6e-4, help="peak learning rate, at most 1")
    g.add_argument("--min-lr", type=float_in(0.0, 1.0),
                   help="learning rate at the end of the cosine, at most --lr (default lr / 10)")
    g.add_argument("--warmup-steps", type=nonneg, help="linear warm-up (default 5%% of --steps)")
    g.add_argument("--weight-decay", type=frac, default=0.1,
                   help="AdamW decay of the matrices; lr * weight_decay at most 1")
    g.add_argument("--beta1", type=float_in(0.0, 1.0, hi_open=True), default=0.9, help="AdamW's beta1")
    g.add_argument("--beta2", type=float_in(0.0, 1.0, hi_open=True), default=0.95, help="AdamW's beta2")
    g.add_argument("--grad-clip", type=frac, default=1.0, help="clip the gradient's global norm (0: off)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-interval", type=pos, help="steps between validations (default --steps / 10)")
    g.add_argument("--eval-iters", type=pos, default=20, help="batches a validation")
    g.add_argument("--save-interval", type=pos, help="steps between checkpoints (default --eval-interval)")

    g = p.add_argument_group("how it runs")
    add_kernel_flags(g, ("torch", "triton", "sdpa"),
                     "every op: eager PyTorch, this project's Triton kernels, or PyTorch's fused attention (sdpa) "
                     "with eager LayerNorm and GELU (default triton on a GPU, torch on a CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=nonneg, default=0, help="initial weights, windows and dropout")
    g.add_argument("--device", help="cpu, cuda (default cuda when available; under torchrun cuda:LOCAL_RANK)")
    g.add_argument("--precision", choices=("bf16", "fp32"), help="autocast dtype (default bf16 on a GPU, fp32 on a CPU)")
    g.add_argument("--fsdp", action="store_true", help="shard parameters and optimizer state (FSDP) instead of DDP")
    g.add_argument("--peak-flops", type=float_in(0.0, lo_open=True), metavar="FLOPS",
                   help="the device's peak FLOP/s for MFU (default: bf16 data-sheet value of known GPUs)")
    for a in p._actions:  # short metavars: N for counts, X for real numbers
        if a.option_strings and a.metavar is None and a.type is not None and a.choices is None:
            a.metavar = "N" if a.type.__name__ == "int" else "X"
    return p


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help does not already explain it."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def given_options(parser, argv):
    """Destinations of the options written on the command line (a default does not count)."""
    written = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {a.dest for a in parser._actions if written & set(a.option_strings)}


def resolve_args(args, given, parser):
    """Fill the defaults that depend on other arguments; merge a resumed run's saved arguments.

    Returns (args, saved training state or None)."""
    out = Path(args.out)
    state = None
    finish_checkpoint(out)  # one written whole by a run cut short while moving it in
    if args.resume:
        if not (out / STATE).is_file():
            raise FileNotFoundError(f"--resume: {out} holds no {STATE}; nothing to resume")
        state = read_state(out / STATE, parser)
        saved = state["args"]
        changed = sorted(k for k in given - RESUMABLE if k in saved and getattr(args, k) != saved[k])
        if changed:
            flags = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)} (saved: {saved[k]})" for k in changed)
            raise ValueError(
                f"--resume continues the run as it was started, but {flags} differ; drop them, or start "
                f"a new run in another --out"
            )
        merged = {**saved, **{k: getattr(args, k) for k in given}, "resume": True, "out": args.out,
                  "stop_at": args.stop_at}  # an earlier --stop-at was for the earlier run
        args = argparse.Namespace(**merged)
        if state["step"] >= args.steps:
            raise ValueError(f"--resume: the run in {out} already finished its {args.steps} steps; raise --steps to go on")
        if args.stop_at is not None and args.stop_at <= state["step"]:
            parser.error(f"--stop-at {args.stop_at}: the run is already at step {state['step']}")
        if args.stop_at is not None and args.stop_at >= args.steps:
            parser.error(f"--stop-at ({args.stop_at}) must be smaller than --steps ({args.steps})")
        return args, state
    if (out / STATE).is_file():
        raise FileExistsError(f"{out} already holds a run ({STATE}); continue it with --resume or choose another --out")
    held = [name for name in (CONFIG, SAFETENSORS, LOG, PLOT) if (out / name).exists()]
    if held:  # e.g. --init X --out X, or an earlier run's log: a new run would write over them
        raise FileExistsError(f"{out} already holds {', '.join(held)}, which a new run would replace; choose "
                              f"another --out (to train from the model there: --init {out} --out NEW)")
    if args.data is None:
        parser.error("--data is required (unless --resume)")
    custom = [f"--{k.replace('_', '-')}" for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout")
              if getattr(args, k) is not None]
    if args.init and (args.model or custom):
        parser.error(f"--init brings its own model; it cannot be combined with {', '.join(custom or ['--model'])}")
    if args.stop_at is not None and args.stop_at >= args.steps:
        parser.error(f"--stop-at ({args.stop_at}) must be smaller than --steps ({args.steps})")
    args.eval_interval = args.eval_interval or max(1, args.steps // 10)
    args.save_interval = args.save_interval or args.eval_interval
    args.warmup_steps = args.steps // 20 if args.warmup_steps is None else args.warmup_steps
    args.min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    if args.min_lr > args.lr:
        parser.error(f"--min-lr ({args.min_lr}) must not exceed --lr ({args.lr}): the cosine decays from "
                     f"--lr to --min-lr")
    if args.lr * args.weight_decay > 1:
        parser.error(f"--weight-decay {args.weight_decay} at --lr {args.lr}: a step scales the matrices by "
                     f"1 - lr * weight_decay = {1 - args.lr * args.weight_decay:.3g}, which must not be negative")
    args.data = str(Path(args.data).expanduser().resolve())
    return args, None


def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0] or type(e).__name__


def read_state(path, parser):
    """The training state saved in ``path``, checked to be one that ``--resume`` can use: any
    damage (not a torch file, cut short, keys or arguments missing) is a ValueError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling, zip and EOF errors: whatever the bytes are
        raise ValueError(f"{path} is not a readable training state ({type(e).__name__}: {_first_line(e)}); "
                         f"it cannot be resumed") from None
    kinds = {"step": int, "args": dict, "optimizer": dict, "weights": float}
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a training state; it cannot be resumed")
    wrong = [k for k, kind in kinds.items() if not isinstance(state.get(k), kind)]
    if wrong:
        raise ValueError(f"{path} is not a training state of this trainer: {', '.join(wrong)} missing or "
                         f"of the wrong type; it cannot be resumed")
    missing = sorted({a.dest for a in parser._actions if a.dest != "help"} - set(state["args"]))
    if missing:
        raise ValueError(f"{path}: the saved arguments lack {', '.join('--' + k.replace('_', '-') for k in missing)} "
                         f"(edited, or saved by another version); it cannot be resumed")
    return state


def lr_at(step, args):
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then a cosine
    from --lr down to --min-lr at --steps."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * (args.lr - args.min_lr)


# ---- processes and devices ---------------------------------------------------------------
class Dist:
    """Where this process stands: rank, world size, device; a no-op for one process."""

    def __init__(self, device_arg, fsdp):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_main = local_rank == 0  # the first process of its machine
        device = resolve_device(device_arg)
        if device.type == "cuda":
            if "LOCAL_RANK" in os.environ:
                device = torch.device("cuda", local_rank)  # torchrun: one GPU a process
            elif device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            if device.index >= torch.cuda.device_count():
                raise RuntimeError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
            torch.cuda.set_device(device)
        self.device = device
        if fsdp and self.world == 1 and "RANK" not in os.environ:
            raise ValueError("--fsdp shards the model across processes: launch with torchrun (e.g. --nproc_per_node 8)")
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        if self.enabled:
            import torch.distributed as dist

            backend = "nccl" if device.type == "cuda" else "gloo"
            kwargs = {"device_id": device} if device.type == "cuda" else {}
            dist.init_process_group(backend, **kwargs)

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, t):
        """Average a tensor over the processes (in place on a copy)."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


# ---- the model ---------------------------------------------------------------------------
def build_model(args, state_dir=None):
    """A new model (--model / custom shape, from --seed), a checkpoint (--init), or, resuming,
    the weights in the output folder. On the CPU, fp32, in train mode."""
    if state_dir is not None or args.init:
        model = GPT2.from_pretrained(str(state_dir or args.init))
    else:
        overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "dropout")
                     if getattr(args, k) is not None}
        custom = any(getattr(args, k) is not None for k in ("n_layer", "n_head", "n_embd"))
        block = args.block_size or (args.seq_len if custom and args.seq_len else None)
        if block:
            overrides["block_size"] = block
        config = GPT2Config.from_name(args.model or "gpt2", **overrides)
        torch.manual_seed(args.seed)
        model = GPT2(config)
    return model.train()


def set_kernels(model, args, device):
    default = args.kernels or ("triton" if device.type == "cuda" else "torch")
    # "sdpa" names an attention implementation only; the other ops stay eager PyTorch.
    base, extra = (("torch", {"attention": "sdpa"}) if default == "sdpa" else (default, {}))
    model.set_kernels(base, **{**extra, **kernel_overrides(args)})
    triton_ops = [op for op, impl in model.kernels.items() if impl == "triton"]
    if triton_ops and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"Triton kernels ({', '.join(triton_ops)}) on a CPU need Triton's interpreter: set "
            f"TRITON_INTERPRET=1 (slow, for testing) or use --kernels torch"
        )
    return model.kernels


def param_groups(model, weight_decay):
    """AdamW groups: matrices (embeddings, linear weights) decay, vectors (biases, LayerNorm) do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied head is wte, listed once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def mfu(config, seq_len, tokens_per_s, peak):
    """Model FLOPs utilisation of one device processing tokens_per_s: the benchmark's count
    (``GPT2Config.flops_per_token``) over the device's peak FLOP/s."""
    return config.flops_per_token(seq_len) * tokens_per_s / peak


def peak_flops(args, device, precision):
    if args.peak_flops:
        return args.peak_flops
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_BF16_FLOPS if key in name), None)


def peak_mem_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- output folder -----------------------------------------------------------------------
def read_log(path, up_to_step):
    """The rows of an earlier run's log up to a step (a resumed run drops the rows after its
    checkpoint: it is about to write them again). A log that is not this trainer's CSV (another
    delimiter, no header, a field that is not a number) is a ValueError naming its line; a
    byte-order mark, which spreadsheets add on saving, is read past."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = csv.reader(f)
        header = next(lines, None)
        if header != list(COLUMNS):
            raise ValueError(f"{path}: expected the header {','.join(COLUMNS)}, got {','.join(header or [])[:80]!r}; "
                             f"restore the log, or move it away to resume without it")
        rows = []
        for n, cells in enumerate(lines, start=2):
            if len(cells) != len(COLUMNS):
                raise ValueError(f"{path}, line {n}: expected {len(COLUMNS)} fields, got {len(cells)}")
            row = dict(zip(COLUMNS, cells))
            if not row["step"].isdigit():
                raise ValueError(f"{path}, line {n}: step {row['step']!r} is not a whole number")
            for column in COLUMNS[1:]:
                if row[column] != "":
                    try:
                        float(row[column])
                    except ValueError:
                        raise ValueError(f"{path}, line {n}: {column} {row[column]!r} is not a number") from None
            if int(row["step"]) <= up_to_step:
                rows.append(row)
    return rows


def write_log(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)


def append_log(path, row):
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def plot_losses(rows, path, title):
    """loss.png: the training loss each step (faint) and smoothed, and the validation loss."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"] != ""]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"] != ""]
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8)
        k = max(1, len(losses) // 50)  # a moving average over ~2% of the run
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", lw=1.6, label=f"train (mean of {k} steps)" if k > 1 else "train")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", color="tab:orange", lw=1.6, ms=4, label="validation")
        ax.annotate(f"{losses[-1]:.3f}", (steps[-1], losses[-1]), textcoords="offset points", xytext=(0, 8),
                    ha="right", color="tab:orange", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def _model_for_saving(model, wrapped, fsdp):
    """A plain GPT2 holding the full weights (gathered from the shards under FSDP; every process
    must call this). None on processes other than the first under FSDP."""
    if not fsdp:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not sd:  # only the first process receives the gathered tensors
        return None
    with torch.device("meta"):
        plain = GPT2(model.config)
    plain.load_state_dict(sd, assign=True)
    plain.lm_head.weight = plain.transformer.wte.weight
    return plain


def save_checkpoint(out, step, args, model, wrapped, optimizer, dist):
    """config.json + model.safetensors (Hugging Face's format) and training_state.pt, replaced
    together: at every instant --out holds one complete checkpoint, the one before or this one.

    All three are written into PARTIAL, a folder beside them, and flushed to disk; renaming that
    folder to PENDING (one atomic rename) is the moment the new checkpoint exists, and its files
    are then moved over the old ones. A run cut short before the rename leaves the old checkpoint
    in place (and a PARTIAL the next save discards); one cut short after it leaves a complete
    PENDING, which ``finish_checkpoint`` moves in when the folder is next used (``--resume``).
    The state also records a fingerprint of the weights, so that files mixed by hand (from two
    runs) are refused on resume. Weights that are not finite (a diverged run) are never written:
    RuntimeError, and --out keeps the checkpoint before."""
    from .checkpoint import save_pretrained

    plain = _model_for_saving(model, wrapped, args.fsdp)
    if args.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim_state = get_optimizer_state_dict(
            wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    else:
        optim_state = optimizer.state_dict()
    if not dist.main:
        return
    names, params = zip(*plain.named_parameters())
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in params]).tolist()  # one sync
    if not all(finite):
        bad = [n for n, ok in zip(names, finite) if not ok]
        raise RuntimeError(f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} {'is' if len(bad) == 1 else 'are'} "
                           f"not finite after step {step} (the run diverged: lower --lr); the checkpoint of step "
                           f"{step} was not written, and {out} keeps the one before")
    finish_checkpoint(out)
    tmp, pending = out / PARTIAL, out / PENDING
    shutil.rmtree(tmp, ignore_errors=True)  # an earlier save cut short: never part of a checkpoint
    save_pretrained(plain, tmp)
    state = {"step": step, "args": vars(args), "optimizer": optim_state, "weights": fingerprint(plain)}
    torch.save(state, tmp / STATE)
    for name in CHECKPOINT:
        _fsync(tmp / name)
    _fsync(tmp)
    os.replace(tmp, pending)  # the commit: from here the new checkpoint is complete
    finish_checkpoint(out)


def finish_checkpoint(out):
    """Move a complete checkpoint left in PENDING (a save cut short after its commit) over the
    one in ``out``; nothing to do without one. Idempotent, so a cut here is finished next time,
    and safe when every process of a distributed run calls it at once (each rename is atomic: a
    file already gone from PENDING was moved in by another)."""
    pending = Path(out) / PENDING
    if not pending.is_dir():
        return
    for name in CHECKPOINT:
        try:
            os.replace(pending / name, Path(out) / name)
        except FileNotFoundError:
            pass
    _fsync(Path(out))
    shutil.rmtree(pending, ignore_errors=True)


def _fsync(path):
    """Flush a file, or a folder's entries, to disk: a rename is only as durable as what it names."""
    if Path(path).is_dir() and os.name != "posix":  # folders cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fingerprint(model):
    """One float64 that any change of any weight changes (each tensor's sum, weighted by its place)."""
    with torch.no_grad():
        return float(sum((i + 1) * p.detach().double().sum().item() for i, p in enumerate(model.parameters())))


def load_optimizer_state(optimizer, wrapped, state, fsdp, path):
    try:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(wrapped, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:  # an edited or foreign state
        raise ValueError(f"{path}: its optimizer state does not fit this model ({type(e).__name__}: "
                         f"{_first_line(e)}); it cannot be resumed") from None


# ---- progress ----------------------------------------------------------------------------
def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """One line on stderr, redrawn in place on a terminal (a line every ~5% of the run otherwise):
    a bar, the step, loss, learning rate, tokens/s and the time left at the recent pace."""

    def __init__(self, first, last, stream=sys.stderr):
        self.first, self.last, self.stream = first, last, stream
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.times = []  # (time, step) of recent steps
        self.every = max(1, (last - first) // 20)
        self.width = 0

    def update(self, step, loss, lr, tok_s):
        now = time.perf_counter()
        self.times = (self.times + [(now, step)])[-20:]
        if not self.tty and step % self.every and step != self.last:
            return
        (t_a, s_a), (t_b, s_b) = self.times[0], self.times[-1]
        pace = (t_b - t_a) / (s_b - s_a) if s_b > s_a else (now - self.t0) / max(1, step - self.first)
        frac = step / self.last
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        line = (f"[{bar}] step {step}/{self.last}  loss {loss:.4f}  lr {lr:.2e}  {tok_s:,.0f} tok/s  "
                f"{_hms(now - self.t0)} elapsed, ETA {_hms(pace * (self.last - step))}")
        self._emit(line)

    def _emit(self, line):
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text):
        """A line of its own (an evaluation, a checkpoint), above the bar."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


# ---- the run -----------------------------------------------------------------------------
def train(args, given, parser):
    """Run ``python -m gpt2 train`` with parsed arguments; returns the exit status."""
    args, state = resolve_args(args, given, parser)
    out = Path(args.out)
    dist = Dist(args.device, args.fsdp)
    interrupted = []

    def on_ctrl_c(*_):  # the first Ctrl-C finishes the step, checkpoints and stops; a second aborts
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        print("\nCtrl-C: stopping after this step (press again to abort without a checkpoint)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_ctrl_c) if not dist.enabled else None
    try:
        return _train(args, state, out, dist, interrupted)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        dist.close()


def _train(args, state, out, dist, interrupted):
    device = dist.device
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if dist.main else (lambda *a: None)

    # Model first (its block_size bounds --seq-len), then the data (checked against its vocabulary).
    model = build_model(args, out if state else None)
    config = model.config
    if state is not None and state["weights"] != fingerprint(model):
        raise RuntimeError(
            f"{out}/model.safetensors is not the one {STATE} was saved with (a checkpoint cut short, or "
            f"files copied from two runs?); cannot resume exactly"
        )
    args.seq_len = args.seq_len or config.block_size
    if args.seq_len > config.block_size:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's block_size {config.block_size}")
    kernels = set_kernels(model, args, device)

    # The first process of each machine tokenizes (and writes the cache); the others then read it.
    if dist.local_main:
        data = D.load_tokens(args.data, args.data_cache, val_fraction=args.val_fraction)
    dist.barrier()
    if not dist.local_main:
        data = D.load_tokens(args.data, args.data_cache, val_fraction=args.val_fraction, create=False)
    if data.max_id >= config.vocab_size:
        raise ValueError(f"the data holds token id {data.max_id}, beyond the model's vocab_size {config.vocab_size}")
    T, B, world = args.seq_len, args.batch_size, dist.world
    for name, split in (("training", data.train), ("validation", data.val)):
        if (len(split) or name == "training") and len(split) < T + 1:
            raise ValueError(
                f"the {name} split has {len(split):,} tokens, fewer than --seq-len + 1 = {T + 1}; "
                f"use more text, a shorter --seq-len or another --val-fraction"
            )

    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    n_params = model.num_parameters()  # before FSDP shards it
    model.to(device)
    wrapped = model
    if dist.enabled and args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)  # the rest: embeddings (tied to the head), ln_f
    elif dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run_model = torch.compile(wrapped) if args.compile else wrapped
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(args.beta1, args.beta2),
        fused=device.type == "cuda",
    )
    start = 0
    if state is not None:
        load_optimizer_state(optimizer, wrapped, state, args.fsdp, out / STATE)
        start = state["step"]
    rows = read_log(out / LOG, start) if dist.main else []
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_log(out / LOG, rows)

    tokens_per_step = B * T * args.grad_accum * world
    peak = peak_flops(args, device, precision)
    log(f"model: {config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, "
        f"{n_params / 1e6:.2f}M parameters, block_size {config.block_size}"
        + (f", from {args.init}" if args.init else "") + (f" (resumed at step {start})" if start else ""))
    log(f"kernels: " + ", ".join(f"{k}={v}" for k, v in kernels.items())
        + f" | {device} {precision}" + (" | compiled" if args.compile else ""))
    log(f"data: {len(data.train):,} training and {len(data.val):,} validation tokens from {data.source}"
        + (f" ({data.cached})" if data.cached else ""))
    log(f"batch: {B} x {T} tokens x {args.grad_accum} accumulation x {world} process{'es' * (world > 1)}"
        f" = {tokens_per_step:,} tokens a step" + (f" ({'FSDP' if args.fsdp else 'DDP'})" if dist.enabled else ""))

    def batch(split, tokens, index):
        starts = D.window_starts(args.seed, split, index, B * world, len(tokens), T)
        return D.get_batch(tokens, starts[dist.rank * B:(dist.rank + 1) * B], T, device)

    @torch.no_grad()
    def evaluate():
        if not len(data.val):
            return None
        model.eval()
        total = torch.zeros((), device=device)
        for i in range(args.eval_iters):
            x, y = batch(D.VAL, data.val, (i,))
            with autocast:
                _, loss = run_model(x, y)
            total += loss.float()
        model.train()
        return dist.mean(total / args.eval_iters).item()

    title = (f"GPT-2 {config.n_layer}L/{config.n_head}H/{config.n_embd}d on {Path(args.data).name}, "
             f"{tokens_per_step:,} tokens a step")

    def checkpoint(step):
        save_checkpoint(out, step, args, model, wrapped, optimizer, dist)
        if dist.main:
            plot_losses(rows, out / PLOT, title)

    if start == 0:
        val = evaluate()
        row = dict.fromkeys(COLUMNS, "") | {"step": 0, "val_loss": _fmt(val)}
        if dist.main:
            rows.append(row)
            append_log(out / LOG, row)
            log(f"step 0: validation loss {val:.4f}" if val is not None else "step 0: no validation split")

    progress = Progress(start, args.steps) if dist.main else None
    last = args.stop_at or args.steps
    step = start
    for step in range(start + 1, last + 1):
        if config.dropout:  # dropout masks from (seed, step, rank): the same after a resume
            torch.manual_seed(int(np.random.SeedSequence([args.seed, 2, step, dist.rank]).generate_state(1)[0]))
        lr = lr_at(step - 1, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            x, y = batch(D.TRAIN, data.train, (step, micro))
            sync = micro == args.grad_accum - 1
            with _no_sync(wrapped, sync, dist.enabled, args.fsdp), autocast:
                _, loss = run_model(x, y)  # the mean over this process's B x T targets
            (loss / args.grad_accum).backward()
            loss_sum += loss.detach().float()
        if args.grad_clip:
            # model.parameters() afresh: FSDP's state-dict calls (a checkpoint) may swap the objects.
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # The mean over the global batch, and whether any process was interrupted, in one reduce.
        reduced = dist.mean(torch.stack([loss_sum / args.grad_accum, torch.tensor(float(bool(interrupted)), device=device)]))
        train_loss, stop = reduced[0].item(), reduced[1].item() > 0
        dt = time.perf_counter() - t0
        tok_s = tokens_per_step / dt
        evaluating = step % args.eval_interval == 0 or step == args.steps
        val = evaluate() if evaluating else None
        row = {"step": step, "train_loss": _fmt(train_loss), "val_loss": _fmt(val), "lr": f"{lr:.6g}",
               "tokens_per_s": f"{tok_s:.1f}", "mfu": f"{mfu(config, T, tok_s / world, peak):.4f}" if peak else "",
               "peak_mem": f"{peak_mem_mib(device):.1f}"}
        if dist.main:
            rows.append(row)
            append_log(out / LOG, row)
            progress.update(step, train_loss, lr, tok_s)
            if val is not None:
                progress.note(f"step {step}: train loss {train_loss:.4f}, validation loss {val:.4f}")
        if not math.isfinite(train_loss):
            raise RuntimeError(f"the training loss is {train_loss} at step {step}; lower --lr or check the data")
        if step % args.save_interval == 0 or step in (args.steps, last) or stop:
            checkpoint(step)
        if stop:
            break
    if dist.main:
        progress.note("")
        if step < args.steps:
            log(f"stopped at step {step} of {args.steps}; continue with: python -m gpt2 train --out {out} --resume")
        log(f"checkpoint: {out} (python -m gpt2 generate --checkpoint {out}); log: {out / LOG}; plot: {out / PLOT}")
    return 130 if interrupted else 0


def _no_sync(wrapped, sync, distributed, fsdp):
    """Skip the gradient all-reduce on the micro-steps before the last one of a step."""
    if not distributed or sync and not fsdp:
        return contextlib.nullcontext()
    if fsdp:
        wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return wrapped.no_sync()


def _fmt(x):
    return "" if x is None else f"{x:.6f}"
