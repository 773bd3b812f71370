"""gpt2.hf.apply_kernels: our kernels inside Hugging Face's GPT2LMHeadModel give HF's own logits,
loss, gradients and generated tokens (float32, tiny random models built offline, Triton's
interpreter on a CPU); what the kernel lacks falls back to HF's path, counted."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.conftest import ON_GPU, ROOT, run_without_interpreter
from tests.tolerances import tol

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("gpt2.hf")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gpt2 import GPT2  # noqa: E402
from gpt2 import GPT2Config as OurConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# Head size 16 (in the kernel's set); pad/eos 0 so generate needs no tokenizer.
CFG = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=40,
           bos_token_id=0, eos_token_id=0, pad_token_id=0)
NO_DROPOUT = dict(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
B, T = 2, 11
TOL = tol("model", torch.float32) if not ON_GPU else {"atol": 5e-3, "rtol": 5e-3}  # tf32 on a GPU


def hf_model(device, **overrides):
    torch.manual_seed(torch.seed() % 2**31)
    return GPT2LMHeadModel(GPT2Config(**{**CFG, **NO_DROPOUT, **overrides})).to(device).eval()


def ids(device, b=B, t=T):
    return torch.randint(1, CFG["vocab_size"], (b, t), device=device)


def run(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x, labels=x)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


class OpRecorder(TorchDispatchMode):
    """Names every op the dispatcher runs; this project's custom ops are gpt2_kernels::*."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.fixture(autouse=True)
def fresh_counter():
    hf.FALLBACKS.clear()


def test_logits_loss_and_every_gradient_match_hf(device):
    model = hf_model(device)
    x = ids(device)
    ref = run(model, x)
    got = run(hf.apply_kernels(model, "triton"), x)
    assert hf.kernels_of(model) == {"attention": "triton", "layernorm": "triton", "gelu": "triton"}
    assert model.config._attn_implementation == hf.ATTN_IMPLEMENTATION
    torch.testing.assert_close(got[0], ref[0], **TOL)
    torch.testing.assert_close(got[1], ref[1], **TOL)
    assert ref[2].keys() == got[2].keys()
    for name, g in ref[2].items():
        torch.testing.assert_close(got[2][name], g, **TOL, msg=lambda m: f"grad of {name}: {m}")
    assert not hf.FALLBACKS  # a causal batch without padding runs on the kernel throughout


def test_patched_forward_and_backward_run_our_ops(device):
    model = hf.apply_kernels(hf_model(device), "triton")
    with OpRecorder() as rec:
        model(ids(device, 1, 5), labels=ids(device, 1, 5)).loss.backward()
    ours = {op.split("::")[1] for op in rec.ops if op.startswith("gpt2_kernels::")}
    assert {"attention_fwd", "attention_bwd", "layer_norm_fwd", "layer_norm_bwd", "gelu_fwd", "gelu_bias_bwd"} <= ours
    assert "aten::native_layer_norm" not in rec.ops and "aten::tanh" not in rec.ops  # HF's own ops are gone
    with OpRecorder() as rec:
        hf.apply_kernels(model, "torch")(ids(device, 1, 5))
    assert not any(op.startswith("gpt2_kernels::") for op in rec.ops)


def test_restore_state_dict_and_save_pretrained_untouched(device, tmp_path):
    model = hf_model(device)
    x = ids(device)
    before = model(x).logits
    sd = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "before")
    hf.apply_kernels(model, attention="triton", layernorm="triton")
    hf.apply_kernels(model, gelu="triton")  # keywords add to what is set
    assert hf.kernels_of(model) == {"attention": "triton", "layernorm": "triton", "gelu": "triton"}
    after = model.state_dict()
    assert list(after) == list(sd)
    for k, (ptr, t) in sd.items():  # the same tensors, not copies, with the same values
        assert after[k].data_ptr() == ptr and torch.equal(after[k], t), k
    model.save_pretrained(tmp_path / "after")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "before" / name).read_bytes() == (tmp_path / "after" / name).read_bytes(), name
    assert hf.apply_kernels(model, "torch") is model
    assert model.config._attn_implementation == "sdpa"  # what it had
    assert torch.equal(model(x).logits, before)


@pytest.mark.parametrize("case", ["batch1", "left-padded", "static-cache"])
def test_greedy_generate_token_for_token(device, case):
    model = hf_model(device)
    padded = case == "left-padded"
    if padded:  # three prompts of 4, 7 and 9 tokens, padded on the left to 9
        x = ids(device, 3, 9)
        mask = torch.ones_like(x)
        mask[0, :5], mask[1, :2] = 0, 0
        x = x.masked_fill(mask == 0, 0)
    else:
        x, mask = ids(device, 1, 6), None
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False)
    if case == "static-cache":  # prefill sees all the cache's slots (the kernel takes the first Sq)
        kw["cache_implementation"] = "static"
    ref = model.generate(x, **kw)
    got = hf.apply_kernels(model, "triton").generate(x, **kw)
    assert torch.equal(got, ref)
    # Padding masks fall back to HF's sdpa in every layer at every step; without padding, none;
    # a static cache's decode steps come with a mask (its empty slots), its prefill without.
    want = {"batch1": {}, "left-padded": {"attention_mask": CFG["n_layer"] * 5},
            "static-cache": {"attention_mask": CFG["n_layer"] * 4}}[case]
    assert dict(hf.FALLBACKS) == want


def test_output_attentions_falls_back_to_eager_weights(device):
    model = hf_model(device)
    x = ids(device)
    model.set_attn_implementation("eager")  # HF's only path that forms the weights
    ref = model(x, output_attentions=True)
    model.set_attn_implementation("sdpa")
    got = hf.apply_kernels(model, "triton")(x, output_attentions=True)
    assert len(got.attentions) == CFG["n_layer"]
    for a, r in zip(got.attentions, ref.attentions):
        torch.testing.assert_close(a, r, **TOL)
    torch.testing.assert_close(got.logits, ref.logits, **TOL)
    assert hf.FALLBACKS == {"output_attentions": CFG["n_layer"]}


def test_training_with_dropout_falls_back_to_hf_sdpa(device):
    # Trainer-style: model.train() with attn_pdrop > 0. The attention hands back to HF's sdpa
    # (same dropout, same random stream), so with HF's LayerNorm and GELU it is HF bit for bit.
    model = hf_model(device, attn_pdrop=0.1, resid_pdrop=0.1).train()
    x = ids(device)
    torch.manual_seed(1)
    ref = run(model, x)
    hf.apply_kernels(model, attention="triton")
    torch.manual_seed(1)
    got = run(model, x)
    assert torch.equal(got[1], ref[1])
    assert hf.FALLBACKS == {"dropout": CFG["n_layer"]}


def test_cross_attention_runs_the_non_causal_kernel_and_falls_back_on_padding(device):
    model = hf_model(device, add_cross_attention=True)
    x, enc = ids(device), torch.randn(B, 7, CFG["n_embd"], device=device)
    enc_mask = torch.ones(B, 7, dtype=torch.long, device=device)
    enc_mask[0, 5:] = 0
    ref = [model(x, encoder_hidden_states=enc).logits, model(x, encoder_hidden_states=enc, encoder_attention_mask=enc_mask).logits]
    hf.apply_kernels(model, "triton")
    with OpRecorder() as rec:
        got = model(x, encoder_hidden_states=enc).logits
    assert "gpt2_kernels::attention_fwd" in rec.ops and not hf.FALLBACKS
    torch.testing.assert_close(got, ref[0], **TOL)
    torch.testing.assert_close(model(x, encoder_hidden_states=enc, encoder_attention_mask=enc_mask).logits, ref[1], **TOL)
    assert hf.FALLBACKS == {"attention_mask": CFG["n_layer"]}  # the padded encoder, per layer


def test_torch_compile_traces_the_patched_model(device):
    model = hf.apply_kernels(hf_model(device, n_layer=1), "triton")  # tracing HF's forward is the cost
    x = ids(device, 1, 7)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x).logits, model(x).logits, **TOL)


def test_our_checkpoint_loaded_by_hf_and_patched_equals_our_model(device, tmp_path):
    torch.manual_seed(torch.seed() % 2**31)
    ours = GPT2(OurConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=40)).to(device).eval()
    ours.save_pretrained(tmp_path)
    x = ids(device)
    want = ours.set_kernels("triton")(x)
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path).to(device).eval()
    torch.testing.assert_close(hf.apply_kernels(theirs, "triton")(x).logits, want, **TOL)
    # The attention alone by name at load time, then the rest by apply_kernels.
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=hf.ATTN_IMPLEMENTATION).to(device).eval()
    assert hf.kernels_of(loaded)["attention"] == "triton"
    torch.testing.assert_close(hf.apply_kernels(loaded, layernorm="triton", gelu="triton")(x).logits, want, **TOL)
    assert hf.apply_kernels(loaded, "torch").config._attn_implementation == "sdpa"
    assert "gpt2_triton" not in json.dumps(theirs.config.to_dict())  # nothing of ours is saved


def test_refused_requests_change_nothing(device):
    model = hf_model(device)
    for bad, match in [(dict(all="cuda"), "unknown"), (dict(attention="flash"), "attention")]:
        with pytest.raises(ValueError, match=match):
            hf.apply_kernels(model, **bad)
    with pytest.raises(ValueError, match="head size 24"):
        hf.apply_kernels(hf_model(device, n_embd=48), "triton")
    erf = hf_model(device, activation_function="gelu")
    with pytest.raises(ValueError, match="tanh GELU"):
        hf.apply_kernels(erf, "triton")
    assert erf.config._attn_implementation == "sdpa" and "forward" not in erf.transformer.ln_f.__dict__
    hf.apply_kernels(erf, attention="triton", layernorm="triton")  # the rest is allowed
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        hf.apply_kernels(torch.nn.Linear(2, 2), "triton")


def test_import_gpt2_does_not_import_transformers():
    p = run_without_interpreter("import sys, gpt2; print('transformers' in sys.modules)")
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


def test_transformers_does_not_take_our_kernels_package_for_its_own(device, monkeypatch):
    # transformers finds Hugging Face's `kernels` by its import name, then asks the installed
    # metadata for a version in its supported range. Ours is importable here (this process has
    # imported it); installed, the name maps to our distribution (gpt2-kernels 0.1.0, out of the
    # range); from a source checkout no metadata exists, so transformers imports ours, finds no
    # __version__, and again says no.
    import importlib.util

    import transformers.utils.import_utils as iu

    assert Path(importlib.util.find_spec("kernels").origin).parent == ROOT / "kernels"
    detect = getattr(iu.is_kernels_available, "__wrapped__", iu.is_kernels_available)  # uncached
    assert detect() is False
    if hasattr(iu, "_package_distribution_mapping"):
        monkeypatch.setattr(iu, "_package_distribution_mapping", lambda: {})  # as if not installed
        assert detect() is False
    assert iu.is_kernels_available() is False  # what transformers itself saw at import
    model = hf_model(device)  # and HF's GPT-2 builds and runs beside ours
    assert model(ids(device)).logits.shape == (B, T, CFG["vocab_size"])


def test_both_kernels_packages_installed_is_a_clear_error(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.18.2" if name == "kernels" else real(name))
    with pytest.raises(ImportError, match="separate environments"):
        hf._check_name_clash()
