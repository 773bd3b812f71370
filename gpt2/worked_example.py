"""A worked example: one tiny GPT-2, three tokens, every number on the way to the next token.

    python -m gpt2.worked_example                                # the walk-through, as text
    python -m gpt2.worked_example --walkthrough                  # the same as Markdown
    python -m gpt2.worked_example --sizes                        # the model-size table
    python -m gpt2.worked_example --bpe                          # BPE's merge loop on one word

The model is the real ``gpt2.model.GPT2`` (1 block, 2 heads, d_model 4, a 10-word toy
vocabulary) in float64, with its weights drawn from a fixed seed and rounded to one decimal so
that a reader can redo any step by hand. ``trace`` calls the model's own submodules one at a
time (ln_1, c_attn, causal_mask, c_proj, ln_2, c_fc, c_proj, ln_f, lm_head) and keeps every
intermediate; it then checks that the attention weights equal what the attention module
returns with ``need_weights=True`` and what ``record_attention`` records, that the block output equals ``block(x)`` and that the
logits equal ``model(idx)``, so the walk-through cannot drift from the code.

docs/worked-example.md holds the Markdown (``markdown``) between two marker lines, and the other
docs hold the size table (``sizes_markdown``) and the BPE example (``bpe_markdown``) the same way;
``python docs/generate.py`` rewrites those parts and tests/test_docs.py fails if one is stale.
"""

import argparse
import functools
import math
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .attention import causal_mask, record_attention
from .config import SIZES, GPT2Config
from .model import GPT2

SEED = 2019  # the year of GPT-2; any fixed value works
# A toy vocabulary of whole words, so that the ids are readable; GPT-2's own is 50,257 BPE tokens.
VOCAB = ("<|endoftext|>", " the", " cat", " sat", " on", " a", " mat", " dog", " ran", ".")
PROMPT = " the cat sat"
CONFIG = GPT2Config(n_layer=1, n_head=2, n_embd=4, vocab_size=len(VOCAB), block_size=8)

BPE_WORD = " tokenization"

# What Radford et al. (2019), Table 2, printed as each model's size; see sizes_markdown.
PAPER_PARAMETERS = {"gpt2": "117M", "gpt2-medium": "345M", "gpt2-large": "762M", "gpt2-xl": "1542M"}


# ---- the model --------------------------------------------------------------------------
def build_model(seed=SEED):
    """The tiny GPT-2 of the example: float64, weights ~ N(0, 0.5^2) rounded to 0.1.

    LayerNorm gains are 1 + N(0, 0.1^2) and its biases N(0, 0.1^2), rounded the same way, so
    that they are visible in the numbers without hiding what normalisation does.
    """
    model = GPT2(CONFIG).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters lists the tied wte/lm_head matrix once, so each tensor is drawn once.
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * noise
            else:
                value = 0.5 * noise
            p.copy_(value.round(decimals=1))
    return model


def encode(text):
    """Ids of a text made of the toy vocabulary's words (greedy, longest word first)."""
    ids, rest = [], text
    while rest:
        match = max((w for w in VOCAB if rest.startswith(w)), key=len, default=None)
        if match is None:
            raise ValueError(f"{rest!r} does not start with a word of the toy vocabulary {VOCAB}")
        ids.append(VOCAB.index(match))
        rest = rest[len(match):]
    return ids


# ---- the walk ---------------------------------------------------------------------------
def _layer_norm_parts(ln, x):
    """mean, variance, normalised x and the LayerNorm output, the last one from ``ln`` itself."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    xhat = (x - mean) / torch.sqrt(var + ln.eps)
    return mean, var, xhat, ln(x)


@torch.no_grad()
def trace(model=None, ids=None):
    """Run the model one submodule at a time and return every intermediate (B = 1, dropped).

    Raises AssertionError if any step disagrees with the model's own forward pass.
    """
    model = build_model() if model is None else model
    ids = encode(PROMPT) if ids is None else list(ids)
    idx = torch.tensor([ids])
    tr = model.transformer
    block = tr.h[0]
    attn = block.attn
    hs, d = attn.head_size, attn.d_model
    T = len(ids)
    t = {"ids": ids, "tokens": [VOCAB[i] for i in ids]}

    t["tok_emb"] = tr.wte(idx)  # (1, T, d)
    t["pos_emb"] = tr.wpe.weight[:T][None]  # (1, T, d)
    x0 = tr.wpe(t["tok_emb"])  # the module adds the position rows itself
    torch.testing.assert_close(x0, t["tok_emb"] + t["pos_emb"], rtol=0, atol=0)
    t["x0"] = x0

    t["ln1_mean"], t["ln1_var"], t["ln1_xhat"], h = _layer_norm_parts(block.ln_1, x0)
    t["ln1"] = h

    qkv = attn.c_attn(h)  # (1, T, 3d)
    t["qkv"] = qkv
    q, k, v = qkv.split(d, dim=2)
    t["q"], t["k"], t["v"] = q, k, v
    q, k, v = (attn._heads(z) for z in (q, k, v))  # (1, nh, T, hs)
    mask = causal_mask(T, T)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (1, nh, T, T)
    masked = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(masked, dim=-1)
    heads = weights @ v  # (1, nh, T, hs)
    t.update(q_h=q, k_h=k, v_h=v, mask=mask, scores=scores, masked=masked, weights=weights, heads=heads)
    concat = heads.transpose(1, 2).reshape(1, T, d)
    t["concat"] = concat
    a = attn.c_proj(concat)
    t["attn_out"] = a
    a_ref, w_ref = attn(h, need_weights=True)
    torch.testing.assert_close(w_ref, weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(a_ref, a, rtol=0, atol=1e-12)

    x1 = x0 + a
    t["x1"] = x1
    t["ln2_mean"], t["ln2_var"], t["ln2_xhat"], h2 = _layer_norm_parts(block.ln_2, x1)
    t["ln2"] = h2
    pre = block.mlp.c_fc(h2)  # (1, T, 4d)
    act = F.gelu(pre, approximate="tanh")
    m = block.mlp.c_proj(act)
    torch.testing.assert_close(block.mlp(h2), m, rtol=0, atol=1e-12)
    t.update(mlp_pre=pre, mlp_act=act, mlp_out=m)
    x2 = x1 + m
    t["x2"] = x2
    torch.testing.assert_close(block(x0), x2, rtol=0, atol=1e-12)

    t["lnf_mean"], t["lnf_var"], t["lnf_xhat"], hf = _layer_norm_parts(tr.ln_f, x2)
    t["lnf"] = hf
    logits = model.lm_head(hf)  # (1, T, V), the lm_head weight *is* wte's
    assert model.lm_head.weight is tr.wte.weight
    t["logits"] = logits
    t["probs"] = torch.softmax(logits, dim=-1)
    with record_attention(model) as model_w:
        model_logits = model(idx)
    torch.testing.assert_close(model_logits, logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(model_w[0], weights, rtol=0, atol=1e-12)
    return t


# ---- printing ---------------------------------------------------------------------------
def fmt(v, decimals=4):
    """One number with fixed decimals; -0.0000 prints as 0.0000, and -inf as -inf."""
    v = float(v)
    if math.isinf(v):
        return "-inf" if v < 0 else "inf"
    s = f"{v:.{decimals}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def matrix(m, rows, cols, width=8, decimals=4):
    """A 2-D tensor as aligned text with row and column labels."""
    m = m.reshape(len(rows), len(cols)) if m.dim() != 2 else m
    rw = max(len(r) for r in rows)
    lines = [" " * rw + "".join(f"{c:>{width}}" for c in cols)]
    for r, row in zip(rows, m.tolist()):
        lines.append(f"{r:<{rw}}" + "".join(f"{fmt(v, decimals):>{width}}" for v in row))
    return "\n".join(lines)


@dataclass
class Section:
    title: str
    parts: list = field(default_factory=list)  # ("text", str) | ("math", str) | ("block", str)

    def text(self, s):
        self.parts.append(("text", s))
        return self

    def math(self, latex, plain):
        """A display formula: LaTeX for Markdown, ``plain`` for the terminal."""
        self.parts.append(("math", (latex, plain)))
        return self

    def block(self, s):
        self.parts.append(("block", s))
        return self


def _short(word):
    """A word as a column label: no leading space, <|endoftext|> as <eot>."""
    return "<eot>" if word == "<|endoftext|>" else word.strip() or word


def _labels(tokens):
    return [f"{i}:{_short(tok)}" for i, tok in enumerate(tokens)]


def sections(t=None, model=None):
    """The walk-through as a list of Sections (numbers from ``trace``)."""
    model = build_model() if model is None else model
    t = trace(model) if t is None else t
    cfg = model.config
    nh, hs, d = cfg.n_head, cfg.head_size, cfg.n_embd
    rows = _labels(t["tokens"])
    dims = [f"d{i}" for i in range(d)]
    T = len(rows)
    words = [_short(w) for w in VOCAB]
    sq = lambda x: x[0]  # drop the batch dimension  # noqa: E731
    out = []

    s = Section("0. The model")
    s.text(
        f"`GPT2Config(n_layer={cfg.n_layer}, n_head={nh}, n_embd={d}, vocab_size={cfg.vocab_size}, "
        f"block_size={cfg.block_size})`: one decoder block, {nh} heads of size d_k = {hs}, in float64. "
        f"It has {model.num_parameters()} parameters, drawn from `torch.Generator().manual_seed({SEED})` "
        f"(N(0, 0.5²), LayerNorm gains 1 + N(0, 0.1²)) and rounded to one decimal. The vocabulary is a "
        f"toy one of {len(VOCAB)} whole words, so that ids are easy to read: "
        + ", ".join(f"{i} = `{w!r}`" for i, w in enumerate(VOCAB)) + "."
    )
    s.text("The weights that the steps below use (PyTorch stores a Linear's weight as (out, in), "
           "and computes x Wᵀ + b):")
    sd = dict(model.named_parameters())
    block = "transformer.h.0."
    w_attn = sd[block + "attn.c_attn.weight"]
    for name, m, r, c in (
        ("wte (token embedding; also the LM head)", sd["transformer.wte.weight"], _labels(VOCAB), dims),
        (f"wpe rows 0..{T - 1} (position embedding)", sd["transformer.wpe.weight"][:T], [f"pos {i}" for i in range(T)], dims),
        ("W_Q = c_attn.weight[0:4]", w_attn[:d], [f"q{i}" for i in range(d)], dims),
        ("W_K = c_attn.weight[4:8]", w_attn[d:2 * d], [f"k{i}" for i in range(d)], dims),
        ("W_V = c_attn.weight[8:12]", w_attn[2 * d:], [f"v{i}" for i in range(d)], dims),
        ("c_attn.bias (b_Q | b_K | b_V)", sd[block + "attn.c_attn.bias"][None], ["b"], [f"q{i}" for i in range(d)] + [f"k{i}" for i in range(d)] + [f"v{i}" for i in range(d)]),
        ("attn.c_proj.weight, bias as last column", torch.cat([sd[block + "attn.c_proj.weight"], sd[block + "attn.c_proj.bias"][:, None]], 1), [f"o{i}" for i in range(d)], dims + ["bias"]),
        ("mlp.c_fc.weight, bias as last column", torch.cat([sd[block + "mlp.c_fc.weight"], sd[block + "mlp.c_fc.bias"][:, None]], 1), [f"h{i}" for i in range(4 * d)], dims + ["bias"]),
        ("mlp.c_proj.weight (transposed: one row per hidden unit), bias as last row", torch.cat([sd[block + "mlp.c_proj.weight"].T, sd[block + "mlp.c_proj.bias"][None]], 0), [f"h{i}" for i in range(4 * d)] + ["bias"], dims),
        ("LayerNorm gains (weight) and biases", torch.stack([sd[block + "ln_1.weight"], sd[block + "ln_1.bias"], sd[block + "ln_2.weight"], sd[block + "ln_2.bias"], sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]]), ["ln_1 γ", "ln_1 β", "ln_2 γ", "ln_2 β", "ln_f γ", "ln_f β"], dims),
    ):
        s.block(f"{name}\n{matrix(m, r, c, width=6, decimals=1)}")
    out.append(s)

    s = Section("1. Tokens to ids")
    s.text(f"The prompt `{PROMPT!r}` is cut into the vocabulary's words: ids {t['ids']}. "
           "(The real model uses byte-level BPE, `gpt2.Tokenizer`; see docs/theory.md, section 1.)")
    out.append(s)

    s = Section("2. Token and position embeddings")
    s.text("Each id selects a row of wte; each position p selects row p of wpe; their sum is the "
           "residual stream x₀ that the block reads and writes.")
    s.math(r"x_0[t] = W_{te}[\mathrm{id}_t] + W_{pe}[t]", "x0[t] = wte[id_t] + wpe[t]")
    s.block("token embedding  wte[ids]\n" + matrix(sq(t["tok_emb"]), rows, dims))
    s.block("position embedding  wpe[0..T-1]\n" + matrix(sq(t["pos_emb"]), rows, dims))
    s.block("x0 = token + position\n" + matrix(sq(t["x0"]), rows, dims))
    out.append(s)

    def ln_section(title, key, src, name):
        s = Section(title)
        s.text(f"`{name}` normalises each row of {src} to mean 0 and variance 1 (over the d = {d} "
               "features, variance without Bessel's correction), then scales by γ and shifts by β.")
        s.math(r"\mu = \tfrac{1}{d}\sum_i x_i,\quad \sigma^2 = \tfrac{1}{d}\sum_i (x_i-\mu)^2,\quad "
               r"\hat x = \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}},\quad y = \gamma \odot \hat x + \beta",
               "mean = sum(x)/d,  var = sum((x - mean)^2)/d,  x̂ = (x - mean)/sqrt(var + eps),  y = γ*x̂ + β")
        mv = torch.cat([sq(t[key + "_mean"]), sq(t[key + "_var"])], dim=-1)
        s.block("mean and variance per row\n" + matrix(mv, rows, ["mean", "var"]))
        s.block("x̂ (normalised)\n" + matrix(sq(t[key + "_xhat"]), rows, dims))
        s.block(f"{name}(x) = γ ⊙ x̂ + β\n" + matrix(sq(t[key]), rows, dims))
        return s

    out.append(ln_section("3. LayerNorm before attention (ln_1)", "ln1", "x₀", "ln_1"))

    s = Section("4. Queries, keys and values")
    s.text(f"One matmul, `c_attn`, makes Q, K and V side by side ({3 * d} columns); each is then cut into "
           f"{nh} heads of {hs} columns: head h owns columns {hs}h..{hs}h+{hs - 1} of Q, K and V.")
    s.math(r"[\,Q \mid K \mid V\,] = \mathrm{LN}_1(x_0)\, W_{attn}^\top + b_{attn}", "[Q | K | V] = ln_1(x0) @ W_attnᵀ + b_attn")
    for key in ("q", "k", "v"):
        s.block(f"{key.upper()}\n" + matrix(sq(t[key]), rows, dims))
    out.append(s)

    for h in range(nh):
        s = Section(f"5.{h + 1} Head {h}: scores, mask, softmax, output")
        cols = [f"{key}{j}" for key in ("q",) for j in range(hs)]
        s.text(f"Head {h} sees Q, K and V columns {hs * h}..{hs * h + hs - 1}. Every query is dotted with "
               f"every key and divided by √d_k = √{hs}; the causal mask then sets the scores of later "
               "keys to −∞ so that after the softmax they get weight 0.")
        s.math(r"A = \mathrm{softmax}\!\left(\frac{Q_h K_h^\top}{\sqrt{d_k}} + M\right),\qquad O_h = A\,V_h",
               "A = softmax(Q_h K_hᵀ / sqrt(d_k) + M),   O_h = A V_h")
        s.block(f"Q_{h}\n" + matrix(t["q_h"][0, h], rows, cols))
        s.block(f"K_{h}\n" + matrix(t["k_h"][0, h], rows, [f"k{j}" for j in range(hs)]))
        s.block(f"V_{h}\n" + matrix(t["v_h"][0, h], rows, [f"v{j}" for j in range(hs)]))
        keys = [f"key {r}" for r in rows]
        s.block(f"scores Q_{h} K_{h}ᵀ / √{hs}   (row: query, column: key)\n" + matrix(t["scores"][0, h], rows, keys, 11))
        if h == 0:
            mask = torch.zeros(T, T, dtype=torch.float64).masked_fill(~t["mask"], float("-inf"))
            s.block("causal mask M (the same for every head)\n" + matrix(mask, rows, keys, 11))
        s.block("scores + M\n" + matrix(t["masked"][0, h], rows, keys, 11))
        w = t["weights"][0, h]
        s.block("attention weights A = softmax(scores + M), each row sums to 1\n" + matrix(w, rows, keys, 11))
        last = T - 1
        best = int(w[last].argmax())
        s.text(f"The first token can only attend to itself (weight {fmt(w[0, 0])}). The last token, "
               f"`{t['tokens'][last]!r}`, spreads its attention over all {T} positions and puts the most, "
               f"{fmt(w[last, best])}, on `{t['tokens'][best]!r}`.")
        s.block(f"head output O_{h} = A V_{h}\n" + matrix(t["heads"][0, h], rows, [f"o{j}" for j in range(hs)]))
        out.append(s)

    s = Section("6. Heads concatenated and projected")
    s.text("The heads' outputs are laid side by side (head 0 in columns 0..1, head 1 in 2..3) and mixed by "
           "`attn.c_proj`. The result equals what `block.attn(ln_1(x0), need_weights=True)` returns, and so "
           "do the attention weights above (checked on every run).")
    s.math(r"\mathrm{MHA}(x) = [\,O_0 \mid O_1\,]\, W_O^\top + b_O", "MHA(x) = [O_0 | O_1] @ W_Oᵀ + b_O")
    s.block("[O_0 | O_1]\n" + matrix(sq(t["concat"]), rows, dims))
    s.block("attention output\n" + matrix(sq(t["attn_out"]), rows, dims))
    out.append(s)

    s = Section("7. First residual")
    s.math(r"x_1 = x_0 + \mathrm{MHA}(\mathrm{LN}_1(x_0))", "x1 = x0 + MHA(ln_1(x0))")
    s.block("x1\n" + matrix(sq(t["x1"]), rows, dims))
    out.append(s)

    out.append(ln_section("8. LayerNorm before the MLP (ln_2)", "ln2", "x₁", "ln_2"))

    s = Section("9. MLP with the tanh GELU")
    s.text(f"`mlp.c_fc` widens each position to 4d = {4 * d} features, GELU (tanh form) bends them, "
           f"`mlp.c_proj` brings them back to d = {d}. Negative inputs are squashed towards 0, "
           "positive ones pass almost unchanged.")
    s.math(r"\mathrm{GELU}(u) = \tfrac12 u\left(1+\tanh\!\left(\sqrt{2/\pi}\,(u + 0.044715\,u^3)\right)\right)",
           "GELU(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)))")
    hid = [f"h{i}" for i in range(4 * d)]
    s.block("c_fc(ln_2(x1))  (pre-activation)\n" + matrix(sq(t["mlp_pre"]), rows, hid))
    s.block("GELU\n" + matrix(sq(t["mlp_act"]), rows, hid))
    s.block("c_proj(GELU)  (MLP output)\n" + matrix(sq(t["mlp_out"]), rows, dims))
    out.append(s)

    s = Section("10. Second residual: the block's output")
    s.text("This equals `block(x0)` (checked on every run).")
    s.math(r"x_2 = x_1 + \mathrm{MLP}(\mathrm{LN}_2(x_1))", "x2 = x1 + MLP(ln_2(x1))")
    s.block("x2\n" + matrix(sq(t["x2"]), rows, dims))
    out.append(s)

    out.append(ln_section("11. Final LayerNorm (ln_f)", "lnf", "x₂", "ln_f"))

    s = Section("12. LM head: logits over the vocabulary")
    s.text("The LM head has no weight of its own: it is wte, so each logit is the dot product of the final "
           "hidden state with a token's embedding. These logits equal `model(idx)` (checked on every run).")
    s.math(r"\mathrm{logits}[t, w] = \mathrm{LN}_f(x_2)[t] \cdot W_{te}[w]", "logits[t, w] = ln_f(x2)[t] · wte[w]")
    s.block("logits\n" + matrix(sq(t["logits"]), rows, words, 9))
    out.append(s)

    s = Section("13. Probabilities and the next token")
    s.math(r"p(w \mid \text{tokens}_{\le t}) = \frac{e^{\mathrm{logits}[t,w]}}{\sum_{w'} e^{\mathrm{logits}[t,w']}}",
           "p(w | tokens 0..t) = exp(logits[t, w]) / sum over w' of exp(logits[t, w'])")
    p = sq(t["probs"])
    s.block("probabilities (each row sums to 1)\n" + matrix(p, rows, words, 9))
    top = torch.topk(p[-1], 3)
    ranked = ", ".join(f"`{VOCAB[int(i)]!r}` {fmt(v)}" for v, i in zip(top.values, top.indices))
    s.text(f"Row t is the model's guess for token t+1. After `{PROMPT!r}` the most likely next words are "
           f"{ranked}. Greedy decoding (temperature 0) picks `{VOCAB[int(top.indices[0])]!r}`; sampling "
           "draws from the row, after dividing the logits by a temperature and, with top-k, keeping the "
           "k largest. The weights are random, so the guess is too: training is what makes it sensible.")
    out.append(s)
    return out


def render(secs, markdown=False):
    """Sections as Markdown (``###`` headings, ```` ```math ```` and ```` ```text ```` blocks) or plain text."""
    lines = []
    for s in secs:
        if markdown:
            lines += [f"### {s.title}", ""]
        else:
            lines += [s.title, "=" * len(s.title), ""]
        for kind, body in s.parts:
            if kind == "text":
                lines += [body, ""]
            elif kind == "math":
                lines += (["```math", body[0], "```", ""] if markdown else [f"    {body[1]}", ""])
            else:
                lines += (["```text", body, "```", ""] if markdown else [body, ""])
    return "\n".join(lines).rstrip() + "\n"


def markdown():
    """The generated body of docs/worked-example.md."""
    return render(sections(), markdown=True)


# ---- model sizes ------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _model_sizes():
    out = {}
    for name in SIZES:
        model = GPT2.meta(GPT2Config.from_name(name))
        out[name] = (model.config, model.num_parameters())
    return out


def model_sizes():
    """{name: (config, parameters)} for the four published sizes, counted on the meta device
    (shapes only, no memory), with the tied LM head counted once."""
    return dict(_model_sizes())


def sizes_markdown():
    """The model-size table of the docs, with parameter counts computed from the model."""
    lines = [
        "| Model | Layers | d_model | Heads | d_head | Parameters (this code) | Paper's Table 2 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (c, n) in model_sizes().items():
        lines.append(
            f"| `{name}` | {c.n_layer} | {c.n_embd} | {c.n_head} | {c.head_size} | {n:,} | {PAPER_PARAMETERS[name]} |"
        )
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def _bpe_tokenizer():
    from .bpe import BPETokenizer

    return BPETokenizer.from_files()


def bpe_markdown(word=BPE_WORD):
    """GPT-2's BPE merge loop on one pre-tokenized piece, every step (``gpt2.bpe``)."""
    tok = _bpe_tokenizer()
    steps = tok.merge_steps(word)
    ids = tok.encode(word)
    width = len(str(len(steps) - 1))
    lines = ["```text"]
    for n, symbols in enumerate(steps):
        lines.append(f"step {n:>{width}}: " + " ".join(symbols))
    lines.append("```")
    lines.append("")
    lines.append(
        f"`{word!r}` starts as its {len(steps[0])} bytes (\"Ġ\" is how the vocabulary files print the space "
        f"byte) and ends, after {len(steps) - 1} merges, as {len(ids)} tokens: "
        + ", ".join(f"`{tok.decode([i])!r}` = {i}" for i in ids) + "."
    )
    return "\n".join(lines) + "\n"


# ---- command line -----------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gpt2.worked_example", description=__doc__.split("\n")[0])
    p.add_argument("--walkthrough", "--markdown", dest="walkthrough", action="store_true",
                   help="print the walk-through as Markdown (the body of docs/worked-example.md)")
    p.add_argument("--sizes", action="store_true", help="print the model-size table (Markdown)")
    p.add_argument("--bpe", action="store_true", help="print the BPE merge example (Markdown)")
    args = p.parse_args(argv)
    chosen = [f for flag, f in ((args.walkthrough, markdown), (args.sizes, sizes_markdown), (args.bpe, bpe_markdown)) if flag]
    for f in chosen:
        sys.stdout.write(f())
    if not chosen:
        sys.stdout.write(render(sections()))


if __name__ == "__main__":
    main()
