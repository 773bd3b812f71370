"""Runs a planned sweep: one task at a time, each turned into a result row whatever happens,
and the progress line.

- An out-of-memory point is recorded as "oom", an implementation that cannot run here as
  "unavailable", any other exception as "error" (its message in ``note``); the run goes on.
- With a budget (seconds), a task whose expected time would overrun it is recorded as
  "skipped" and the run goes on to cheaper ones; the expected time is the last observed time
  of the same kind of task (``sweep.estimate``).
- A row-wise op (LayerNorm, GELU) whose (rows, width) was already measured at another S is
  not measured again: its rows are copied and say so.
- Results are written after every task, so a run that is killed leaves what it had.
- An error that leaves the CUDA context unusable (an illegal memory access, a device-side
  assert) ends the measuring: every later task is recorded as skipped, saying why.
"""

import sys
import time
import traceback
import warnings

from .families import FAMILIES
from .impls import Unavailable
from .results import fill_rates, fill_speedups, make_row
from .timing import free_memory, is_oom
from .sweep import cost_class, counts, estimate


# CUDA errors after which every later call in the process fails too.
STICKY_CUDA_ERRORS = ("illegal memory access", "unspecified launch failure", "device-side assert",
                      "misaligned address", "illegal instruction", "cuda error: an illegal")


def _first_line(exc, limit=300):
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _row(task, status, note, **values):
    """A result row of a task, with its point's FLOP and byte counts."""
    flops, nbytes = counts(task.point)
    return make_row(task.point, task.impl, task.role, status=status, note=note, flops=flops, bytes=nbytes, **values)


def run_task(task, ctx):
    """One row for one task (never raises, except KeyboardInterrupt)."""
    import torch

    family = FAMILIES[task.point.family]
    values, status, note = {}, "ok", ""
    failed = True
    torch.manual_seed(1234)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = dict(family.run(task.point, task.impl, ctx) or {})
        note = values.pop("note", "") or ""
        failed = False
    except KeyboardInterrupt:
        raise
    except Unavailable as e:
        status, note, failed = "unavailable", str(e), False
    except Exception as e:  # noqa: BLE001 - any failure becomes a row, and the sweep goes on
        if is_oom(e):
            status, note = "oom", _first_line(e, 160)
        else:
            status, note = "error", _first_line(e)
            if ctx.meta.get("verbose"):
                traceback.print_exc()
    finally:
        # A failure can leave tensors in reference cycles (traceback frames): collect them.
        free_memory(ctx.device, collect=failed or task.point.family in ("model", "hf"))
    return fill_rates(_row(task, status, note, **(values if status == "ok" else {})), ctx.limits)


def execute(tasks, ctx, *, budget=None, reserve=0.0, progress=None, save=None, clock=time.monotonic):
    """Run every task in order; returns the rows (with speedups filled in).

    budget: seconds from now for the whole sweep (``reserve`` of them kept for the end);
    save(rows): called after every task; progress.step(label): after every task.
    """
    start = clock()
    rows, observed, measured = [], {}, {}
    lost = None  # the task after which the CUDA context was lost
    for task in tasks:
        p = task.point
        shape = (p.shape_key(), task.impl)
        if lost is not None:
            row = _row(task, "skipped", f"not measured: the CUDA context was lost at {lost}")
        elif shape in measured:
            row = dict(measured[shape])
            row.update(seq_len=p.seq_len, batch=p.batch)
            row["note"] = "; ".join(x for x in (
                f"same shape (rows x width) as S={measured[shape]['seq_len']}: measured once", row["note"]) if x)
        else:
            elapsed = clock() - start
            est = estimate(task, observed)
            if budget is not None and elapsed + est > budget - reserve:
                row = _row(task, "skipped", f"not measured: --budget {budget:.0f} s (expected {est:.0f} s, "
                                            f"{max(0.0, budget - reserve - elapsed):.0f} s left)")
            else:
                t0 = clock()
                row = run_task(task, ctx)
                observed[cost_class(task)] = clock() - t0
                measured[shape] = row
                if row["status"] == "error" and any(s in row["note"].lower() for s in STICKY_CUDA_ERRORS):
                    lost = task.label()
        rows.append(row)
        if save is not None:
            save(rows)
        if progress is not None:
            took = observed.get(cost_class(task)) if measured.get(shape) is row else None
            progress.step(f"{task.label()}: {row['status']}"
                          + (f" {row['ms']:.3f} ms" if row["status"] == "ok" and row.get("ms") else "")
                          + (f" ({took:.1f} s)" if took is not None else ""))
    return fill_speedups(rows)


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
