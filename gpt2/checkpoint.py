"""Hugging Face GPT-2 checkpoints in and out: ``load_pretrained`` and ``save_pretrained``.

    model = GPT2.from_pretrained("path/to/dir")          # config.json + model.safetensors
    model = GPT2.from_pretrained("gpt2-medium")           # from the Hub, when online
    model.save_pretrained("out/")                          # readable by transformers too

The model calls this module (``GPT2.from_pretrained``, ``GPT2.save_pretrained``); this module does
not import the model, so the two do not import each other.

A checkpoint is a directory holding Hugging Face's ``config.json`` and the weights, as
``model.safetensors`` (preferred: a plain tensor format) or ``pytorch_model.bin`` (a pickle, read
with ``torch.load(weights_only=True)``, which only rebuilds tensors and refuses anything else, so
loading never runs code from the file). Sharded checkpoints (``*.index.json``) work too.

The model's parameter names are Hugging Face's, so loading is copying, except that:

- HF writes the four linear layers of a block (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
  ``mlp.c_proj``) as ``Conv1D`` modules, whose weight is stored (in, out), the transpose of
  ``nn.Linear``'s (out, in); the loader transposes them.
- ``GPT2LMHeadModel`` prefixes names with ``transformer.``, ``GPT2Model`` does not; both load.
- ``lm_head.weight`` is the token embedding (tied) and is often not stored; when it is, it must
  equal ``transformer.wte.weight``, since this model cannot untie them.
- Older files carry each layer's causal mask as buffers (``h.N.attn.bias``, ``h.N.attn.masked_bias``);
  the model builds its mask on the fly, so these are skipped.

Anything else is an error that names the tensors: missing ones, extra ones, and wrong shapes
(with the expected and the found shape), all listed at once.
"""

import dataclasses
import json
import os
import pickle
import re
from pathlib import Path

import torch

from .config import SIZES, GPT2Config

# The published checkpoints live under OpenAI's organisation on the Hub; the bare names
# ("gpt2") are the ones everyone types.
HUB_REPOS = {name: f"openai-community/{name}" for name in SIZES}
HUB_REPOS.update({repo: repo for repo in list(HUB_REPOS.values())})

# HF's Conv1D layers: stored (in_features, out_features), transposed relative to nn.Linear.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers that older transformers versions saved in every layer.
IGNORED = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")

SAFETENSORS, PICKLE = "model.safetensors", "pytorch_model.bin"
CONFIG = "config.json"
HUB_FILES = [CONFIG, SAFETENSORS, f"{SAFETENSORS}.index.json", "model-*-of-*.safetensors"]  # single or sharded
# GELU's tanh approximation under HF's two names; "gelu" (the erf form) is a different function.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


# ---- config ------------------------------------------------------------------------------
def config_from_hf(hf):
    """A GPT2Config from the dict in an HF ``config.json``; refuses options this model lacks."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"config.json is for model_type {model_type!r}; only 'gpt2' checkpoints load")
    hf = {"n_positions": hf.get("n_ctx"), **hf}  # the oldest configs name the context length n_ctx only
    missing = [k for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions") if hf.get(k) is None]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)}")
    # Options that change the computation: loading with them ignored would give wrong logits.
    unsupported = {
        "activation_function": (hf.get("activation_function", "gelu_new") in TANH_GELU, "gelu_new"),
        "n_inner": (hf.get("n_inner") in (None, 4 * hf["n_embd"]), f"null or {4 * hf['n_embd']}"),
        "scale_attn_weights": (hf.get("scale_attn_weights", True) is True, "true"),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False) is False, "false"),
        "add_cross_attention": (hf.get("add_cross_attention", False) is False, "false"),
        "tie_word_embeddings": (hf.get("tie_word_embeddings", True) is True, "true"),
    }
    bad = [f"{k}={hf.get(k)!r} (supported: {want})" for k, (ok, want) in unsupported.items() if not ok]
    if bad:
        raise ValueError(f"config.json asks for what this GPT-2 does not implement: {'; '.join(bad)}")
    # One dropout rate in this model for HF's three (embeddings, attention, residual); GPT-2
    # used 0.1 for all. It acts only in train mode; the loaded model is returned in eval mode.
    pdrops = [hf[k] for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop") if hf.get(k) is not None]
    return GPT2Config(
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        dropout=float(max(pdrops, default=0.0)),
    )


def config_to_hf(config):
    """The ``config.json`` dict transformers' GPT2LMHeadModel reads for this config."""
    eot = 50256 if config.vocab_size > 50256 else None  # <|endoftext|>, when the vocab has it
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_inner": None,
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "activation_function": "gelu_new",
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "resid_pdrop": config.dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }


# ---- finding and reading the files -------------------------------------------------------
def resolve(path_or_name):
    """The checkpoint directory: ``path_or_name`` itself, or a Hub snapshot of a GPT-2 name."""
    path, name = Path(path_or_name).expanduser(), str(path_or_name)
    # A directory named like a Hub model counts only if it is a checkpoint: in this repository's
    # root, "gpt2" is also the package's folder.
    if path.is_dir() and ((path / CONFIG).is_file() or name not in HUB_REPOS):
        return path
    if path.is_file():
        raise NotADirectoryError(
            f"{str(path)!r} is a file; pass the directory that holds {CONFIG} and {SAFETENSORS} (or {PICKLE})"
        )
    if name not in HUB_REPOS:
        raise FileNotFoundError(
            f"{name!r} is neither a checkpoint directory nor a GPT-2 name on the Hugging Face Hub "
            f"({', '.join(SIZES)})"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModuleNotFoundError(
            f"downloading {name!r} needs huggingface_hub (pip install huggingface_hub); or download "
            f"the checkpoint yourself and pass its directory"
        ) from e
    try:
        # Only what we read: the Hub repos also hold TF, Flax, ONNX and Rust copies of the weights.
        return Path(snapshot_download(HUB_REPOS[name], allow_patterns=HUB_FILES))
    except Exception as e:  # no network, offline mode, not cached, rate-limited, ...: one message
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        hint = (
            "HF_HUB_OFFLINE is set and the checkpoint is not in the local Hugging Face cache"
            if offline else "is the machine online?"
        )
        raise OSError(
            f"could not get {name!r} ({HUB_REPOS[name]}) from the Hugging Face Hub: {hint}. "
            f"Pass a local directory with {CONFIG} and {SAFETENSORS} instead. "
            f"({type(e).__name__}: {e})"
        ) from e


def _load_pickle(path):
    try:
        # weights_only: the unpickler rebuilds tensors and plain containers and refuses any other
        # class or function, so a malicious file cannot run code here.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} holds more than tensors, and torch.load(weights_only=True) refused it; loading "
            f"never runs code from a checkpoint. Convert it to {SAFETENSORS} from a trusted "
            f"environment. ({e})"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise ValueError(f"{path} is not a state dict (a dict of name -> tensor), got {type(sd).__name__}")
    return sd


def read_state_dict(directory):
    """{name: tensor} from the directory's weights file(s), on the CPU, as stored."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for fname, load in ((SAFETENSORS, load_file), (PICKLE, _load_pickle)):
        if (directory / fname).is_file():
            return dict(load(directory / fname))
        index = directory / f"{fname}.index.json"
        if index.is_file():  # a sharded checkpoint: the index maps each tensor to its file
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd = {}
            for shard in shards:
                sd.update(load(directory / shard))
            return sd
    raise FileNotFoundError(f"{directory} holds no weights: expected {SAFETENSORS} or {PICKLE}")


def _list(names, limit=8):
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---- HF names and layout -> this model ---------------------------------------------------
def convert_hf_state_dict(hf_sd, model):
    """Check an HF GPT-2 state dict against ``model`` (its names and shapes; a meta model does) and
    return it in the model's layout: ``transformer.*`` names, nn.Linear weights (out, in), no
    lm_head (it is tied)."""
    config = model.config
    expected = {}  # checkpoint name (with "transformer.") -> shape as HF stores it
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        transposed = name.endswith(CONV1D_WEIGHTS)
        expected[name] = tuple(p.shape[::-1]) if transposed else tuple(p.shape)

    sd, seen, unexpected, lm_head = {}, {}, [], None
    for key, t in hf_sd.items():
        if IGNORED.match(key):
            continue
        if key == "lm_head.weight":
            lm_head = t
            continue
        name = key if key.startswith("transformer.") else f"transformer.{key}"
        if name not in expected:
            unexpected.append(key)
        elif name in seen:
            raise ValueError(f"the checkpoint holds {name!r} twice: as {seen[name]!r} and as {key!r}")
        else:
            seen[name] = key
            sd[name] = t
    problems = []
    missing = [n for n in expected if n not in sd]
    if missing:
        problems.append(f"missing tensor(s): {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s): {_list(unexpected)}")
    for name, t in sd.items():
        if tuple(t.shape) != expected[name]:
            layout = " (HF Conv1D layout: (in, out))" if name.endswith(CONV1D_WEIGHTS) else ""
            problems.append(f"{seen[name]}: expected shape {expected[name]}{layout}, got {tuple(t.shape)}")
        elif not t.is_floating_point():
            problems.append(f"{seen[name]}: expected a floating-point tensor, got {t.dtype}")
    if problems:
        raise ValueError(
            f"checkpoint does not match the config (n_layer={config.n_layer}, n_head={config.n_head}, "
            f"n_embd={config.n_embd}, vocab_size={config.vocab_size}, n_positions={config.block_size}): "
            + "; ".join(problems)
        )
    if lm_head is not None:
        wte = sd["transformer.wte.weight"]
        if lm_head.shape != wte.shape or not torch.equal(lm_head, wte):
            raise ValueError(
                "lm_head.weight differs from transformer.wte.weight: an untied LM head, which this "
                "model (tied, as GPT-2) cannot hold"
            )
    return {n: (t.t() if n.endswith(CONV1D_WEIGHTS) else t) for n, t in sd.items()}


def load_pretrained(path_or_name, model_cls, *, dtype=torch.float32, device="cpu", dropout=None):
    """A ``model_cls`` (``gpt2.GPT2``, which calls this as ``GPT2.from_pretrained``) with a Hugging
    Face checkpoint's weights, in eval mode.

    path_or_name: a directory with config.json and model.safetensors / pytorch_model.bin, or one
        of "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl" (downloaded with huggingface_hub).
    dtype: the parameters' dtype, whatever the file stores (default float32).
    device: where the parameters go.
    dropout: overrides the checkpoint's dropout rate (used in train mode only).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    directory = resolve(path_or_name)
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG}")
    config = config_from_hf(json.loads(config_path.read_text()))
    if dropout is not None:
        config = dataclasses.replace(config, dropout=dropout)
    # Built on the meta device, the model allocates nothing and skips its random init (seconds
    # for gpt2-xl); load_state_dict(assign=True) then makes the checkpoint's tensors its parameters.
    model = model_cls.meta(config)
    sd = convert_hf_state_dict(read_state_dict(directory), model)
    sd = {n: t.to(device=device, dtype=dtype).contiguous() for n, t in sd.items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign replaced each Parameter: tie again
    leftover = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"{model_cls.__name__} has tensors no checkpoint fills: {_list(leftover)}")
    return model.eval()


# ---- this model -> HF files --------------------------------------------------------------
def save_pretrained(model, directory):
    """Write ``model`` as an HF GPT-2 checkpoint: config.json and model.safetensors, in HF's
    names and Conv1D layout, loadable by ``load_pretrained`` and by transformers'
    ``GPT2LMHeadModel.from_pretrained``. The tied LM head is not stored (HF does the same)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        t = t.detach().to("cpu")
        tensors[name] = (t.t() if name.endswith(CONV1D_WEIGHTS) else t).contiguous()
    (directory / CONFIG).write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
    # "format": "pt" is the metadata transformers checks to know the tensors are PyTorch's.
    save_file(tensors, str(directory / SAFETENSORS), metadata={"format": "pt"})
    return directory
