"""The output folder of ``python -m gpt2 train`` (``--out``): what a run leaves behind and resumes from.

Written by the first process only (the token cache by the first process of each machine):

- ``config.json`` and ``model.safetensors``: the latest weights, a Hugging Face GPT-2 checkpoint
  (``GPT2.from_pretrained(out)``, transformers' ``GPT2LMHeadModel.from_pretrained(out)``,
  ``python -m gpt2 generate --checkpoint out``);
- ``training_state.pt``: the step, the AdamW state, the run's arguments and a fingerprint of the
  weights, for ``--resume``; the window sampler and the dropout generator are seeded from
  (seed, step), so a resumed run repeats an uninterrupted one exactly;
- ``train_log.csv``: ``step, train_loss, val_loss, lr, tokens_per_s, mfu, peak_mem``, one row a
  step (val_loss on evaluation steps; row 0 is the validation loss before training);
- ``loss.png``: the loss curves (``gpt2.viz.plot_losses``), redrawn at every checkpoint.

A checkpoint (the first three files) is replaced whole: written into a folder beside them and
swapped in (``save_checkpoint``), so that a second Ctrl-C or a kill at any moment leaves one
complete checkpoint to resume; weights that are not finite are never written. A new run refuses
an ``--out`` that holds any of these files (``check_new``: ``--init X --out X`` would replace X's
weights; an old log would get a second step 0).
"""

import csv
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from .checkpoint import CONFIG, SAFETENSORS, save_pretrained
from .model import GPT2

STATE, LOG, PLOT = "training_state.pt", "train_log.csv", "loss.png"
CHECKPOINT = (SAFETENSORS, CONFIG, STATE)  # the files of one checkpoint, in the order they are moved in
# A checkpoint being written, and one written whole but not yet moved into --out (save_checkpoint).
PARTIAL, PENDING = ".checkpoint.tmp", ".checkpoint"
# The log's columns after the step, and how each is written.
FORMATS = {"train_loss": ".6f", "val_loss": ".6f", "lr": ".6g", "tokens_per_s": ".1f", "mfu": ".4f", "peak_mem": ".1f"}
COLUMNS = ("step", *FORMATS)


def check_new(out):
    """Refuse an ``out`` holding anything a new run would write over."""
    if (out / STATE).is_file():
        raise FileExistsError(f"{out} already holds a run ({STATE}); continue it with --resume or choose another --out")
    held = [name for name in (CONFIG, SAFETENSORS, LOG, PLOT) if (out / name).exists()]
    if held:  # e.g. --init X --out X, or an earlier run's log: a new run would write over them
        raise FileExistsError(f"{out} already holds {', '.join(held)}, which a new run would replace; choose "
                              f"another --out (to train from the model there: --init {out} --out NEW)")


# ---- the training state -----------------------------------------------------------------
def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0] or type(e).__name__


def read_state(out, names):
    """The training state saved in the folder ``out``, checked to be one that ``--resume`` can
    use: any damage (not a torch file, cut short, keys or the arguments ``names`` missing) is a
    ValueError naming it."""
    path = out / STATE
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {out} holds no {STATE}; nothing to resume")
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
    missing = sorted(set(names) - set(state["args"]))
    if missing:
        raise ValueError(f"{path}: the saved arguments lack {', '.join('--' + k.replace('_', '-') for k in missing)} "
                         f"(edited, or saved by another version); it cannot be resumed")
    return state


# ---- the log -----------------------------------------------------------------------------
def _hms(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _read_log(path, up_to_step):
    """The rows of an earlier run's log up to a step. A log that is not this trainer's CSV (another
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


class RunLog:
    """What a run reports: ``train_log.csv``, one row a step, and on stderr notes and a progress
    line (a bar, the step, loss, learning rate, tokens/s and the time left at the recent pace),
    redrawn in place on a terminal, a line every ~5% of the run otherwise. Only the first
    process writes (``main``); the others hold a silent one."""

    def __init__(self, out, start, steps, main, stream=None):
        self.path, self.main, self.stream = out / LOG, main, stream or sys.stderr
        self.rows = _read_log(self.path, start) if main else []
        if main:  # a resumed run drops the rows after its checkpoint: it is about to write them again
            out.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, COLUMNS)
                w.writeheader()
                w.writerows(self.rows)
        self.first, self.last, self.shown = start, steps, start
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.times = []  # (time, step) of recent progress lines
        self.every = max(1, (steps - start) // 20)
        self.width = 0

    def add(self, step, **values):
        """Append the row of a step; a value not given (or None) is left empty."""
        row = {"step": step} | {c: "" if values.get(c) is None else format(values[c], FORMATS[c]) for c in FORMATS}
        if self.main:
            self.rows.append(row)
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, COLUMNS).writerow(row)

    def progress(self, step, loss, lr, tok_s):
        now = time.perf_counter()
        self.times = (self.times + [(now, step)])[-20:]
        if not self.main or not self.tty and step - self.shown < self.every and step != self.last:
            return
        self.shown = step
        (t_a, s_a), (t_b, s_b) = self.times[0], self.times[-1]
        pace = (t_b - t_a) / (s_b - s_a) if s_b > s_a else (now - self.t0) / max(1, step - self.first)
        bar = "#" * int(24 * step / self.last)
        line = (f"[{bar:-<24}] step {step}/{self.last}  loss {loss:.4f}  lr {lr:.2e}  {tok_s:,.0f} tok/s  "
                f"{_hms(now - self.t0)} elapsed, ETA {_hms(pace * (self.last - step))}")
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text):
        """A line of its own (the run's setup, an evaluation), above the progress line."""
        if not self.main:
            return
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


def save_plot(fig, path):
    """Write a figure beside ``path`` and move it over: a reader never sees half a PNG."""
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


# ---- checkpoints -------------------------------------------------------------------------
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


def check_fingerprint(state, model, out):
    if state["weights"] != fingerprint(model):
        raise RuntimeError(
            f"{out}/{SAFETENSORS} is not the one {STATE} was saved with (a checkpoint cut short, or "
            f"files copied from two runs?); cannot resume exactly"
        )
