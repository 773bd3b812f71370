"""Hugging Face's GPT2LMHeadModel end to end, as it ships and with our kernels patched in.

Points, for gpt2 and gpt2-xl at S = 1024 (the smoke run: its tiny model), batch B with
B*S ~ 8192 tokens as in ``bench/model.py``:
    hf_gpt2_forward     fwd     logits of (B, S) random token ids, no autograd
    hf_gpt2_train_step  train   forward + HF's own shifted cross-entropy (labels = ids) +
                                backward + AdamW step (fused on CUDA)

Implementations, all one ``transformers.GPT2LMHeadModel`` with the same random weights and no
dropout (so no call falls back):
    triton   ``gpt2.hf.apply_kernels(model, "triton")``: our attention, LayerNorm and GELU (ours)
    eager    ``attn_implementation="eager"``, HF's textbook attention
    sdpa     ``attn_implementation="sdpa"``, HF's default (PyTorch's fused attention)
The note of each row names the transformers version and, for ``triton``, how many attention
calls fell back to HF's path while it was measured (0 is what is expected).
"""

from .impls import Unavailable
from .model import get_hf_model
from .points import SMOKE_SIZE, family_points
from .report import package_version
from .timing import time_step

FAMILY = "hf"
OPS = {"fwd": "hf_gpt2_forward", "train": "hf_gpt2_train_step"}
SIZES = ("gpt2", "gpt2-xl", SMOKE_SIZE)
SEQ_LEN = 1024
IMPLS = (("triton", "ours"), ("eager", "baseline"), ("sdpa", "baseline"))


def impls_for(point):
    return IMPLS


def points(sizes, seq_lens, dtype, info, smoke=False, quick=False):
    lens = seq_lens if smoke else [S for S in seq_lens if S == SEQ_LEN]  # the model's lengths
    return family_points(FAMILY, OPS, [s for s in sizes if s in SIZES], lens, dtype, info, smoke)


def _configure(model, impl):
    try:
        from gpt2.hf import apply_kernels
    except ImportError as e:  # transformers missing, or Hugging Face's `kernels` shadowing ours
        raise Unavailable(f"gpt2.hf is not importable here ({e})") from e
    try:
        apply_kernels(model, "triton" if impl == "triton" else "torch")
    except RuntimeError as e:  # a Triton kernel that cannot run here
        raise Unavailable(str(e)) from e
    if impl != "triton":
        model.set_attn_implementation(impl)
    return model


def run(point, impl, ctx):
    import torch

    from gpt2.hf import FALLBACKS

    model = _configure(get_hf_model(point.size, ctx), impl)
    g = torch.Generator(device=ctx.device).manual_seed(1)
    idx = torch.randint(0, model.config.vocab_size, (point.batch, point.seq_len), device=ctx.device, generator=g)
    fell_back = sum(FALLBACKS.values())
    try:
        if point.pass_ == "fwd":
            model.eval()

            def step():
                with torch.no_grad():
                    model(idx)
        else:
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=ctx.device == "cuda")

            def step():
                model(idx, labels=idx).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        _, _, out = time_step(step, ctx, point.batch * point.seq_len)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        attn = model.config._attn_implementation
        _configure(model, "sdpa")  # the cached model is shared with bench/model.py's "hf" generation
    note = f"transformers {package_version('transformers')}, attn_implementation={attn}"
    if impl == "triton":
        note += f", {sum(FALLBACKS.values()) - fell_back} attention calls fell back to HF"
    return {**out, "note": note}
