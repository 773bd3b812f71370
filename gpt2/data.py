"""Training data: text -> GPT-2 token ids, once, in a memory-mapped file; random windows from it.

    data = load_tokens("data/shakespeare", cache_dir)      # tokenizes on the first call only
    x, y = get_batch(data.train, window_starts(seed=0, ...), seq_len=128)

``--data`` of ``python -m gpt2 train`` is one of:

- a text file, or a folder whose ``.txt`` files (searched recursively, in sorted order) are the
  documents. Each document is encoded with GPT-2's BPE as ordinary text (a literal
  "<|endoftext|>" in it stays seven tokens) and followed by the id of <|endoftext|> (50256), the
  separator GPT-2 was trained with. The ids go to ``tokens.bin``, a flat array of uint16 (every
  GPT-2 id is < 65,536: 2 bytes a token), under the cache folder, in a subfolder named after the
  files' paths, sizes and modification times: a second run finds it and skips the tokenizer; an
  edited file makes a new one. A cache is reused only if ``tokens.bin`` has the size and SHA-256
  that ``meta.json`` recorded (a cut-short copy would otherwise train on part of the text); a
  damaged one is tokenized again, and the log says so. Text over ``PARALLEL_MIN_BYTES`` is cut into pieces at line
  breaks that cannot change the tokenization (see ``_cut_points``) and encoded by a pool of
  processes, one per CPU;
- a prepared token file ``*.bin``: a flat uint16 array in the same format (nanoGPT's
  ``train.bin`` is one). A ``train.bin`` with a ``val.bin`` beside it, or a folder holding both,
  gives the two splits as they are.

Otherwise the last ``val_fraction`` of the tokens is the validation split (a held-out tail, as
nanoGPT does for Shakespeare), so validation text is never trained on.

Batches are random windows (nanoGPT's sampler): a window start s gives the input ids[s : s+T]
and the targets ids[s+1 : s+T+1]. The starts come from a generator seeded by (seed, split,
step, micro-step) alone, so every process of a distributed run draws the same global batch and
takes its own slice, and a resumed run draws exactly what an uninterrupted one would have.
"""

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import torch

TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit; half the bytes of int32
TOKENS, META = "tokens.bin", "meta.json"
FORMAT_VERSION = 1  # part of the cache key: bump when the tokens a text gives change
PARALLEL_MIN_BYTES = 8 * 2**20  # smaller text is encoded in this process (a pool costs ~1 s to start)
PIECE_BYTES = 4 * 2**20  # the work of one pool task
TRAIN, VAL = 0, 1  # the split, in the seed of the window sampler


@dataclass
class TokenData:
    train: np.ndarray  # (N_train,) uint16, memory-mapped
    val: np.ndarray  # (N_val,) uint16; empty when there is no validation split
    max_id: int  # the largest id in either split (checked against the model's vocab_size)
    source: str  # what was read, for the log
    cached: str = ""  # "tokenized in 1.2 s" or "reused" for text; "" for a prepared token file


# ---- what --data names -------------------------------------------------------------------
def _check_token_file(path):
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty: a token file is a flat array of uint16 token ids")
    if size % 2:
        raise ValueError(f"{path} has an odd number of bytes ({size}); a token file is a flat array of uint16 ids")


def resolve_data(path):
    """("tokens", train_path, val_path or None) for a prepared token file, or ("text", [files]).

    Raises an error that says what is accepted when ``path`` is none of them.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    if path.is_dir():
        if (path / "train.bin").is_file():
            return _prepared(path / "train.bin")
        files = sorted(p for p in path.rglob("*.txt") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(
                f"--data {path}: the folder holds no .txt files (nor a train.bin); pass a text file, "
                f"a folder of .txt files, or a uint16 token file (.bin)"
            )
        return ("text", files)
    if path.suffix == ".bin":
        return _prepared(path)
    return ("text", [path])


def _prepared(train):
    _check_token_file(train)
    val = train.with_name("val.bin") if train.name == "train.bin" else None
    if val is not None and val.is_file():
        _check_token_file(val)
        return ("tokens", train, val)
    return ("tokens", train, None)


def cache_key(files):
    """The cache folder's name: a digest of the files' paths, sizes and modification times."""
    h = hashlib.sha256(f"gpt2-bpe v{FORMAT_VERSION}".encode())
    for f in files:
        st = f.stat()
        h.update(f"\0{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    stem = files[0].parent.name if len(files) > 1 else files[0].stem
    return f"{stem}-{h.hexdigest()[:16]}"


def default_cache_dir():
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gpt2-kernels" / "tokens"


# ---- tokenizing --------------------------------------------------------------------------
def _cut_points(path, piece_bytes):
    """(start, end) byte ranges that cut a file into pieces of about ``piece_bytes``, each cut
    just after a line break whose neighbours are both printable ASCII (not whitespace).

    Such a "\\n" is a pre-token of its own in GPT-2's pattern, whether or not the text ends
    after it, and no pre-token reaches across it, so encoding the pieces one by one gives the
    same ids as encoding the whole file. (Cutting after "  \\n", for instance, would not: at the
    end of a piece the pattern takes "  \\n" as one pre-token, in the whole text "  " and "\\n".)
    A byte 0x0A is never inside a UTF-8 multi-byte character, so the pieces decode on their own.
    """
    size = path.stat().st_size
    cuts, pos, span = [0], piece_bytes, 1 << 16
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            window = f.read(span)
            i = window.find(b"\n", 1)
            while i != -1 and not (i + 1 < len(window) and _printable(window[i - 1]) and _printable(window[i + 1])):
                i = window.find(b"\n", i + 1)
            if i == -1:  # no safe line break here: look further on (the piece grows)
                if len(window) < span:
                    break
                pos += len(window) - 2
                continue
            cuts.append(pos + i + 1)
            pos = cuts[-1] + piece_bytes
    return list(zip(cuts, cuts[1:] + [size]))


def _printable(byte):
    return 0x20 < byte < 0x7F


def _read_text(path, start=0, end=None):
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(None if end is None else end - start)
    try:
        # utf-8-sig drops a byte-order mark at the start of a file
        return raw.decode("utf-8-sig" if start == 0 else "utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {start + e.start}: {e.reason}); --data takes UTF-8 text "
            f"files or a uint16 token file (.bin)"
        ) from None


def _encode_piece(job):
    """(path, start, end) -> the piece's ids as uint16. Runs in the pool's processes."""
    from .tokenizer import encoding

    path, start, end = job
    return np.asarray(encoding().encode_ordinary(_read_text(path, start, end)), dtype=TOKEN_DTYPE)


def tokenize(files, out_path, *, parallel_min_bytes=PARALLEL_MIN_BYTES, piece_bytes=PIECE_BYTES, workers=None):
    """Encode ``files`` into ``out_path`` (uint16 ids, <|endoftext|> after each file); returns
    (number of tokens, number of characters' bytes, largest id, SHA-256 of the file written)."""
    from .tokenizer import EOT_ID

    total_bytes = sum(f.stat().st_size for f in files)
    jobs, ends = [], []  # ends[i]: the job after which file i is complete
    parallel = total_bytes >= parallel_min_bytes
    for f in files:
        jobs += [(f, a, b) for a, b in (_cut_points(f, piece_bytes) if parallel else [(0, f.stat().st_size)])]
        ends.append(len(jobs) - 1)
    n_tokens, max_id, eot = 0, -1, np.array([EOT_ID], dtype=TOKEN_DTYPE)
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:

        def put(raw):
            out.write(raw)
            digest.update(raw)

        def write(i, ids):
            nonlocal n_tokens, max_id
            if len(ids):
                max_id = max(max_id, int(ids.max()))
            put(ids.tobytes())
            n_tokens += len(ids)
            if i in ends:
                put(eot.tobytes())
                n_tokens, max_id = n_tokens + 1, max(max_id, EOT_ID)

        if parallel and len(jobs) > 1:
            n = min(workers or os.cpu_count() or 1, len(jobs))
            # fork where there is one: the children inherit the loaded BPE tables and need no
            # `if __name__ == "__main__"` guard in the caller's script. They run no torch code,
            # so torch's thread pools in the parent do not matter.
            method = "fork" if "fork" in get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(n, mp_context=get_context(method)) as pool:
                for i, ids in enumerate(pool.map(_encode_piece, jobs)):  # in order
                    write(i, ids)
        else:
            for i, job in enumerate(jobs):
                write(i, _encode_piece(job))
    return n_tokens, total_bytes, max_id, digest.hexdigest()


def _file_sha256(path, chunk=1 << 24):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_damage(folder):
    """Why a cache folder's tokens cannot be trusted (a cut-short or changed tokens.bin, an
    unreadable meta.json), or None when tokens.bin is what meta.json recorded: its size and its
    SHA-256 (one read of the file, ~1 s a GB)."""
    try:
        meta = json.loads((folder / META).read_text())
        n_tokens, want = int(meta["n_tokens"]), meta["sha256"]
    except (OSError, ValueError, TypeError, KeyError) as e:
        return f"{META} unreadable or without a digest: {type(e).__name__}: {e}"
    size = (folder / TOKENS).stat().st_size if (folder / TOKENS).is_file() else None
    if size != n_tokens * np.dtype(TOKEN_DTYPE).itemsize:
        return f"{TOKENS} holds {size} bytes, {META} says {n_tokens:,} tokens"
    if _file_sha256(folder / TOKENS) != want:
        return f"{TOKENS} does not match the SHA-256 in {META}"
    return None


def cached_tokens(files, cache_dir, *, create=True, **tokenize_kwargs):
    """The cache folder holding ``files``' tokens, tokenizing them first if needed.

    With create=False (every process but the first of a distributed run) the folder must exist.
    Returns (folder, note) where note says whether the tokenizer ran.
    """
    cache_dir = Path(cache_dir).expanduser()
    folder = cache_dir / cache_key(files)
    damaged = None
    if (folder / META).is_file():
        damaged = cache_damage(folder)
        if damaged is None:
            return folder, "reused"
        if not create:
            raise ValueError(f"the token cache {folder} is damaged ({damaged}); the first process should "
                             f"have tokenized the text again")
        # A cache is derived data: set the damaged one aside (one rename) and make it again.
        aside = cache_dir / f".{folder.name}.{os.getpid()}.damaged"
        folder.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    if not create:
        raise FileNotFoundError(f"the token cache {folder} was not written (the first process should have)")
    n_bytes = sum(f.stat().st_size for f in files)
    if n_bytes == 0 or (n_bytes < 1 << 20 and not any(_read_text(f).strip() for f in files)):
        where = files[0] if len(files) == 1 else f"{files[0].parent} ({len(files)} .txt files)"
        raise ValueError(f"--data {where} holds no text")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        n_tokens, n_bytes, max_id, sha256 = tokenize(files, tmp / TOKENS, **tokenize_kwargs)
        seconds = time.perf_counter() - t0
        meta = {
            "format": FORMAT_VERSION, "n_tokens": n_tokens, "max_id": max_id, "bytes": n_bytes,
            "sha256": sha256, "files": [str(f.resolve()) for f in files], "seconds": round(seconds, 3),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(folder)  # atomic: a folder with meta.json is always complete
        except OSError:  # another run wrote it meanwhile
            if not (folder / META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = f"tokenized in {seconds:.1f} s"
    return folder, note if damaged is None else f"tokenized again: the cache was damaged ({damaged}); {note}"


def load_tokens(path, cache_dir=None, *, val_fraction=0.1, create=True, **tokenize_kwargs):
    """The train and validation tokens of ``--data path`` as a TokenData (see the module doc)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    kind, *rest = resolve_data(path)
    if kind == "text":
        files = rest[0]
        folder, note = cached_tokens(files, cache_dir or default_cache_dir(), create=create, **tokenize_kwargs)
        meta = json.loads((folder / META).read_text())
        tokens = np.memmap(folder / TOKENS, dtype=TOKEN_DTYPE, mode="r")
        n_val = int(len(tokens) * val_fraction)
        source = f"{path} ({len(files)} file{'s' * (len(files) > 1)}, {meta['bytes']:,} bytes; cache {folder})"
        return TokenData(tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:], meta["max_id"], source, note)
    train_path, val_path = rest
    train = np.memmap(train_path, dtype=TOKEN_DTYPE, mode="r")
    if val_path is not None:
        val = np.memmap(val_path, dtype=TOKEN_DTYPE, mode="r")
        source = f"{train_path} and {val_path.name}"
    else:
        n_val = int(len(train) * val_fraction)
        train, val = train[: len(train) - n_val], train[len(train) - n_val:]
        source = str(train_path)
    max_id = max(_max(train), _max(val))
    return TokenData(train, val, max_id, source)


def _max(tokens, chunk=1 << 26):
    return max((int(tokens[i : i + chunk].max()) for i in range(0, len(tokens), chunk)), default=-1)


# ---- batches -----------------------------------------------------------------------------
def window_starts(seed, split, index, n, n_tokens, seq_len):
    """``n`` window starts in [0, n_tokens - seq_len), drawn from a generator seeded by
    (seed, split, *index) only: the same numbers in every process and after a resume."""
    high = n_tokens - seq_len  # the targets of a window reach ids[s + seq_len]
    if high < 1:
        raise ValueError(f"{n_tokens:,} tokens cannot hold a window of {seq_len} + 1")
    return np.random.default_rng([seed, split, *index]).integers(0, high, size=n)


def get_batch(tokens, starts, seq_len, device="cpu"):
    """Inputs and targets, (B, T) int64 each, for the windows that begin at ``starts``."""
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    xy = torch.from_numpy(rows)
    if torch.device(device).type == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    return xy[:, :-1], xy[:, 1:]
