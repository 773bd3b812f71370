"""gpt2.hf.apply_kernels: our kernels inside Hugging Face's GPT2LMHeadModel give HF's own logits,
loss, gradients and generated tokens (float32, tiny random models built offline, Triton's
interpreter on a CPU); what the kernel lacks falls back to HF's path, counted."""

import json
import os
import subprocess
import sys
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


@pytest.mark.parametrize("case", ["batch1", "left-padded", "static-cache", "left-padded-static"])
def test_greedy_generate_token_for_token(device, case):
    model = hf_model(device)
    padded = case.startswith("left-padded")
    if padded:  # three prompts of 4, 7 and 9 tokens, padded on the left to 9
        x = ids(device, 3, 9)
        mask = torch.ones_like(x)
        mask[0, :5], mask[1, :2] = 0, 0
        x = x.masked_fill(mask == 0, 0)
    else:
        x, mask = ids(device, 1, 6), None
    kw = dict(attention_mask=mask, max_new_tokens=5, do_sample=False)
    if "static" in case:  # prefill sees all the cache's slots (the kernel takes the first Sq)
        kw["cache_implementation"] = "static"
    ref = model.generate(x, **kw)
    got = hf.apply_kernels(model, "triton").generate(x, **kw)
    assert torch.equal(got, ref)
    # A padding mask becomes the kernel's per-sequence key ranges, and a static cache's decode
    # steps come with a mask (its empty slots, and any padding) of that form too. Only a padded
    # prefill into a static cache falls back: its mask is causal from the first slot (HF's
    # upper-left), not from the last as the kernel's, once per layer.
    want = {"left-padded-static": {"attention_mask": CFG["n_layer"]}}.get(case, {})
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


def test_cross_attention_runs_the_non_causal_kernel_with_and_without_padding(device):
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
    with OpRecorder() as rec:  # the padded encoder: key ranges (kv_len 5 for the first sequence)
        got = model(x, encoder_hidden_states=enc, encoder_attention_mask=enc_mask).logits
    assert "gpt2_kernels::attention_fwd" in rec.ops
    torch.testing.assert_close(got, ref[1], **TOL)
    assert not hf.FALLBACKS


def test_torch_compile_traces_the_patched_model(device):
    model = hf.apply_kernels(hf_model(device, n_layer=1), "triton")  # tracing HF's forward is the cost
    x = ids(device, 1, 7)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x).logits, model(x).logits, **TOL)


def test_our_checkpoint_loaded_by_hf_and_patched_equals_our_model(device, tmp_path):
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


def _hugging_faces_kernels():
    """The __init__.py of the installed distribution named "kernels" (Hugging Face's): the file
    `import kernels` must find, wherever the environment lives (CI's venv is inside the checkout)."""
    import importlib.metadata

    dist = importlib.metadata.distribution("kernels")  # installed, as a user of transformers has it
    return Path(dist.locate_file("kernels/__init__.py")).resolve()


def test_hugging_face_kernels_is_installed_and_is_not_ours():
    # The dev extra installs Hugging Face's package imported as `kernels` (transformers >= 5.25
    # requires it); ours is gpt2_kernels, so the name `kernels` belongs to Hugging Face alone.
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("kernels")
    assert spec is not None and Path(spec.origin).resolve() == _hugging_faces_kernels(), spec.origin
    assert Path(importlib.util.find_spec("gpt2_kernels").origin).parent == ROOT / "gpt2_kernels"
    assert not (ROOT / "kernels").exists()


CHECK_BOTH = """
import sys, torch, gpt2, gpt2_kernels, kernels
from transformers import GPT2Config, GPT2LMHeadModel
from gpt2 import GPT2, GPT2Config as OurConfig
from gpt2.hf import apply_kernels, kernels_of
cfg = dict(n_layer=1, n_head=2, n_embd=32, vocab_size=97, n_positions=16, bos_token_id=0, eos_token_id=0)
ids = torch.randint(0, 97, (1, 7))
hf = GPT2LMHeadModel(GPT2Config(**cfg)).eval()
ref = hf(ids).logits
apply_kernels(hf, "triton")
assert kernels_of(hf)["attention"] == "triton"
torch.testing.assert_close(hf(ids).logits, ref, atol=1e-4, rtol=1e-4)
ours = GPT2(OurConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=97, block_size=16))
ours.set_kernels("triton")
assert ours(ids).shape == (1, 7, 97)
print(kernels.__file__, gpt2_kernels.__file__)
"""


@pytest.mark.parametrize("where", ["repository", "elsewhere"])
def test_both_kernels_packages_work_inside_and_outside_the_repository(where, tmp_path):
    # From the repository root the folder gpt2_kernels/ is on the path; from elsewhere the
    # installed distribution is. Either way transformers gets Hugging Face's `kernels`, and
    # gpt2.hf and set_kernels("triton") get ours.
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ""}
    cwd = ROOT if where == "repository" else tmp_path
    if where == "elsewhere":
        found = subprocess.run([sys.executable, "-c", "import gpt2"], cwd=cwd, env=env, capture_output=True)
        if found.returncode:
            pytest.skip("gpt2-kernels is not installed in this environment (pip install -e .)")
    p = subprocess.run([sys.executable, "-c", CHECK_BOTH], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    hf_file, ours_file = p.stdout.split()
    assert Path(hf_file).resolve() == _hugging_faces_kernels()
    assert Path(ours_file).resolve().parent == ROOT / "gpt2_kernels"
