"""Choosing among launch candidates on a GPU: time each once per shape class, keep the fastest.

    tuner = Tuner("attention", describe)
    cfg = tuner.pick(key, candidates, run, compile=warm, device=q.device)

An op lists its candidate launches best guess first (attention's ``_candidates``). The first
call of a shape class (``key``: kernel, arch, head size, dtype, causal, sequence-length class)
on a GPU:

1. compiles every candidate first, in parallel threads (``compile(cfg)``: a ``kernel.warmup``,
   which compiles without launching; ptxas runs as a subprocess, so threads overlap), so that
   no compile lands inside a timing and the compiles overlap;
2. times each with ``triton.testing.do_bench`` on the real arguments (``run(cfg)``; the real
   launch overwrites whatever the timing wrote), skipping one that fails to compile or launch;
3. keeps the fastest, logs the times, and writes the choice to a JSON file per device name and
   Triton version (``cache_dir()``), so that the next process (a test worker, the benchmark's
   next step) reads it instead of timing again.

It never times where timing would be wrong or impossible: with one candidate, under Triton's
interpreter (no device), inside CUDA-graph capture (a launch there is recorded, not run) or
inside torch.compile's tracing. There it takes the cached choice if one exists and otherwise
the first candidate, untimed and not remembered, so a later eager call still tunes.

The cache folder is ``$GPT2_KERNELS_TUNE_CACHE`` if set (``off`` disables the file), else
``~/.cache/gpt2-kernels/tuner``. A cached choice that no longer names a current candidate (the
candidate lists changed) is ignored and the class is timed again.
"""

import concurrent.futures
import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch
import triton

_log = logging.getLogger(__name__)
CACHE_ENV = "GPT2_KERNELS_TUNE_CACHE"


def cache_dir():
    """The folder of the choice files, or None when ``$GPT2_KERNELS_TUNE_CACHE`` is ``off``."""
    env = os.environ.get(CACHE_ENV)
    if env and env.lower() in ("0", "off", "none", "false"):
        return None
    return Path(env) if env else Path.home() / ".cache" / "gpt2-kernels" / "tuner"


def cache_file(op, device_name):
    """One file per op, device name and Triton version: a choice is only valid for all three."""
    folder = cache_dir()
    if folder is None:
        return None
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "gpu"
    return folder / f"{op}-{slug}-triton{triton.__version__}.json"


def timing_is_safe():
    """False inside CUDA-graph capture or torch.compile tracing, where a timed launch would be
    recorded into the graph (or traced) instead of run."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", lambda: False)():
        return False
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _key_text(key):
    return "|".join(str(k) for k in key)


class Tuner:
    """The choices of one op: in memory for this process, on disk for the next."""

    def __init__(self, op, describe, bench=None):
        self.op = op
        self.describe = describe  # Launch -> a stable text naming it (the cache stores this)
        self.bench = bench or (lambda fn: triton.testing.do_bench(fn, warmup=3, rep=10))
        self.chosen = {}  # key -> (Launch, {description: ms}, "timed" | "cache")
        self._files = {}  # device name -> {key text: {"config": ..., "ms": ...}}

    def records(self):
        """[{"key": key, "config": description, "ms": {description: ms}, "source": "timed"|"cache"}]."""
        return [{"key": k, "config": self.describe(cfg), "ms": times, "source": source}
                for k, (cfg, times, source) in self.chosen.items()]

    def pick(self, key, candidates, run, compile=None, device=None, device_name=None):
        """The candidate to launch for ``key`` (see the module docstring)."""
        if len(candidates) == 1 or (device is not None and device.type != "cuda"):
            return candidates[0]
        if key in self.chosen:
            return self.chosen[key][0]
        if device_name is None:
            device_name = torch.cuda.get_device_name(device)
        by_name = {self.describe(c): c for c in candidates}
        cached = self._load(device_name).get(_key_text(key))
        if cached and cached.get("config") in by_name:
            cfg = by_name[cached["config"]]
            self.chosen[key] = (cfg, cached.get("ms", {}), "cache")
            return cfg
        if not timing_is_safe():
            _log.info("%s %s: inside graph capture or compile tracing, the first candidate runs untimed",
                      self.op, _key_text(key))
            return candidates[0]
        ok = self._compile_all(candidates, compile) if compile is not None else list(candidates)
        times = {}
        for cfg in ok:
            try:
                times[self.describe(cfg)] = float(self.bench(lambda: run(cfg)))
            except Exception as e:  # noqa: BLE001 - a candidate that cannot run here loses
                _log.warning("%s %s: candidate %s failed: %s", self.op, _key_text(key), self.describe(cfg), e)
        if not times:
            raise RuntimeError(f"{self.op} {_key_text(key)}: no candidate launch ran")
        best = min(ok, key=lambda c: times.get(self.describe(c), float("inf")))
        self.chosen[key] = (best, times, "timed")
        _log.info("%s %s: chose %s (%s)", self.op, _key_text(key), self.describe(best),
                  ", ".join(f"{k}: {v:.3f} ms" for k, v in times.items()))
        self._store(device_name, key, best, times)
        return best

    def _compile_all(self, candidates, compile):
        """The candidates that compile. The first compiles alone (it sets up the kernel's
        per-device state), the rest in parallel threads."""
        ok = []

        def one(cfg):
            try:
                compile(cfg)
                return True
            except Exception as e:  # noqa: BLE001 - it is skipped, and said why
                _log.warning("%s: candidate %s does not compile: %s", self.op, self.describe(cfg), e)
                return False

        first, rest = candidates[0], candidates[1:]
        if one(first):
            ok.append(first)
        workers = max(1, min(len(rest), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            ok += [cfg for cfg, good in zip(rest, pool.map(one, rest)) if good]
        return ok

    # -- the file -------------------------------------------------------------------------

    def _load(self, device_name):
        if device_name not in self._files:
            self._files[device_name] = _read(cache_file(self.op, device_name))
        return self._files[device_name]

    def _store(self, device_name, key, cfg, times):
        entry = {"config": self.describe(cfg), "ms": times}
        self._load(device_name)[_key_text(key)] = entry
        path = cache_file(self.op, device_name)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(path):
                data = _read(path)  # another process may have added choices since
                data[_key_text(key)] = entry
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, path)  # readers see the old file or the new one, never half
        except OSError as e:  # a read-only home must not stop a launch
            _log.warning("%s: could not write the tuner cache %s: %s", self.op, path, e)


def _read(path):
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _log.warning("ignoring the unreadable tuner cache %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on ``path``.lock while a choice is merged in (pytest-xdist workers
    write the same file)."""
    try:
        import fcntl
    except ImportError:  # not on Linux: no lock, the atomic replace still keeps the file whole
        yield
        return
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
