"""GPT2.generate and KVCache: the cache changes the cost, never the tokens.

Tiny random models (fresh weights every run) on the CPU. Greedy decoding compares argmaxes of
float32 logits computed two ways (whole prefix vs. cached), which can differ in the last bits,
so ``assert_same_greedy`` allows the two to part only at a genuine near-tie and fails otherwise.
"""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gpt2 import GPT2, GPT2Config, KVCache

CPU_ATTENTION = ("torch", "sdpa")  # the Triton kernel is tested in generate by its integrator


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(vocab_size=101, block_size=48, n_layer=2, n_head=2, n_embd=24, attention="torch"):
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size, block_size=block_size)
    model = GPT2(cfg).eval().set_kernels(attention=attention)
    with torch.no_grad():  # LayerNorm weights of 1 and zero biases would hide mistakes that swap them
        for name, p in model.named_parameters():
            if not name.endswith("wte.weight"):
                p.add_(0.05 * torch.randn_like(p))
    return model


def assert_same_greedy(model, prompt_len, got, want, atol=1e-4):
    """got, want: (B, T) greedy continuations of the same prompts by two computations of the same
    model. They must be equal; where a row first differs, both tokens must be within ``atol`` of
    the best logit (a tie that float32 rounding may break either way) and nothing after that
    point is compared, since the two then continue different texts."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(got[:, :prompt_len], want[:, :prompt_len]), "the prompt was changed"
    for b in range(got.size(0)):
        diff = (got[b] != want[b]).nonzero()
        if len(diff) == 0:
            continue
        t = int(diff[0])
        with torch.no_grad():
            logits = model(got[b : b + 1, :t])[0, -1].double()  # eager, whole prefix
        best = logits.max()
        gaps = (best - logits[got[b, t]]).item(), (best - logits[want[b, t]]).item()
        assert max(gaps) <= atol, (
            f"row {b} differs at position {t}: tokens {int(got[b, t])} vs {int(want[b, t])}, "
            f"{gaps[0]:.2e} and {gaps[1]:.2e} below the best logit (not a tie)"
        )


@pytest.mark.parametrize("attention", CPU_ATTENTION)
@pytest.mark.parametrize("B,T", [(1, 1), (3, 5), (2, 17)])
def test_greedy_with_cache_equals_without(attention, B, T):
    model = tiny(attention=attention)
    idx = torch.randint(0, model.config.vocab_size, (B, T))
    n = model.config.block_size - T  # run right up to the block_size limit
    cached = model.generate(idx, n, temperature=0, use_cache=True)
    full = model.generate(idx, n, temperature=0, use_cache=False)
    assert cached.shape == (B, T + n)
    assert_same_greedy(model, T, cached, full)
    # Independent of generate: each new token is the argmax after the tokens before it.
    with torch.no_grad():
        logits = model(cached[:, :-1])  # (B, T+n-1, vocab)
    ref = torch.cat([idx, logits[:, T - 1 :].argmax(-1)], dim=1)
    assert_same_greedy(model, T, cached, ref)


def test_attention_impls_agree_in_generation():
    model = tiny()
    idx = torch.randint(0, model.config.vocab_size, (3, 7))
    eager = model.set_kernels(attention="torch").generate(idx, 30, temperature=0)
    sdpa = model.set_kernels(attention="sdpa").generate(idx, 30, temperature=0)
    assert_same_greedy(model.set_kernels(attention="torch"), 7, sdpa, eager)


def test_batch_rows_are_independent():
    """A row's continuation does not depend on the other rows of the batch."""
    model = tiny()
    idx = torch.randint(0, model.config.vocab_size, (4, 6))
    together = model.generate(idx, 12, temperature=0)
    for b in range(4):
        alone = model.generate(idx[b : b + 1], 12, temperature=0)
        assert_same_greedy(model, 6, alone, together[b : b + 1])


@pytest.mark.parametrize("use_cache", [True, False])
def test_top_k_1_sampling_is_greedy(use_cache):
    model = tiny()
    idx = torch.randint(0, model.config.vocab_size, (3, 4))
    greedy = model.generate(idx, 20, temperature=0, use_cache=use_cache)
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))  # from the test's seed (conftest)
    sampled = model.generate(idx, 20, temperature=1.7, top_k=1, use_cache=use_cache, generator=g)
    assert torch.equal(sampled, greedy)


def test_sampling_follows_softmax_and_top_k():
    """One step from the same prompt in a large batch: token frequencies match
    softmax(logits / T), and top_k never picks outside the k most likely."""
    model = tiny(vocab_size=7, n_embd=16)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(40)  # a spread-out distribution over 7 tokens
    prompt = torch.randint(0, 7, (1, 3))
    with torch.no_grad():
        logits = model(prompt)[0, -1].double()
    n, temperature = 20000, 1.5
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))  # from the test's seed (conftest)
    out = model.generate(prompt.expand(n, 3), 1, temperature=temperature, generator=g)[:, -1]
    freq = torch.bincount(out, minlength=7).double() / n
    p = torch.softmax(logits / temperature, -1)
    # 5 standard errors of a frequency: fails by chance about once in 3 million runs per token.
    assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-3), (freq, p)

    k = 3
    out = model.generate(prompt.expand(4000, 3), 1, temperature=1.0, top_k=k, generator=g)[:, -1]
    top = set(torch.topk(logits, k).indices.tolist())
    assert set(out.tolist()) <= top
    p_top = torch.softmax(logits[sorted(top)], -1)
    freq_top = torch.tensor([(out == i).double().mean().item() for i in sorted(top)], dtype=torch.double)
    assert torch.all((freq_top - p_top).abs() <= 5 * (p_top * (1 - p_top) / 4000).sqrt() + 1e-3)


def test_seeded_sampling_is_reproducible():
    model = tiny()
    idx = torch.randint(0, model.config.vocab_size, (2, 5))
    seed = int(torch.randint(0, 2**31, ()))  # from the test's seed (conftest)
    a = model.generate(idx, 15, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    b = model.generate(idx, 15, temperature=1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


def test_zero_new_tokens_returns_the_prompt():
    model = tiny()
    idx = torch.randint(0, model.config.vocab_size, (2, 5))
    assert torch.equal(model.generate(idx, 0), idx)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(top_k=float("nan")), "top_k must be >= 1"),
        (dict(top_k=2.5), "top_k must be >= 1"),
        (dict(eos_token_id=101), "eos_token_id must be an id in"),
        (dict(check_every=0), "check_every must be an int >= 1"),
        (dict(compile=True, use_cache=False), "needs use_cache=True"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(top_k=-3), "top_k must be >= 1"),
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    model = tiny()
    idx = torch.randint(0, model.config.vocab_size, (1, 4))
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        model.generate(idx, **kwargs)


def test_block_size_limit():
    model = tiny(block_size=16)
    idx = torch.randint(0, model.config.vocab_size, (2, 10))
    assert model.generate(idx, 6, temperature=0).shape == (2, 16)  # exactly full is fine
    for use_cache in (True, False):
        with pytest.raises(ValueError, match=r"prompt \(10\) \+ max_new_tokens \(7\) = 17 exceeds block_size=16"):
            model.generate(idx, 7, use_cache=use_cache)
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        model.generate(torch.zeros(1, 17, dtype=torch.long), 0)


def test_kv_cache_update_and_pos():
    cfg = GPT2Config(n_layer=3, n_head=2, n_embd=8, vocab_size=11, block_size=10)
    cache = KVCache(cfg, batch_size=2, max_len=7)
    assert cache.k.shape == (3, 2, 2, 7, 4) and cache.pos == 0
    k1, v1 = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    k, v = cache.update(1, k1, v1)
    assert torch.equal(k, k1) and torch.equal(v, v1)
    assert cache.pos == 0  # update stores; the model advances pos once all layers have stored
    assert cache.k[0].abs().sum() == 0 and cache.k[2].abs().sum() == 0  # other layers untouched
    cache.pos = 4
    k2, v2 = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    k, v = cache.update(1, k2, v2)
    assert torch.equal(k, torch.cat([k1, k2], dim=2)) and torch.equal(v, torch.cat([v1, v2], dim=2))
    cache.pos = 7
    with pytest.raises(ValueError, match="KV cache full: 7 \\+ 1 tokens exceed its 7"):
        cache.update(0, torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))


@pytest.mark.parametrize("attention", CPU_ATTENTION)
def test_forward_with_cache_matches_full_forward(attention):
    """Prefill then one token at a time: each step's logits equal the full forward's row."""
    model = tiny(attention=attention)
    B, T, n = 2, 5, 6
    idx = torch.randint(0, model.config.vocab_size, (B, T + n))
    cache = KVCache(model.config, B, T + n)
    with torch.no_grad():
        full = model(idx)  # (B, T+n, vocab)
        steps = [model(idx[:, :T], cache=cache)]
        assert cache.pos == T
        for t in range(T, T + n):
            steps.append(model(idx[:, t : t + 1], cache=cache))
            assert cache.pos == t + 1
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds block_size|KV cache full"):
        model(idx[:, :1], cache=cache)


def test_generated_text_round_trips_through_the_tokenizer():
    from gpt2 import Tokenizer

    tok = Tokenizer()
    model = tiny(vocab_size=tok.vocab_size, n_embd=16, block_size=40)
    prompt = "The café in Zürich serves 🍰 and"
    ids = tok.encode(prompt)
    out = model.generate(torch.tensor([ids]), 20, temperature=1.0)[0].tolist()
    assert out[: len(ids)] == ids and all(0 <= i < tok.vocab_size for i in out)
    text = tok.decode(out)
    assert text.startswith(prompt)
    # Random ids may cut a character's UTF-8 bytes (decoded as U+FFFD); the text itself round-trips.
    assert tok.decode(tok.encode(text)) == text
    assert text == b"".join(tok._enc.decode_single_token_bytes(i) for i in out).decode("utf-8", errors="replace")


# ---- the static cache, the sync-free decode loop, compile=True -----------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.float32, torch.bool])
def test_ids_must_be_int32_or_int64(dtype):
    """Narrow ints would silently wrap GPT-2's 50257 ids; refused by the id check."""
    model = tiny()
    with pytest.raises(ValueError, match="torch.long or torch.int32"):
        model(torch.zeros(1, 3, dtype=dtype))
    ok = torch.randint(0, model.config.vocab_size, (1, 3), dtype=torch.int32)
    assert model.generate(ok, 2, temperature=0).dtype == torch.int32


def test_cache_of_another_batch_size_is_refused():
    model = tiny()
    cache = KVCache(model.config, batch_size=3, max_len=10)
    with pytest.raises(ValueError, match="KV cache was made for batch size 3, got ids of batch size 2"):
        model(torch.zeros(2, 4, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("temperature", [1e-30, 1e-40, 5e-324])
def test_tiny_temperature_is_greedy_and_does_not_crash(temperature):
    model = tiny()
    idx = torch.randint(0, model.config.vocab_size, (3, 4))
    greedy = model.generate(idx, 10, temperature=0)
    got = model.generate(idx, 10, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert_same_greedy(model, 4, got, greedy)


def test_static_cache_device_position():
    """Decode mode: written in place at the device position, the whole buffer returned, and
    kv_len telling attention how much of it is valid."""
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=8, vocab_size=11, block_size=10)
    cache = KVCache(cfg, batch_size=2, max_len=7)
    ptr = cache.k.data_ptr()
    assert cache.kv_len is None
    cache.pos = 3
    cache.to_device_position()
    assert int(cache.length) == 3 and cache.kv_len is cache.length
    k1, v1 = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    cache.length += 1  # what the decode step does before its layers
    k, v = cache.update(1, k1, v1)
    assert k.shape == (2, 2, 7, 4) and cache.k.data_ptr() == ptr
    assert torch.equal(k[:, :, 3:4], k1) and torch.equal(v[:, :, 3:4], v1)
    assert k[:, :, 4:].abs().sum() == 0 and cache.k[0].abs().sum() == 0
    with pytest.raises(ValueError, match="needs a fresh KVCache"):
        tiny(vocab_size=11, block_size=10)(torch.zeros(2, 1, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("attention", ["torch", "sdpa", "triton"])
def test_decode_steps_equal_the_full_forward(attention):
    """The static cache's decode steps (full-length buffers masked by the device length) give
    the logits of the whole-prefix forward, for every attention kernel."""
    model = tiny(attention=attention, block_size=40, n_embd=32)
    B, T, n = 2, 6, 5
    idx = torch.randint(0, model.config.vocab_size, (B, T + n))
    with torch.no_grad():
        full = model.set_kernels(attention="torch")(idx)[:, T - 1 :]  # (B, n+1, vocab)
        model.set_kernels(attention=attention)
        cache = KVCache(model.config, B, 40)
        steps = [model(idx[:, :T], cache=cache)[:, -1]]
        cache.to_device_position()
        for t in range(T, T + n):
            steps.append(model._decode_step(idx[:, t : t + 1], cache))
    assert int(cache.length) == T + n
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_triton_generate_equals_eager_greedy():
    """Kernels on (prefill by gpt2_kernels.attention, decode steps by gpt2_kernels.decode_attention)."""
    model = tiny(block_size=40, n_embd=32)
    idx = torch.randint(0, model.config.vocab_size, (2, 5))
    eager = model.set_kernels("torch").generate(idx, 12, temperature=0)
    triton = model.set_kernels("triton").generate(idx, 12, temperature=0)
    assert_same_greedy(model.set_kernels("torch"), 5, triton, eager)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_compiled_decode_equals_eager_greedy(kernels):
    """compile=True traces the decode step whole (fullgraph) with the static cache mutated in
    place. On a CPU the CUDA-graph capture (mode="reduce-overhead") is what is left out, and
    the aot_eager backend stands in for inductor, whose C++ build costs minutes on a CI CPU;
    the kept step is reused by the next call (no new trace)."""
    model = tiny(block_size=32, n_embd=32)
    idx = torch.randint(0, model.config.vocab_size, (2, 5))
    eager = model.set_kernels("torch").generate(idx, 12, temperature=0)
    model.set_kernels(kernels)
    torch._dynamo.reset()
    got = model.generate(idx, 12, temperature=0, compile={"backend": "aot_eager"})
    assert_same_greedy(model.set_kernels("torch"), 5, got, eager)
    model.set_kernels(kernels)
    kept = model._compiled_decode
    again = model.generate(idx, 12, temperature=0, compile={"backend": "aot_eager"})
    assert model._compiled_decode is kept and torch.equal(again, got)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs CUDA")
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_cuda_graph_decode_equals_eager_greedy(kernels):
    model = tiny(block_size=64, n_embd=64).cuda()
    idx = torch.randint(0, model.config.vocab_size, (2, 5), device="cuda")
    eager = model.set_kernels("torch").generate(idx, 40, temperature=0)
    got = model.set_kernels(kernels).generate(idx, 40, temperature=0, compile=True)
    assert_same_greedy(model.set_kernels("torch"), 5, got, eager)


class CountSyncs(TorchDispatchMode):
    """Counts host synchronisations: every .item() / int(tensor) / bool(tensor) / .tolist()
    of a tensor reaches aten._local_scalar_dense."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attention,temperature", [("torch", 0), ("torch", 1.0), ("triton", 0)])
def test_host_syncs_do_not_grow_with_new_tokens(attention, temperature):
    model = tiny(attention=attention, n_embd=32)
    idx = torch.randint(0, model.config.vocab_size, (2, 4))
    counts = []
    for n in (2, 12):
        with CountSyncs() as c:
            model.generate(idx, n, temperature=temperature, generator=torch.Generator().manual_seed(1))
        counts.append(c.n)
    assert counts[0] == counts[1] <= 1, counts  # the prompt's range check only


def test_deepcopy_after_compiled_generate_decodes_with_its_own_weights():
    """The compiled decode step is kept on the model for the next call; a deep copy (whose
    weights then change) must not reuse the original's step, which reads the original's weights."""
    model = tiny(block_size=32, n_embd=32)
    idx = torch.randint(0, model.config.vocab_size, (2, 5))
    options = {"backend": "aot_eager"}
    torch._dynamo.reset()
    model.generate(idx, 6, temperature=0, compile=options)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.5 * torch.randn_like(p))
    want = twin.generate(idx, 6, temperature=0)
    got = twin.generate(idx, 6, temperature=0, compile=options)
    assert_same_greedy(twin, 5, got, want)
    assert not torch.equal(want, model.generate(idx, 6, temperature=0))  # the weights did differ


@pytest.mark.parametrize("make, match", [
    (lambda cfg: KVCache(cfg, 2, -1), "max_len must be an int >= 1, got -1"),
    (lambda cfg: KVCache(cfg, 2, 0), "max_len must be an int >= 1, got 0"),
    (lambda cfg: KVCache(cfg, 2, 4.5), "max_len must be an int >= 1, got 4.5"),
    (lambda cfg: KVCache(cfg, 0, 10), "batch_size must be an int >= 1, got 0"),
    (lambda cfg: KVCache(cfg, 2, 10, dtype=torch.int64), "dtype must be a floating-point dtype, got torch.int64"),
], ids=["max_len=-1", "max_len=0", "max_len=4.5", "batch_size=0", "int64"])
def test_kv_cache_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make(tiny().config)


@pytest.mark.parametrize("change, match", [
    (dict(n_head=3, n_embd=24), r"holds 3 heads of size 8 in 2 layers; this model has 2 heads of size 12 in 2 layers"),
    (dict(n_layer=1), r"holds 2 heads of size 12 in 1 layers; this model has 2 heads of size 12 in 2 layers"),
    (dict(dtype=torch.float64), r"holds torch.float64 keys and values, but layer 0 makes torch.float32 ones"),
    (dict(batch=3), r"the KV cache was made for batch size 3, got ids of batch size 2"),
    (dict(device="meta"), r"the KV cache is on meta, the ids on cpu"),
])
def test_kv_cache_that_does_not_fit_the_model_is_refused(change, match):
    model = tiny()
    fields = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
    cfg = GPT2Config(**{**{k: getattr(model.config, k) for k in fields},
                        **{k: v for k, v in change.items() if k not in ("dtype", "batch", "device")}})
    cache = KVCache(cfg, change.get("batch", 2), 10, dtype=change.get("dtype", torch.float32),
                    device=change.get("device"))
    with pytest.raises(ValueError, match=match), torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
    assert cache.pos == 0 and (cache.k.is_meta or cache.k.abs().sum() == 0)  # refused before anything was written
