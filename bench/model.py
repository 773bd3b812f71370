"""GPT-2 end to end, ours and Hugging Face's: the forward pass, a training step, and generation.

Family "model", for each size and sequence length S (batch B with B*S ~ 8192 tokens):
    gpt2_forward     fwd       logits of (B, S) random token ids, no autograd
    gpt2_train_step  train     forward + cross-entropy + backward + AdamW step (fused AdamW on
                               CUDA), weights, gradients and optimizer state in the run's dtype
and for each size one generation point (not a function of S): batch 1, a 128-token random
prompt, 256 new tokens, greedy; ``ms`` is the time per new token and ``tokens_per_s`` = new
tokens / time of the whole ``generate`` call (prefill included).

Configurations (``model.set_kernels``):
    eager              everything eager PyTorch, attention the textbook op with (S, S) scores
    eager+sdpa         eager LayerNorm and GELU, attention by F.scaled_dot_product_attention
    triton-attention   one Triton kernel at a time, the rest as eager+sdpa
    triton-layernorm
    triton-gelu
    triton-loss        eager+sdpa with the fused loss (gpt2_kernels.linear_cross_entropy): the
                       training step with the fused loss on, against eager+sdpa with it off
    triton             every Triton kernel (ours), the fused loss and residual adds included
    compile            ``torch.compile`` of the eager+sdpa model, compiled per shape
    hf                 (generation only) Hugging Face ``transformers``' GPT2LMHeadModel with the
                       same shape and random weights, when installed
GPT-2's position table is enlarged to the longest S of the sweep (block_size); the weights are
random, which does not change the time of any operation. One model lives on the GPU at a time,
so a peak-memory reading holds that model, its gradients, optimizer state and activations.

Family "hf" (the ``hf_`` functions): one ``transformers.GPT2LMHeadModel`` with the same random
weights and no dropout (so no call falls back), for gpt2 and gpt2-xl at S = 1024, the points
``hf_gpt2_forward`` and ``hf_gpt2_train_step`` (HF's own shifted cross-entropy, labels = ids):
    triton   ``gpt2.hf.apply_kernels(model, "triton")``: our attention, LayerNorm and GELU (ours)
    eager    ``attn_implementation="eager"``, HF's textbook attention
    sdpa     ``attn_implementation="sdpa"``, HF's default (PyTorch's fused attention)
A row's note names the transformers version and, for ``triton``, how many attention calls fell
back to HF's path while it was measured (0 is what is expected).
"""

from .impls import Unavailable
from .points import (GEN_BATCH, GEN_NEW, GEN_PROMPT, SMOKE_SIZE, SMOKE_TARGETS, Point, family_points, model_config,
                     torch_dtype)
from .report import package_version
from .timing import free_memory, time_step

FAMILY = "model"
PASSES = ("fwd", "train")
OPS = {"fwd": "gpt2_forward", "train": "gpt2_train_step", "generate": "gpt2_generate"}
CONFIGS = {  # impl -> set_kernels arguments (every op named: one model serves every impl)
    "eager": dict(attention="torch", layernorm="torch", gelu="torch", loss="torch"),
    "eager+sdpa": dict(attention="sdpa", layernorm="torch", gelu="torch", loss="torch"),
    "triton-attention": dict(attention="triton", layernorm="torch", gelu="torch", loss="torch"),
    "triton-layernorm": dict(attention="sdpa", layernorm="triton", gelu="torch", loss="torch"),
    "triton-gelu": dict(attention="sdpa", layernorm="torch", gelu="triton", loss="torch"),
    "triton-loss": dict(attention="sdpa", layernorm="torch", gelu="torch", loss="triton"),
    "triton": dict(attention="triton", layernorm="triton", gelu="triton", loss="triton"),
    "compile": dict(attention="sdpa", layernorm="torch", gelu="torch", loss="torch"),
}
IMPLS = (
    ("triton", "ours"), ("eager", "baseline"), ("eager+sdpa", "baseline"), ("compile", "baseline"),
    ("triton-attention", "variant"), ("triton-layernorm", "variant"), ("triton-gelu", "variant"),
    ("triton-loss", "variant"),
)
GEN_IMPLS = (("triton", "ours"), ("eager", "baseline"), ("eager+sdpa", "baseline"), ("hf", "peer"))


def impls_for(point):
    return GEN_IMPLS if point.pass_ == "generate" else IMPLS


def points(sizes, seq_lens, dtype, info, smoke=False, quick=False):
    out = family_points(FAMILY, {p: OPS[p] for p in PASSES}, sizes, seq_lens, dtype, info, smoke)
    prompt = SMOKE_TARGETS["gen_prompt"] if smoke else GEN_PROMPT
    new = SMOKE_TARGETS["gen_new"] if smoke else (64 if quick else GEN_NEW)
    for size in sizes:
        cfg = model_config(size)
        out.append(Point(FAMILY, OPS["generate"], "generate", size, cfg.n_embd, cfg.n_head, prompt + new,
                         GEN_BATCH, dtype, extra=(("prompt", prompt), ("new", new))))
    return out


# ---- models, one on the GPU at a time ----------------------------------------------------


def _cached(ctx, key, build):
    """The model under ``key``, built (seed 0, on the device, in the run's dtype) after every
    other model is dropped."""
    import torch

    if key not in ctx.cache:
        ctx.cache.clear()
        free_memory(ctx.device, collect=True)
        torch.manual_seed(0)
        with torch.device(ctx.device):
            model = build()
        ctx.cache[key] = model.to(torch_dtype(ctx.dtype))
    return ctx.cache[key]


def get_model(size, ctx):
    from gpt2.model import GPT2

    return _cached(ctx, ("ours", size),
                   lambda: GPT2(model_config(size, block_size=ctx.meta.get("block_size", 1024))))


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise Unavailable(f"transformers not installed ({e})") from e
    return transformers


def hf_model(size, block_size=None):
    """Hugging Face's GPT2LMHeadModel of a size (random weights, no dropout), its position table
    ``block_size`` long (default the size's, 1024)."""
    transformers = _transformers()
    cfg = model_config(size, **({"block_size": block_size} if block_size else {}))
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1,  # GPT-2's 50256, or the tiny vocab's last
    )
    return transformers.GPT2LMHeadModel(hf_cfg)


def get_hf_model(size, ctx):
    _transformers()  # Unavailable before any cached model is dropped
    return _cached(ctx, ("hf", size), lambda: hf_model(size).eval())


def _configure(model, impl):
    try:
        model.set_kernels(**CONFIGS[impl])
    except RuntimeError as e:  # a Triton kernel that is not there yet
        raise Unavailable(str(e)) from e
    return model


# ---- the measurements --------------------------------------------------------------------


def _step(model, pass_, forward, loss, ctx):
    """The step a point times, ours or Hugging Face's: ``forward()`` without autograd (fwd), or
    ``loss()``'s backward and a fused AdamW step (train), with the model in the matching mode."""
    import torch

    if pass_ == "fwd":
        model.eval()

        def step():
            with torch.no_grad():
                forward()
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=ctx.device == "cuda")

        def step():
            loss().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def _ids(model, point, ctx, seed=1):
    import torch

    g = torch.Generator(device=ctx.device).manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (point.batch, point.seq_len), device=ctx.device, generator=g)


def run(point, impl, ctx):
    import torch

    if point.pass_ == "generate":
        return _run_generate(point, impl, ctx)
    model = _configure(get_model(point.size, ctx), impl)
    idx, targets = _ids(model, point, ctx), _ids(model, point, ctx, seed=2)
    net = model
    if impl == "compile":
        torch._dynamo.reset()
        net = torch.compile(model, backend=ctx.compile_backend, dynamic=False)
    try:
        step = _step(model, point.pass_, lambda: net(idx), lambda: net(idx, targets)[1], ctx)
        _, first_s, out = time_step(step, ctx, point.batch * point.seq_len)
        if impl == "compile":
            out["compile_s"] = first_s
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        if impl == "compile":
            del net
            torch._dynamo.reset()
        free_memory(ctx.device)
    return out


def _run_generate(point, impl, ctx):
    import torch

    prompt = point.get("prompt")
    g = torch.Generator(device=ctx.device).manual_seed(2)
    if impl == "hf":
        model = get_hf_model(point.size, ctx)
        idx = torch.randint(0, model.config.vocab_size, (point.batch, prompt), device=ctx.device, generator=g)
        gen = hf_generator(model, idx)
        note = (f"transformers {package_version('transformers')}, "
                f"attn_implementation={model.config._attn_implementation}")
    else:
        model = _configure(get_model(point.size, ctx), impl).eval()
        V = model.config.vocab_size
        idx = torch.randint(0, V, (point.batch, prompt), device=ctx.device, generator=g)

        def gen(n):
            return model.generate(idx, n, temperature=0, use_cache=True)

        note = ""
    try:
        return time_generate(point, impl, gen, ctx, note)[0]
    finally:
        free_memory(ctx.device)


def hf_generator(model, idx):
    """gen(n): Hugging Face's ``generate`` of n new tokens, greedy, after the prompts ``idx``."""
    import torch

    mask = torch.ones_like(idx)

    def gen(n):
        with torch.no_grad():
            return model.generate(input_ids=idx, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=0)

    return gen


def time_generate(point, impl, gen, ctx, note=""):
    """Time gen(new) of a generation point, its first call the warm-up (it compiles every kernel
    variant the decode steps meet): ms per new token, tokens/s of the whole call (prefill
    included). Returns (the row's fields, the first call's seconds)."""
    prompt, new = point.get("prompt"), point.get("new")
    first, first_s, out = time_step(lambda: gen(new), ctx, point.batch * new, per=new, warmup=0, reps=3)
    if first.shape[1] != prompt + new:
        raise RuntimeError(f"{impl} generated {first.shape[1] - prompt} tokens, expected {new}")
    out["note"] = (note + "; " if note else "") + f"prompt {prompt}, {new} new tokens, greedy, ms per new token"
    return out, first_s


# ---- Hugging Face's GPT2LMHeadModel: the "hf" family ---------------------------------------

HF_OPS = {"fwd": "hf_gpt2_forward", "train": "hf_gpt2_train_step"}
HF_SIZES = ("gpt2", "gpt2-xl", SMOKE_SIZE)
HF_SEQ_LEN = 1024
HF_IMPLS = (("triton", "ours"), ("eager", "baseline"), ("sdpa", "baseline"))


def hf_impls_for(point):
    return HF_IMPLS


def hf_points(sizes, seq_lens, dtype, info, smoke=False, quick=False):
    lens = seq_lens if smoke else [S for S in seq_lens if S == HF_SEQ_LEN]  # the model's lengths
    return family_points("hf", HF_OPS, [s for s in sizes if s in HF_SIZES], lens, dtype, info, smoke)


def configure_hf(model, impl):
    """Hugging Face's model as shipped (impl "eager" or "sdpa") or with our kernels ("triton")."""
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


def hf_run(point, impl, ctx):
    from gpt2.hf import FALLBACKS

    model = configure_hf(get_hf_model(point.size, ctx), impl)
    idx = _ids(model, point, ctx)
    fell_back = sum(FALLBACKS.values())
    try:
        step = _step(model, point.pass_, lambda: model(idx), lambda: model(idx, labels=idx).loss, ctx)
        _, _, out = time_step(step, ctx, point.batch * point.seq_len)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        attn = model.config._attn_implementation
        configure_hf(model, "sdpa")  # the cached model is shared with the "hf" generation line
    note = f"transformers {package_version('transformers')}, attn_implementation={attn}"
    if impl == "triton":
        note += f", {sum(FALLBACKS.values()) - fell_back} attention calls fell back to HF"
    return {**out, "note": note}
