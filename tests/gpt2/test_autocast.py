"""The model under torch.autocast (bfloat16) with the Triton kernels swapped in: it runs, as the
eager model does, and gives the same logits, loss and gradients within bfloat16's tolerance
(issue 16: the Triton GELU used to raise under autocast, fed a bf16 activation and its fp32
bias)."""

import pytest
import torch

from gpt2 import GPT2, GPT2Config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_triton_kernels_under_autocast_match_eager(device):
    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=61, block_size=16)).to(device)
    idx = torch.randint(0, 61, (2, 9), device=device)
    results = {}
    for kernels in ("torch", "triton"):
        model.set_kernels(kernels).zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            # the fused loss (loss="triton") builds no logits, so they come from a second call
            logits = model(idx)
            _, loss = model(idx, idx)
        loss.backward()
        results[kernels] = logits.float(), loss.float(), {n: p.grad for n, p in model.named_parameters()}
    (logits, loss, grads), (ref_logits, ref_loss, ref_grads) = results["triton"], results["torch"]
    scale = ref_logits.abs().max().item()
    assert (logits - ref_logits).abs().max().item() <= 0.05 * scale
    assert abs(loss.item() - ref_loss.item()) <= 0.02 * abs(ref_loss.item())
    for name, g in ref_grads.items():
        assert grads[name].dtype == g.dtype == torch.float32, name
        assert (grads[name] - g).abs().max().item() <= 0.1 * g.abs().max().item() + 1e-6, name
