"""gpt2.hf on padded batches and with attention dropout: both run on our kernel (a padding mask
as per-sequence key ranges, dropout inside the kernel) and give the unpatched model's logits, loss
and gradients, with nothing counted in FALLBACKS; a mask of another form still falls back.
Left-padded greedy ``generate`` is in test_hf.py. Tiny random models, float32, Triton's
interpreter on a CPU."""

import types

import pytest
import torch

from tests.conftest import ON_GPU
from tests.gpt2.test_model_kernels import KeepMaskFunctional
from tests.tolerances import tol

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("gpt2.hf")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.masking_utils import sdpa_mask  # noqa: E402
from transformers.models.gpt2 import modeling_gpt2  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# Head size 16; 2 layers; pad token 0.
CFG = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=40, bos_token_id=0, eos_token_id=0,
           pad_token_id=0, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
B, T = 3, 11
TOL = tol("model", torch.float32) if not ON_GPU else {"atol": 5e-3, "rtol": 5e-3}  # tf32 on a GPU


def hf_model(device, **overrides):
    return GPT2LMHeadModel(GPT2Config(**{**CFG, **overrides})).to(device)


def padded_batch(device, side):
    """(ids, attention_mask, labels): B sequences of T, 6 and 9 tokens padded on one side to T;
    labels are the ids with -100 at the padding, as HF's data collators make them."""
    x = torch.randint(1, CFG["vocab_size"], (B, T), device=device)
    mask = torch.ones_like(x)
    for b, n in enumerate((T, 6, 9)):
        if side == "left":
            mask[b, : T - n] = 0
        elif side == "right":
            mask[b, n:] = 0
    x = x.masked_fill(mask == 0, 0)
    return x, mask, x.masked_fill(mask == 0, -100)


def run(model, x, mask, labels):
    model.zero_grad(set_to_none=True)
    out = model(x, attention_mask=mask, labels=labels)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_run(got, ref, mask):
    seen = mask.bool()  # the padded positions' logits are not compared: no loss reads them
    torch.testing.assert_close(got[0][seen], ref[0][seen], **TOL)
    torch.testing.assert_close(got[1], ref[1], **TOL)
    assert got[2].keys() == ref[2].keys()
    for name, g in ref[2].items():
        torch.testing.assert_close(got[2][name], g, **TOL, msg=lambda m: f"grad of {name}: {m}")


@pytest.fixture(autouse=True)
def fresh_counter():
    hf.FALLBACKS.clear()


@pytest.mark.parametrize("side", ["none", "left"])
def test_training_with_attention_dropout_matches_hf_eager_given_the_same_keep_masks(device, side, monkeypatch):
    # Only the attention drops (attn_pdrop), so the generator is drawn once per layer in both runs.
    model = hf_model(device, attn_pdrop=0.1).train()
    x, mask, labels = padded_batch(device, side)
    # The last pad before a left-padded sequence predicts its first token, from a query that
    # sees no key: HF's eager then averages over every key, its sdpa (and our kernel) give 0.
    # Not our question here, so that prediction is left out (labels[:, 0] is never a target).
    first = mask.argmax(dim=1)
    labels[torch.arange(B, device=device), first] = -100
    state = torch.get_rng_state()
    model.set_attn_implementation("eager")  # HF's path whose dropout we can see: nn.functional.dropout
    with monkeypatch.context() as m:  # its dropout draws the kernel's keep-mask (one seed per layer)
        m.setattr(modeling_gpt2, "nn", types.SimpleNamespace(**{**vars(torch.nn), "functional": KeepMaskFunctional()}))
        ref = run(model, x, mask, labels)
    no_dropout = run(model.eval(), x, mask, labels)
    hf.apply_kernels(model.train(), "triton")
    torch.set_rng_state(state)
    got = run(model, x, mask, labels)
    assert_same_run(got, ref, mask)
    assert not hf.FALLBACKS
    assert not torch.allclose(got[1], no_dropout[1])  # the dropout did drop


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_training_batch_matches_hf(device, side, monkeypatch):
    model = hf_model(device).train()
    x, mask, labels = padded_batch(device, side)
    ref = run(model, x, mask, labels)
    hf.apply_kernels(model, "triton")
    equal, checks = torch.equal, []
    monkeypatch.setattr(torch, "equal", lambda a, b: checks.append(1) or equal(a, b))
    got = run(model, x, mask, labels)
    monkeypatch.undo()
    assert_same_run(got, ref, mask)
    assert not hf.FALLBACKS
    assert len(checks) == 1  # the mask is read back once per forward, not once per layer


def test_key_ranges_of_hf_padding_masks(device):
    pad = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], device=device).bool()
    q, k = torch.empty(4, 2, 5, 16, device=device), torch.empty(4, 2, 5, 16, device=device)
    mask = sdpa_mask(4, 5, 5, attention_mask=pad, allow_is_causal_skip=False, device=device)
    ranges = hf._key_ranges(mask, q, k, causal=True)
    assert ranges["kv_start"].dtype == torch.int32 and ranges["kv_start"].device == q.device
    assert ranges["kv_start"].tolist() == [0, 2, 0, 0] and ranges["kv_len"].tolist() == [5, 5, 3, 0]
    assert hf._key_ranges(mask, q, k, causal=True) is ranges  # kept on the mask
    assert hf._key_ranges(mask, q, k, causal=False) is None  # a causal mask is not a bare key range
    hole = mask.clone()
    hole[1, 0, 4, 3] = False
    assert hf._key_ranges(hole, q, k, causal=True) is None
    assert hf._key_ranges(torch.where(mask, 0.0, -1e9), q, k, causal=True) is None  # float masks: not read


@pytest.mark.parametrize("kind", ["hole", "float"])
def test_a_mask_of_another_form_falls_back_to_hf(device, kind):
    # A 4D mask handed to the model is passed to the attention as it is: one with a hole in the
    # middle is no key range; an additive float mask is not read even when it is one.
    model = hf_model(device).eval()
    x = torch.randint(1, CFG["vocab_size"], (2, T), device=device)
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril().expand(2, 1, T, T).clone()
    if kind == "hole":
        mask[0, 0, 6:, 2:4] = False
    else:
        mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    ref = model(x, attention_mask=mask).logits
    got = hf.apply_kernels(model, "triton")(x, attention_mask=mask).logits
    torch.testing.assert_close(got, ref, **TOL)
    assert hf.FALLBACKS == {"attention_mask": CFG["n_layer"]}
