"""The Triton kernels swapped into the whole model: the same logits, loss, gradients, training
losses and generated tokens as eager PyTorch (float32; under Triton's interpreter on a CPU).
layernorm="triton" also runs the fused residual adds (gpt2_kernels.add_layer_norm) and loss="triton"
the fused loss (gpt2_kernels.linear_cross_entropy), which returns no logits."""

import pytest
import torch
import torch.nn.functional as F

import gpt2.attention
from gpt2 import GPT2, GPT2Config
from tests.conftest import ON_GPU
from tests.gpt2.test_generate import assert_same_greedy
from tests.tolerances import tol

# Small enough for the interpreter; odd T so no kernel sees whole tiles only.
CFG = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=40)
B, T = 2, 13
SETTINGS = [
    dict(layernorm="triton"),
    dict(gelu="triton"),
    dict(attention="triton"),
    dict(loss="triton"),
    dict(attention="triton", layernorm="triton", gelu="triton", loss="triton"),
]
EAGER = {"attention": "torch", "layernorm": "torch", "gelu": "torch", "loss": "torch"}


def run(model, idx, targets):
    model.zero_grad(set_to_none=True)
    logits, loss = model(idx, targets)
    loss.backward()
    logits = model(idx).detach() if logits is None else logits.detach()  # the fused loss returns none
    return logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture
def model_and_data(device):
    model = GPT2(GPT2Config(**CFG)).to(device)
    idx = torch.randint(0, CFG["vocab_size"], (B, T), device=device)
    targets = torch.randint(0, CFG["vocab_size"], (B, T), device=device)
    return model, idx, targets


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "+".join(s))
def test_logits_loss_and_gradients_match_eager(model_and_data, setting):
    model, idx, targets = model_and_data
    ref = run(model.set_kernels("torch"), idx, targets)
    got = run(model.set_kernels(**setting), idx, targets)
    assert model.kernels == {**EAGER, **setting}
    assert (model(idx, targets)[0] is None) == (setting.get("loss") == "triton")
    t = tol("model", torch.float32) if not ON_GPU else {"atol": 5e-3, "rtol": 5e-3}  # tf32 on GPU
    torch.testing.assert_close(got[0], ref[0], **t)
    torch.testing.assert_close(got[1], ref[1], **t)
    for name, g in ref[2].items():
        torch.testing.assert_close(got[2][name], g, **t, msg=lambda m: f"grad of {name}: {m}")


def test_fused_loss_of_strided_targets_matches_eager(device):
    # One row of every other target: flatten keeps the stride-2 view, which reaches the kernel.
    model = GPT2(GPT2Config(**CFG)).to(device)
    idx = torch.randint(0, CFG["vocab_size"], (1, T), device=device)
    targets = torch.randint(0, CFG["vocab_size"], (1, 2 * T), device=device)[:, ::2]
    assert targets.flatten().stride() == (2,)
    ref = run(model.set_kernels("torch"), idx, targets)
    got = run(model.set_kernels(loss="triton"), idx, targets)
    t = tol("model", torch.float32) if not ON_GPU else {"atol": 5e-3, "rtol": 5e-3}  # tf32 on GPU
    torch.testing.assert_close(got[1], ref[1], **t)
    for name, g in ref[2].items():
        torch.testing.assert_close(got[2][name], g, **t, msg=lambda m: f"grad of {name}: {m}")


def test_training_steps_match_eager(model_and_data):
    # Every kernel, the fused residual and the fused loss included, for three AdamW steps.
    model, idx, targets = model_and_data
    targets[0, :4] = -1  # some ignored targets, as padding gives
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses, weights = {}, {}
    for setting in ("torch", "triton"):
        model.load_state_dict(start)
        model.set_kernels(setting)
        # eps=1e-3, not 1e-8: with the default, a gradient of +-1e-9 (rounding noise) moves a
        # weight by +-lr, so the last digit of a near-zero gradient would decide a step's sign.
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-3)
        losses[setting] = []
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            _, loss = model(idx, targets)
            loss.backward()
            opt.step()
            losses[setting].append(loss.item())
        weights[setting] = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.kernels == dict.fromkeys(EAGER, "triton")
    assert losses["torch"][-1] < losses["torch"][0]  # the steps do train
    t = tol("model", torch.float32) if not ON_GPU else {"atol": 5e-3, "rtol": 5e-3}
    torch.testing.assert_close(torch.tensor(losses["triton"]), torch.tensor(losses["torch"]), **t)
    for name, w in weights["torch"].items():
        torch.testing.assert_close(weights["triton"][name], w, **t, msg=lambda m: f"{name} after 3 steps: {m}")


class KeepMaskFunctional:
    """torch.nn.functional for gpt2.attention (or HF's eager attention), but with the dropout of
    the attention weights the Triton kernel draws: gpt2_kernels.attention_dropout_mask takes its
    seed from torch's default generator as the kernel does, so the same generator state gives the
    eager path the same mask."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def dropout(weights, p=0.5, training=True, inplace=False):
        import gpt2_kernels

        if not training or p == 0:  # the kernel draws no seed either
            return weights
        Bw, H, Sq, Sk = weights.shape  # only q's and k's shapes and device are read
        q, k = weights.new_empty(Bw, H, Sq, 16), weights.new_empty(Bw, H, Sk, 16)
        keep = gpt2_kernels.attention_dropout_mask(q, k, p)
        return weights * keep / (1 - p)


def test_training_with_dropout_on_triton_attention_matches_eager_given_the_same_keep_masks(device, monkeypatch):
    # dropout=0.1 everywhere: the embedding and residual dropouts draw the same bits in both runs
    # (nn.Dropout), and each attention draws one seed, in the kernel or in KeepMaskFunctional.
    model = GPT2(GPT2Config(**CFG, dropout=0.1)).to(device).train()
    idx = torch.randint(0, CFG["vocab_size"], (B, T), device=device)
    targets = torch.randint(0, CFG["vocab_size"], (B, T), device=device)
    state = torch.get_rng_state()
    with monkeypatch.context() as m:
        m.setattr(gpt2.attention, "F", KeepMaskFunctional())
        ref = run(model.set_kernels("torch"), idx, targets)
    torch.set_rng_state(state)
    got = run(model.set_kernels(attention="triton"), idx, targets)
    t = tol("model", torch.float32) if not ON_GPU else {"atol": 5e-3, "rtol": 5e-3}  # tf32 on GPU
    torch.testing.assert_close(got[0], ref[0], **t)
    torch.testing.assert_close(got[1], ref[1], **t)
    for name, g in ref[2].items():
        torch.testing.assert_close(got[2][name], g, **t, msg=lambda m: f"grad of {name}: {m}")
    torch.set_rng_state(state)
    assert not torch.equal(run(model, idx, targets)[0], run(model.eval(), idx, targets)[0])  # it did drop


def test_generate_with_cache_on_triton_attention_matches_eager(model_and_data):
    model, idx, _ = model_and_data
    prompt = idx[:, :5]
    atol = 1e-4 if not ON_GPU else 5e-2  # fp32 exactly here; TF32 attention products on a GPU
    greedy = model.set_kernels("torch").generate(prompt, 8, temperature=0)
    got = model.set_kernels(attention="triton").generate(prompt, 8, temperature=0)  # prefill + decode
    assert_same_greedy(model.set_kernels("torch"), 5, got, greedy, atol)
    got = model.set_kernels("triton").generate(prompt, 8, temperature=0)
    assert_same_greedy(model.set_kernels("torch"), 5, got, greedy, atol)


def test_torch_compile_traces_all_triton_model(model_and_data):
    model, idx, targets = model_and_data
    model.set_kernels("triton")
    _, ref_loss = model(idx, targets)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits, loss = compiled(idx, targets)
    loss.backward()
    assert logits is None  # the fused loss
    torch.testing.assert_close(loss, ref_loss, **tol("model", torch.float32))
    torch.testing.assert_close(compiled(idx), model(idx), **tol("model", torch.float32))
    assert all(p.grad is not None for p in model.parameters())
