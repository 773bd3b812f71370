"""Generation: tokens/s of ``GPT2.generate``, and the decode attention it runs, one query at a time.

Opt-in: ``python -m bench --only generation`` (it is not in the default families).

Points, for each size:
    gpt2_generate     generate  batch 1 and 8, prompts of 128 and 1024 random tokens (S = the
                                prompt), GEN_NEW new tokens, greedy. ``ms`` per new token;
                                ``tokens_per_s`` = batch * new / time of the whole call
                                (prefill included)
    decode_attention  fwd       one query (Sq = 1) against Sk = 128 ... 8192 keys, batch 1,
                                the size's heads, D = 64: the attention of one decode step.
                                ``bytes`` is the K/V read (plus q and o), so ``gbps`` and
                                ``frac_bw`` (of the measured copy bandwidth) are the kernel's
                                achieved bandwidth

Implementations, generation:
    triton             the Triton kernels, the eager decode loop (static cache, no host sync)
    triton+cudagraphs  the same, ``generate(compile=True)``: the decode step captured once
                       (torch.compile mode="reduce-overhead") and replayed
    eager              everything eager PyTorch
    sdpa+compile       eager LayerNorm/GELU, SDPA attention, ``generate(compile=True)``
    hf                 Hugging Face ``GPT2LMHeadModel.generate`` (dynamic cache), eager
    hf-static-compile  Hugging Face with ``cache_implementation="static"`` and its forward
                       under torch.compile(mode="reduce-overhead"), where its version has them
decode attention:
    triton             ``gpt2_kernels.decode_attention`` (split-KV, splits from Sk and the SM count)
    triton-train       the training kernel's forward op on the same shape (what a decode step
                       ran before: one 128-row query tile per head)
    sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math   SDPA pinned to each backend
"""

from .impls import SDPA_BACKENDS, Unavailable, sdpa, sdpa_may_refuse
from .model import _cached, hf_generator, hf_model, time_generate
from .points import Point, model_config
from .report import package_version
from .timing import free_memory, make_inputs, time_kernel

FAMILY = "generation"
GEN_OP, DECODE_OP = "gpt2_generate", "decode_attention"
GEN_BATCHES, GEN_PROMPTS, GEN_NEW = (1, 8), (128, 1024), 128
DECODE_SEQ_LENS = (128, 256, 512, 1024, 2048, 4096, 8192)
SMOKE = dict(batches=(1, 2), prompts=(4,), new=4, seq_lens=(16, 48))
GEN_IMPLS = (("triton+cudagraphs", "ours"), ("triton", "variant"), ("eager", "baseline"),
             ("sdpa+compile", "baseline"), ("hf", "peer"), ("hf-static-compile", "peer"))
DECODE_IMPLS = (("triton", "ours"), ("triton-train", "variant"), *((n, "baseline") for n in SDPA_BACKENDS))
CONFIGS = {  # impl -> (set_kernels arguments, compile)
    "triton": (dict(attention="triton", layernorm="triton", gelu="triton"), False),
    "triton+cudagraphs": (dict(attention="triton", layernorm="triton", gelu="triton"), True),
    "eager": (dict(attention="torch", layernorm="torch", gelu="torch"), False),
    "sdpa+compile": (dict(attention="sdpa", layernorm="torch", gelu="torch"), True),
}


def impls_for(point):
    return GEN_IMPLS if point.pass_ == "generate" else DECODE_IMPLS


def points(sizes, seq_lens, dtype, info, smoke=False):
    """seq_lens (--seq-lens) narrows the decode microbenchmark's Sk; the generation prompts are fixed."""
    batches, prompts, new = ((SMOKE["batches"], SMOKE["prompts"], SMOKE["new"]) if smoke
                             else (GEN_BATCHES, GEN_PROMPTS, GEN_NEW))
    lens = SMOKE["seq_lens"] if smoke else tuple(s for s in DECODE_SEQ_LENS if s in seq_lens) or DECODE_SEQ_LENS
    out = []
    for size in sizes:
        cfg = model_config(size)
        for prompt in prompts:
            for B in batches:
                out.append(Point(FAMILY, GEN_OP, "generate", size, cfg.n_embd, cfg.n_head, prompt, B, dtype,
                                 extra=(("prompt", prompt), ("new", new))))
        for Sk in lens:
            out.append(Point(FAMILY, DECODE_OP, "fwd", size, cfg.head_size, cfg.n_head, Sk, 1, dtype))
    return out


def run(point, impl, ctx):
    if point.pass_ == "generate":
        return _run_generate(point, impl, ctx)
    return _run_decode(point, impl, ctx)


# ---- decode attention ----------------------------------------------------------------------


def _decode_function(impl):
    import gpt2_kernels
    from gpt2_kernels.attention import _attention_fwd_op

    if impl == "triton":
        return lambda q, k, v: gpt2_kernels.decode_attention(q, k, v, causal=True)
    if impl == "triton-train":
        scale = 1 / 8.0  # D = 64
        return lambda q, k, v: _attention_fwd_op(q, k, v, True, scale, True)[0]  # causal, deterministic
    return sdpa(impl, causal=False)  # one query sees every key: no mask needed


def _run_decode(point, impl, ctx):
    import torch.nn.functional as F

    f = _decode_function(impl)
    B, H, D, Sk = point.batch, point.heads, point.width, point.seq_len
    (q,), _ = make_inputs(point, ctx, (B, H, 1, D))
    (k, v), _ = make_inputs(point, ctx, (B, H, Sk, D), n=2)
    with sdpa_may_refuse(impl):
        out = time_kernel(point, impl, ctx, f, (q, k, v), None,
                          reference=lambda q, k, v: F.scaled_dot_product_attention(q.float(), k.float(), v.float()))
    if impl == "triton":
        from gpt2_kernels._common import num_sms
        from gpt2_kernels.decode_attention import _launch_config, _num_splits

        block_n = _launch_config("split", D, q.dtype).constexprs["BLOCK_N"]
        splits, _ = _num_splits(B * H, Sk, block_n, num_sms(q.device))
        out["note"] = f"{splits} splits, {B * H * splits} programs"
    return out


# ---- generation ----------------------------------------------------------------------------


def _block_size(point):
    return max(1024, point.get("prompt") + point.get("new"))


def _our_model(point, ctx):
    from gpt2.model import GPT2

    return _cached(ctx, ("gen", point.size, _block_size(point)),
                   lambda: GPT2(model_config(point.size, block_size=_block_size(point))))


def _hf_model(point, ctx):
    return _cached(ctx, ("hf-gen", point.size, _block_size(point)), lambda: hf_model(point.size, _block_size(point)).eval())


def _generator(point, impl, ctx):
    """(gen(n) -> ids, note): one generation call of the point's batch and prompt."""
    import torch

    prompt = point.get("prompt")
    g = torch.Generator(device=ctx.device).manual_seed(2)
    if impl.startswith("hf"):
        model = _hf_model(point, ctx)
        idx = torch.randint(0, model.config.vocab_size, (point.batch, prompt), device=ctx.device, generator=g)
        if impl == "hf-static-compile":
            try:
                model.generation_config.cache_implementation = "static"
                model.forward = torch.compile(model.forward, mode="reduce-overhead" if ctx.device == "cuda" else None,
                                              backend="inductor" if ctx.device == "cuda" else ctx.compile_backend,
                                              fullgraph=True)
            except Exception as e:  # noqa: BLE001 - an older transformers: no static cache
                raise Unavailable(f"transformers {package_version('transformers')}: no static cache ({e})") from e
        return hf_generator(model, idx), f"transformers {package_version('transformers')}, attn={model.config._attn_implementation}"
    kernels, compile = CONFIGS[impl]
    model = _our_model(point, ctx)
    try:
        model.set_kernels(**kernels)
    except RuntimeError as e:
        raise Unavailable(str(e)) from e
    if compile and ctx.device != "cuda":
        compile = {"backend": ctx.compile_backend}  # no CUDA graphs off CUDA
    idx = torch.randint(0, model.config.vocab_size, (point.batch, prompt), device=ctx.device, generator=g)
    return (lambda n: model.generate(idx, n, temperature=0, compile=compile)), ""


def _run_generate(point, impl, ctx):
    import torch

    gen, note = _generator(point, impl, ctx)
    try:
        out, warm = time_generate(point, impl, gen, ctx, note)  # the warm-up compiles (and captures)
    finally:
        if impl.startswith("hf"):
            ctx.cache.clear()  # hf-static-compile patched the model's forward
        if "compile" in impl or "cudagraphs" in impl:
            torch._dynamo.reset()
        free_memory(ctx.device)
    if "compile" in impl or "cudagraphs" in impl:
        out["compile_s"] = warm
    return out
