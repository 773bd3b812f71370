"""Loading Hugging Face GPT-2 checkpoints, checked against transformers itself.

A small randomly initialised ``GPT2LMHeadModel`` (fresh every run, with every parameter
perturbed so that LayerNorm weights are not all 1 and biases not all 0) is written to disk in
the formats found in the wild, and loading it must reproduce transformers' logits and greedy
generations. Everything is offline.
"""

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub / transformers when imported
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from gpt2 import GPT2, GPT2Config  # noqa: E402
from gpt2.checkpoint import save_pretrained  # noqa: E402

from .test_generate import assert_same_greedy  # noqa: E402

transformers = pytest.importorskip("transformers")

CPU_ATTENTION = ("torch", "sdpa")
VOCAB, N_POS, N_EMBD = 503, 64, 32  # an odd vocab, to catch a transposed embedding
VARIANTS = ("safetensors", "bin", "gpt2model", "sharded")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_model():
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=N_EMBD, n_positions=N_POS, vocab_size=VOCAB,
        bos_token_id=None, eos_token_id=None,  # no early stop in generate
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def write_checkpoint(directory, hf_config, tensors, fmt="safetensors"):
    """A checkpoint directory: config.json (a dict) and the tensors as safetensors or a pickle."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    if fmt == "safetensors":
        # safetensors refuses tensors that share memory, which the tests' edits create
        tensors = {k: v.clone().contiguous() for k, v in tensors.items()}
        save_file(tensors, str(directory / "model.safetensors"), {"format": "pt"})
    else:
        torch.save(tensors, directory / "pytorch_model.bin")
    return directory


@pytest.fixture(scope="module")
def hf_sd(hf_model):
    """The HF state dict as transformers saves it: lm_head.weight left out (tied)."""
    return {k: v.detach().clone() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}


@pytest.fixture(scope="module")
def hf_config(hf_model):
    return hf_model.config.to_dict()


@pytest.fixture(scope="module")
def checkpoints(hf_model, hf_sd, hf_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    dirs = {}
    # 1. what save_pretrained writes today: config.json + model.safetensors
    hf_model.save_pretrained(root / "safetensors")
    dirs["safetensors"] = root / "safetensors"
    # 2. an older pytorch_model.bin: a pickled state dict with the tied lm_head and each layer's
    #    causal-mask buffers (transformers 5 no longer writes .bin, so it is written as they were)
    sd = dict(hf_model.state_dict())
    for i in range(2):
        sd[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, N_POS, N_POS, dtype=torch.bool).tril()
        sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    dirs["bin"] = write_checkpoint(root / "bin", hf_config, sd, fmt="bin")
    # 3. a GPT2Model checkpoint: no "transformer." prefix, no LM head
    dirs["gpt2model"] = write_checkpoint(
        root / "gpt2model", hf_config, {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    )
    # 4. sharded safetensors with an index
    d = root / "sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(hf_config))
    names = sorted(hf_sd)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: hf_sd[n] for n in part}, str(d / fname), {"format": "pt"})
        weight_map.update({n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    dirs["sharded"] = d
    return dirs


def hf_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(idx).logits


@pytest.mark.parametrize("attention", CPU_ATTENTION)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant, attention, checkpoints, hf_model):
    model = GPT2.from_pretrained(checkpoints[variant]).set_kernels(attention=attention)
    for shape in ((3, 13), (1, N_POS), (2, 1)):
        idx = torch.randint(0, VOCAB, shape)
        with torch.no_grad():
            ours = model(idx)
        want = hf_logits(hf_model, idx)
        assert ours.dtype == torch.float32 and ours.shape == want.shape
        assert (ours - want).abs().max().item() <= 1e-4, (variant, shape)


def test_loaded_model(checkpoints, hf_model):
    model = GPT2.from_pretrained(checkpoints["safetensors"])
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.block_size) == (2, 2, N_EMBD, VOCAB, N_POS)
    assert cfg.dropout == 0.1 and not model.training  # HF's pdrop, acting only after .train()
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    unique_hf = {p.data_ptr(): p.numel() for p in hf_model.parameters()}
    assert model.num_parameters() == sum(unique_hf.values())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert GPT2.from_pretrained(checkpoints["safetensors"], dropout=0.0).config.dropout == 0.0


@pytest.mark.parametrize("attention", CPU_ATTENTION)
def test_greedy_generation_matches_transformers(attention, checkpoints, hf_model):
    model = GPT2.from_pretrained(checkpoints["safetensors"]).set_kernels(attention=attention)
    judge = GPT2.from_pretrained(checkpoints["safetensors"])  # eager attention, for near-ties
    B, T, n = 3, 6, 40
    idx = torch.randint(0, VOCAB, (B, T))
    with torch.no_grad():
        want = hf_model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False)
    assert want.shape == (B, T + n)
    for use_cache in (True, False):
        got = model.generate(idx, n, temperature=0, use_cache=use_cache)
        assert_same_greedy(judge, T, got, want)


def test_dtype_and_device(checkpoints, hf_model):
    idx = torch.randint(0, VOCAB, (2, 9))
    want = hf_logits(hf_model, idx)
    m64 = GPT2.from_pretrained(checkpoints["bin"], dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    with torch.no_grad():
        assert (m64(idx) - want.double()).abs().max().item() <= 1e-4
    bf16 = GPT2.from_pretrained(checkpoints["safetensors"], dtype=torch.bfloat16, device=torch.device("cpu"))
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert bf16.lm_head.weight is bf16.transformer.wte.weight
    with torch.no_grad():
        got = bf16(idx).float()
    # bf16 keeps 8 bits of mantissa: errors of a few 1e-2 on logits of size ~1
    assert (got - want).abs().max().item() <= 0.1 * want.abs().max().item()
    with pytest.raises(TypeError, match="floating torch.dtype"):
        GPT2.from_pretrained(checkpoints["safetensors"], dtype=torch.int32)


def test_save_pretrained_round_trip(tmp_path):
    """Our random model -> HF files -> transformers gives our logits; -> our loader gives our tensors."""
    cfg = GPT2Config(n_layer=3, n_head=3, n_embd=24, vocab_size=211, block_size=29)
    ours = GPT2(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_pretrained(ours, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 211, (2, 29))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() <= 1e-4
    back = GPT2.from_pretrained(tmp_path)
    assert back.config == cfg
    for (name, a), (name_b, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert name == name_b and torch.equal(a, b), name


# ---- errors ------------------------------------------------------------------------------
def load_modified(tmp_path, hf_config, hf_sd, change, fmt="safetensors"):
    sd = dict(hf_sd)
    change(sd)
    return GPT2.from_pretrained(write_checkpoint(tmp_path / "bad", hf_config, sd, fmt))


def test_missing_tensor(tmp_path, hf_config, hf_sd):
    def drop(sd):
        del sd["transformer.h.1.mlp.c_fc.bias"]
        del sd["transformer.ln_f.weight"]

    with pytest.raises(ValueError, match="missing tensor") as e:
        load_modified(tmp_path, hf_config, hf_sd, drop)
    assert "transformer.h.1.mlp.c_fc.bias" in str(e.value) and "transformer.ln_f.weight" in str(e.value)


def test_wrong_shape(tmp_path, hf_config, hf_sd):
    def reshape(sd):
        sd["transformer.h.0.attn.c_attn.weight"] = sd["transformer.h.0.attn.c_attn.weight"].t()  # nn.Linear layout
        sd["transformer.wpe.weight"] = torch.zeros(N_POS + 1, N_EMBD)

    with pytest.raises(ValueError) as e:
        load_modified(tmp_path, hf_config, hf_sd, reshape)
    msg = str(e.value)
    assert f"transformer.h.0.attn.c_attn.weight: expected shape ({N_EMBD}, {3 * N_EMBD})" in msg
    assert f"got ({3 * N_EMBD}, {N_EMBD})" in msg and "Conv1D" in msg
    assert f"transformer.wpe.weight: expected shape ({N_POS}, {N_EMBD})" in msg
    assert f"got ({N_POS + 1}, {N_EMBD})" in msg


def test_unexpected_tensor(tmp_path, hf_config, hf_sd):
    def add(sd):
        sd["transformer.h.0.attn.q_norm.weight"] = torch.ones(N_EMBD)
        sd["score.weight"] = torch.ones(2, N_EMBD)

    with pytest.raises(ValueError, match="unexpected tensor") as e:
        load_modified(tmp_path, hf_config, hf_sd, add)
    assert "transformer.h.0.attn.q_norm.weight" in str(e.value) and "score.weight" in str(e.value)


def test_extra_layer_is_unexpected(tmp_path, hf_config, hf_sd):
    def add_layer(sd):
        for k in list(sd):
            if k.startswith("transformer.h.1."):
                sd[k.replace("h.1.", "h.2.")] = sd[k]

    with pytest.raises(ValueError, match=r"unexpected tensor\(s\): transformer\.h\.2\."):
        load_modified(tmp_path, hf_config, hf_sd, add_layer)


def test_untied_lm_head(tmp_path, hf_config, hf_sd):
    def untie(sd):
        sd["lm_head.weight"] = sd["transformer.wte.weight"] + 1

    with pytest.raises(ValueError, match="untied"):
        load_modified(tmp_path, hf_config, hf_sd, untie)


def test_name_twice(tmp_path, hf_config, hf_sd):
    def dup(sd):
        sd["ln_f.bias"] = sd["transformer.ln_f.bias"]

    with pytest.raises(ValueError, match="twice"):
        load_modified(tmp_path, hf_config, hf_sd, dup)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(activation_function="gelu"), "activation_function='gelu'"),
        (dict(n_inner=7), "n_inner=7"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings"),
        (dict(model_type="llama"), "model_type 'llama'"),
        (dict(n_head=3), "divisible by n_head"),
    ],
)
def test_unsupported_config(tmp_path, hf_config, hf_sd, change, match):
    with pytest.raises(ValueError, match=match):
        GPT2.from_pretrained(write_checkpoint(tmp_path / "c", {**hf_config, **change}, hf_sd))


def test_config_shape_mismatch_names_tensors(tmp_path, hf_config, hf_sd):
    want = r"n_embd=64.*transformer\.wte\.weight: expected shape \(503, 64\), got \(503, 32\)"
    with pytest.raises(ValueError, match=want):
        GPT2.from_pretrained(write_checkpoint(tmp_path / "c", {**hf_config, "n_embd": 64}, hf_sd))


def test_missing_files(tmp_path, hf_config, hf_sd):
    d = write_checkpoint(tmp_path / "c", hf_config, hf_sd)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        GPT2.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT2.from_pretrained(d)


class Payload:
    """Unpickling this would create a file: the kind of code a weights file must never run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_with_code_is_refused(tmp_path, hf_config, hf_sd):
    marker = tmp_path / "pwned"
    sd = {**hf_sd, "transformer.extra": Payload(str(marker))}
    d = write_checkpoint(tmp_path / "evil", hf_config, sd, fmt="bin")
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only=True"):
        GPT2.from_pretrained(d)
    assert not marker.exists()


def test_pickle_that_is_not_a_state_dict(tmp_path, hf_config):
    d = write_checkpoint(tmp_path / "list", hf_config, [torch.zeros(3)], fmt="bin")
    with pytest.raises(ValueError, match="not a state dict"):
        GPT2.from_pretrained(d)


def test_unknown_name_and_file_path(tmp_path, checkpoints):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a GPT-2 name.*gpt2-medium"):
        GPT2.from_pretrained("gpt5-ultra")
    with pytest.raises(FileNotFoundError, match="neither"):
        GPT2.from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(NotADirectoryError, match="is a file"):
        GPT2.from_pretrained(checkpoints["safetensors"] / "model.safetensors")


def test_hub_download_failure_is_a_clear_error(monkeypatch):
    """The real offline case runs end to end in tests/gpt2/test_cli.py (a fresh process, since
    huggingface_hub reads HF_HUB_OFFLINE when imported); here, any failure of the download."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def fail(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise LocalEntryNotFoundError("outgoing traffic has been disabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"could not get 'gpt2-large' \(openai-community/gpt2-large\).*"
                       r"HF_HUB_OFFLINE is set.*local directory.*LocalEntryNotFoundError") as e:
        GPT2.from_pretrained("gpt2-large")
    assert len(calls) == 1 and calls[0][0] == "openai-community/gpt2-large"
    assert {"config.json", "model.safetensors"} <= set(calls[0][1]["allow_patterns"])
    assert isinstance(e.value.__cause__, LocalEntryNotFoundError)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(OSError, match="is the machine online"):
        GPT2.from_pretrained("openai-community/gpt2")


def test_hub_name_is_not_shadowed_by_a_folder(monkeypatch, tmp_path):
    """In the repository root, ./gpt2 is the package: a folder without config.json named like a
    Hub model is not taken for a checkpoint."""
    (tmp_path / "gpt2").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModuleNotFoundError, match="huggingface_hub"):
        GPT2.from_pretrained("gpt2")


def test_hub_name_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match="pip install huggingface_hub"):
        GPT2.from_pretrained("gpt2")
