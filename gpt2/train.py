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

The loss stays on the device until a step that logs (every ``--log-interval``, an evaluation or
a checkpoint): only there does the loop wait for the GPU.

**Many processes** (``gpt2/distributed.py``). Under ``torchrun`` each process drives one device,
the model wrapped in DDP or sharded with ``--fsdp``. The global batch of a micro-step is drawn
from the seed alone and each process takes its slice of it, so N processes with
``--batch-size B/N`` compute the same mean loss and gradient as one with ``--batch-size B``,
up to floating-point summation order.

**The output folder** (``--out``: the checkpoint, ``train_log.csv``, ``loss.png``) is
``gpt2/run_folder.py``'s: a checkpoint is swapped in whole, so a kill at any moment leaves one to
``--resume``, and a new run never writes over what ``--out`` holds. Numbers that would wreck a run
(a learning rate above 1 or not finite, ``--min-lr`` above ``--lr``, a non-positive
``--peak-flops``) are usage errors.
"""

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .config import SIZES, GPT2Config
from .distributed import Dist
from .model import GPT2
from .options import add_kernel_flags, float_in, int_at_least, kernel_overrides
from .run_folder import (
    LOG, PLOT, STATE, RunLog, check_fingerprint, check_new, finish_checkpoint, load_optimizer_state, read_state,
    save_checkpoint, save_plot,
)
from .switch import KERNELS
from .viz import plot_losses

# Arguments a --resume may change: how the run is executed, not what it computes. (Changing
# the kernels or compiling changes results only by rounding.)
RESUMABLE = {
    "out", "resume", "steps", "stop_at", "eval_interval", "save_interval", "log_interval", "device", "kernels",
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
    g.add_argument("--log-interval", type=pos, default=1,
                   help="steps between reading the loss back from the device, a host sync each; the log rows of "
                        "the steps between are written then, with their mean tokens/s")

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
    out, state = Path(args.out), None
    finish_checkpoint(out)  # one written whole by a run cut short while moving it in
    if args.resume:
        # Every argument saved, but a resumable one added since takes its default.
        state = read_state(out, {a.dest for a in parser._actions if a.dest != "help"} - RESUMABLE)
        saved = state["args"]
        changed = sorted(k for k in given - RESUMABLE if k in saved and getattr(args, k) != saved[k])
        if changed:
            flags = ", ".join(f"--{k.replace('_', '-')} {getattr(args, k)} (saved: {saved[k]})" for k in changed)
            raise ValueError(
                f"--resume continues the run as it was started, but {flags} differ; drop them, or start "
                f"a new run in another --out"
            )
        # The saved arguments, those given now on top (an earlier --stop-at was the earlier run's).
        args = argparse.Namespace(**{**vars(args), **saved, **{k: getattr(args, k) for k in given},
                                     "resume": True, "out": args.out, "stop_at": args.stop_at})
        if state["step"] >= args.steps:
            raise ValueError(f"--resume: the run in {out} already finished its {args.steps} steps; raise --steps to go on")
        if args.stop_at is not None and args.stop_at <= state["step"]:
            parser.error(f"--stop-at {args.stop_at}: the run is already at step {state['step']}")
    else:
        check_new(out)
        if args.data is None:
            parser.error("--data is required (unless --resume)")
        custom = [f"--{k.replace('_', '-')}" for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                                         "dropout") if getattr(args, k) is not None]
        if args.init and (args.model or custom):
            parser.error(f"--init brings its own model; it cannot be combined with {', '.join(custom or ['--model'])}")
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
    if args.stop_at is not None and args.stop_at >= args.steps:
        parser.error(f"--stop-at ({args.stop_at}) must be smaller than --steps ({args.steps})")
    return args, state


def lr_at(step, args):
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up, then a cosine
    from --lr down to --min-lr at --steps."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * (args.lr - args.min_lr)


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

    # Model first (its block_size bounds --seq-len), then the data (checked against its vocabulary).
    model = build_model(args, out if state else None)
    config = model.config
    if state is not None:
        check_fingerprint(state, model, out)
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
    wrapped = dist.wrap(model, args.fsdp)
    run_model = torch.compile(wrapped) if args.compile else wrapped
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(args.beta1, args.beta2),
        fused=device.type == "cuda",
    )
    start = 0
    if state is not None:
        load_optimizer_state(optimizer, wrapped, state, args.fsdp, out / STATE)
        start = state["step"]
    log = RunLog(out, start, args.steps, dist.main)

    tokens_per_step = B * T * args.grad_accum * world
    peak = args.peak_flops or dist.peak_flops(precision)
    log.note(f"model: {config.n_layer} layers, {config.n_head} heads, width {config.n_embd}, "
             f"{n_params / 1e6:.2f}M parameters, block_size {config.block_size}"
             + (f", from {args.init}" if args.init else "") + (f" (resumed at step {start})" if start else ""))
    log.note(f"kernels: " + ", ".join(f"{k}={v}" for k, v in kernels.items())
             + f" | {device} {precision}" + (" | compiled" if args.compile else ""))
    log.note(f"data: {len(data.train):,} training and {len(data.val):,} validation tokens from {data.source}"
             + (f" ({data.cached})" if data.cached else ""))
    log.note(f"batch: {B} x {T} tokens x {args.grad_accum} accumulation x {world} process{'es' * (world > 1)}"
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
            save_plot(plot_losses(log.rows, title), out / PLOT)

    if start == 0:
        val = evaluate()
        log.add(0, val_loss=val)
        log.note(f"step 0: validation loss {val:.4f}" if val is not None else "step 0: no validation split")

    last = args.stop_at or args.steps
    pending = []  # (step, lr, mean loss on the device, peak memory) of the steps not yet logged
    step = start
    for step in range(start + 1, last + 1):
        if config.dropout:  # dropout masks from (seed, step, rank): the same after a resume
            torch.manual_seed(int(np.random.SeedSequence([args.seed, 2, step, dist.rank]).generate_state(1)[0]))
        lr = lr_at(step - 1, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if not pending:
            t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            x, y = batch(D.TRAIN, data.train, (step, micro))
            with dist.no_sync(wrapped, micro == args.grad_accum - 1, args.fsdp), autocast:
                _, loss = run_model(x, y)  # the mean over this process's B x T targets
            (loss / args.grad_accum).backward()
            loss_sum += loss.detach().float()
        if args.grad_clip:
            # model.parameters() afresh: FSDP's state-dict calls (a checkpoint) may swap the objects.
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # The mean over the global batch stays on the device: reading it back waits for the GPU.
        pending.append((step, lr, dist.mean(loss_sum / args.grad_accum), dist.peak_mem_mib()))
        stop = bool(interrupted)  # (Ctrl-C is caught only without torchrun, which signals every process)
        evaluating = step % args.eval_interval == 0 or step == args.steps
        saving = step % args.save_interval == 0 or step in (args.steps, last) or stop
        if step % args.log_interval and not (evaluating or saving):
            continue

        # A step that logs: one host sync reads the losses of the steps since the last one.
        losses = torch.stack([loss for _, _, loss, _ in pending]).tolist()
        tok_s = tokens_per_step * len(pending) / (time.perf_counter() - t0)  # their mean
        val = evaluate() if evaluating else None
        for (s, lr_s, _, mem), train_loss in zip(pending, losses):
            log.add(s, train_loss=train_loss, val_loss=val if s == step else None, lr=lr_s, tokens_per_s=tok_s,
                    mfu=mfu(config, T, tok_s / world, peak) if peak else None, peak_mem=mem)
        log.progress(step, losses[-1], lr, tok_s)
        if val is not None:
            log.note(f"step {step}: train loss {losses[-1]:.4f}, validation loss {val:.4f}")
        for (s, *_), train_loss in zip(pending, losses):
            if not math.isfinite(train_loss):
                raise RuntimeError(f"the training loss is {train_loss} at step {s}; lower --lr or check the data")
        pending = []
        if saving:
            checkpoint(step)
        if stop:
            break
    log.note("")
    if step < args.steps:
        log.note(f"stopped at step {step} of {args.steps}; continue with: python -m gpt2 train --out {out} --resume")
    log.note(f"checkpoint: {out} (python -m gpt2 generate --checkpoint {out}); log: {out / LOG}; plot: {out / PLOT}")
    return 130 if interrupted else 0
