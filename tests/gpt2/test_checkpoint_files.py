"""Damaged checkpoint files, shard indexes and models that cannot be saved (issue 16): each is
an error that names the file, never a traceback from deep inside a parser, and never a model
that silently differs from the one that was saved."""

import json

import pytest
import torch
from safetensors.torch import save_file

from gpt2 import GPT2, GPT2Config

TINY = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=13, block_size=6)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = GPT2(TINY).eval()
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


@pytest.mark.parametrize("content", [b"", b"{", b"\x00\xff garbage", b"[1, 2]", b'"gpt2"'], ids=repr)
def test_bad_config_json_names_the_file(saved, content):
    _, d = saved
    (d / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match="config.json"):
        GPT2.from_pretrained(d)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "header_only"])
def test_bad_safetensors_names_the_file(saved, damage):
    _, d = saved
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x07" * 64,
                      "header_only": data[:8]}[damage])
    with pytest.raises(ValueError, match="model.safetensors"):
        GPT2.from_pretrained(d)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_bad_pickle_names_the_file(saved, damage):
    model, d = saved
    (d / "model.safetensors").unlink()
    path = d / "pytorch_model.bin"
    torch.save({k: v for k, v in model.state_dict().items()}, path)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\x07" * 64}[damage])
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        GPT2.from_pretrained(d)


def test_flipped_weight_byte_is_detected(saved):
    """A bit flip inside the tensor data still parses: only the checksum save_pretrained
    writes into the file's metadata catches it."""
    _, d = saved
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors.*checksum"):
        GPT2.from_pretrained(d)


def test_edited_config_value_is_detected(saved):
    _, d = saved
    cfg = json.loads((d / "config.json").read_text())
    cfg["layer_norm_epsilon"] = 1e-3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="checksum"):
        GPT2.from_pretrained(d)


def _hf_tensor(model, name):
    """A parameter as an HF checkpoint stores it (Conv1D weights transposed)."""
    t = model.state_dict()[name]
    return (t.t() if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else t).contiguous().clone()


def _write_shards(d, model, shards, weight_map):
    """Replace model.safetensors by shards {file: {name: offset added}} and an index."""
    (d / "model.safetensors").unlink()
    for fname, names in shards.items():
        save_file({n: _hf_tensor(model, n) + off for n, off in names.items()}, str(d / fname))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_shard_index_is_followed_exactly(saved):
    """The index puts every tensor in b.safetensors but the last, which is in z.safetensors;
    z (read after b) also holds wrong copies of three tensors indexed in b: they are not used."""
    model, d = saved
    names = sorted(n for n in model.state_dict() if n != "lm_head.weight")
    _write_shards(d, model, {"b.safetensors": dict.fromkeys(names[:-1], 0.0),
                             "z.safetensors": {names[-1]: 0.0, **dict.fromkeys(names[:3], 1.0)}},
                  {**dict.fromkeys(names[:-1], "b.safetensors"), names[-1]: "z.safetensors"})
    back = GPT2.from_pretrained(d)
    for name, t in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name


def test_tensor_missing_from_its_shard(saved):
    model, d = saved
    names = sorted(n for n in model.state_dict() if n != "lm_head.weight")
    _write_shards(d, model, {"a.safetensors": dict.fromkeys(names[1:], 0.0)}, dict.fromkeys(names, "a.safetensors"))
    with pytest.raises(ValueError, match=rf"a.safetensors lacks {names[0]}"):
        GPT2.from_pretrained(d)


@pytest.mark.parametrize("index, match", [
    ("", "index.json"), ("{", "index.json"), ('{"weight_map": 3}', "weight_map"),
    ('{"weight_map": {"wte.weight": "../outside.safetensors"}}', "outside"),
    ('{"weight_map": {"wte.weight": "missing.safetensors"}}', "missing.safetensors"),
])
def test_bad_shard_index_names_the_file(saved, index, match):
    _, d = saved
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(index)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        GPT2.from_pretrained(d)


def test_untied_head_is_not_saved(tmp_path):
    model = GPT2(TINY)
    model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone() + 1)
    with pytest.raises(ValueError, match="untied"):
        model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()
    # an untied head that still equals the embedding reloads identically, so it saves
    model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
    model.save_pretrained(tmp_path / "y")
    back = GPT2.from_pretrained(tmp_path / "y")
    assert torch.equal(back.lm_head.weight, model.lm_head.weight)
