"""Command line: generate text, train, or look at a GPT-2 size's shapes and parameter counts.

    python -m gpt2 train --data data/shakespeare --out out/tiny --n-layer 2 --n-head 2 --n-embd 64 ...
    python -m gpt2 generate --checkpoint out/tiny --prompt "To be"
    python -m gpt2 generate --prompt "The meaning of life is" --checkpoint path/to/gpt2
    python -m gpt2 generate --prompt "Hi" --kernels triton --temperature 0      (greedy)
    python -m gpt2 info --model gpt2-xl
    python -m gpt2 info --all

Without --checkpoint the model has random weights (its size from --model), which exercises the
whole pipeline (tokenizer, kernels, KV cache) but writes gibberish. --checkpoint takes a
directory in Hugging Face's format or, when online, a Hub name such as gpt2-medium.
"""

import argparse
import os
import sys

from .config import SIZES, GPT2Config
from .options import add_kernel_flags, float_in, int_at_least, kernel_overrides, resolve_device
from .train import add_parser as add_train_parser

DTYPES = ("float32", "bfloat16", "float16")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m gpt2", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,info,train}")

    g = sub.add_parser("generate", help="continue a prompt",
                       description="Continue a prompt; prints the prompt and its continuation.")
    g.add_argument("--prompt", default="", help='text to continue (default "": start from <|endoftext|>)')
    g.add_argument("--checkpoint", metavar="DIR_OR_NAME",
                   help="an HF-format directory, or a Hub name (gpt2, gpt2-medium, ...)")
    g.add_argument("--model", choices=SIZES,
                   help="size of the random model when there is no checkpoint (default gpt2)")
    g.add_argument("--max-new-tokens", type=int_at_least(0), default=50, metavar="N",
                   help="tokens to add (default 50)")
    g.add_argument("--temperature", type=float_in(0.0), default=0.8, metavar="T",
                   help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int_at_least(1), default=200, metavar="K",
                   help="sample from the K most likely (default 200)")
    g.add_argument("--seed", type=int, help="seed for the random weights and the sampling")
    g.add_argument("--num-samples", type=int_at_least(1), default=1, metavar="N",
                   help="continuations to write (default 1)")
    # Generation computes no loss: the loss kernel has no flag here.
    add_kernel_flags(g, ("torch", "triton"), "every op at once (default torch)", ("attention", "layernorm", "gelu"),
                     default="torch")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step (no KV cache)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda when available)")
    g.add_argument("--dtype", choices=DTYPES, default="float32", help="parameter dtype (default float32)")

    i = sub.add_parser("info", help="shapes and parameter counts of a GPT-2 size",
                       description="Shapes and parameter counts, from a model built on the meta device (no memory).")
    which = i.add_mutually_exclusive_group()
    # No default here: argparse detects "--model X --all" only when X differs from the default.
    which.add_argument("--model", choices=SIZES, help="which size (default gpt2)")
    which.add_argument("--all", action="store_true", help="a table of all four sizes")
    t = add_train_parser(sub)  # gpt2/train.py: its flags live beside the loop that reads them
    parser.subcommands = {"generate": g, "info": i, "train": t}  # for errors found after parsing, with the right usage
    return parser


# ---- info --------------------------------------------------------------------------------
def meta_model(name):
    """The model of a published size, built on the meta device: shapes only, no memory, no init."""
    from .model import GPT2

    return GPT2.meta(GPT2Config.from_name(name))


def counts(model):
    """Parameter counts of a GPT2, each tensor counted once (the tied LM head is wte)."""
    t, blocks = model.transformer, model.transformer.h

    def n(module):
        return sum(p.numel() for p in module.parameters())

    block = blocks[0]
    return {
        "total": model.num_parameters(),
        "non_embedding": model.num_parameters(exclude_embeddings=True),
        "wte": t.wte.weight.numel(),
        "wpe": t.wpe.weight.numel(),
        "per_block": n(block),
        "blocks": sum(n(b) for b in blocks),
        "attention": sum(n(b.attn) for b in blocks),
        "mlp": sum(n(b.mlp) for b in blocks),
        "block_layernorms": sum(n(b.ln_1) + n(b.ln_2) for b in blocks),
        "ln_f": n(t.ln_f),
    }


def _mb(n_params, bytes_per):
    return f"{n_params * bytes_per / 2**20:,.1f} MiB"


def info(name, out):
    model = meta_model(name)
    c, k = model.config, counts(model)
    w = lambda *cells: print("  ".join(cells).rstrip(), file=out)  # noqa: E731
    w(f"{name}: n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, head_size={c.head_size}, "
      f"vocab_size={c.vocab_size}, block_size={c.block_size}, layer_norm_epsilon={c.layer_norm_epsilon}")
    w("")
    w(f"{'parameter':<36}", f"{'shape':<14}", f"{'count':>12}")
    for pname, p in model.named_parameters():  # named_parameters lists the tied lm_head once, as wte
        if ".h." in pname and not pname.startswith("transformer.h.0."):
            continue
        shown = pname.replace("transformer.h.0.", "transformer.h.N.", 1)
        w(f"{shown:<36}", f"{str(tuple(p.shape)):<14}", f"{p.numel():>12,}")
    w(f"{'lm_head.weight':<36}", f"{'(tied to wte)':<14}", f"{0:>12,}")
    w("")
    w(f"total parameters:       {k['total']:>15,}")
    w(f"without embeddings:     {k['non_embedding']:>15,}   (all but wte and wpe)")
    w(f"per block:              {k['per_block']:>15,}   (x{c.n_layer} blocks = {k['blocks']:,})")
    pct = lambda x: f"{100 * x / k['total']:.1f}%"  # noqa: E731
    w("breakdown:")
    w(f"  token embedding wte   {k['wte']:>15,}   {pct(k['wte'])}, also the LM head (tied)")
    w(f"  position table wpe    {k['wpe']:>15,}   {pct(k['wpe'])}")
    w(f"  attention             {k['attention']:>15,}   {pct(k['attention'])}  (c_attn + c_proj, all blocks)")
    w(f"  MLP                   {k['mlp']:>15,}   {pct(k['mlp'])}  (c_fc + c_proj, all blocks)")
    w(f"  LayerNorms in blocks  {k['block_layernorms']:>15,}   {pct(k['block_layernorms'])}")
    w(f"  final LayerNorm ln_f  {k['ln_f']:>15,}   {pct(k['ln_f'])}")
    w(f"weights in memory: {_mb(k['total'], 4)} float32, {_mb(k['total'], 2)} bfloat16")


def info_all(out):
    print(f"{'model':<12} {'n_layer':>7} {'n_head':>6} {'n_embd':>6} {'parameters':>15} "
          f"{'non-embedding':>15} {'per block':>12} {'float32':>12}", file=out)
    for name in SIZES:
        model = meta_model(name)
        c, k = model.config, counts(model)
        print(f"{name:<12} {c.n_layer:>7} {c.n_head:>6} {c.n_embd:>6} {k['total']:>15,} "
              f"{k['non_embedding']:>15,} {k['per_block']:>12,} {_mb(k['total'], 4):>12}", file=out)


# ---- generate ----------------------------------------------------------------------------
def generate(args, parser):
    import torch

    from .model import GPT2
    from .tokenizer import Tokenizer

    if args.checkpoint and args.model:
        parser.error("--model sets the size of a random model; a --checkpoint brings its own")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    dtype = getattr(torch, args.dtype)
    if args.seed is not None:
        torch.manual_seed(args.seed)  # also makes the random weights reproducible

    if args.checkpoint:
        model = GPT2.from_pretrained(args.checkpoint, dtype=dtype, device=device)
    else:
        print("no checkpoint: random weights, the text will be gibberish", file=sys.stderr)
        with device:
            model = GPT2.from_name(args.model or "gpt2").to(dtype).eval()
    cfg = model.config

    tok = Tokenizer()
    # An empty prompt starts from <|endoftext|>, as GPT-2 saw at the start of every document.
    prompt_ids = tok.encode(args.prompt) if args.prompt else [tok.eot_token]
    total = len(prompt_ids) + args.max_new_tokens
    if total > cfg.block_size:
        parser.error(
            f"the prompt ({len(prompt_ids)} tokens) + --max-new-tokens ({args.max_new_tokens}) = {total} "
            f"exceeds the model's block_size ({cfg.block_size})"
        )
    if cfg.vocab_size < tok.vocab_size and max(prompt_ids) >= cfg.vocab_size:
        parser.error(f"the model's vocab_size is {cfg.vocab_size}; the prompt has ids up to {max(prompt_ids)}")
    model.set_kernels(args.kernels, **kernel_overrides(args))

    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    idx = torch.tensor([prompt_ids] * args.num_samples, dtype=torch.long, device=device)
    out = model.generate(
        idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        use_cache=not args.no_cache, generator=generator,
    )
    for n, row in enumerate(out[:, len(prompt_ids):].tolist()):
        if n:
            print("-" * 40)
        # The prompt as typed, then the new tokens decoded (the ids of a model with a smaller
        # vocabulary than GPT-2's tokenizer still decode: they are GPT-2 ids too).
        print(args.prompt + tok.decode(row), flush=True)


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    # Text may hold any character; never fail on a terminal that cannot show one.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    try:
        if args.command == "info":
            info_all(sys.stdout) if args.all else info(args.model or "gpt2", sys.stdout)
        elif args.command == "train":
            from .train import given_options, train

            sub = parser.subcommands["train"]
            return train(args, given_options(sub, argv), sub)
        else:
            generate(args, parser.subcommands["generate"])
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except (ValueError, TypeError, RuntimeError, OSError) as e:
        # Errors the library raises with a message meant for the user (bad checkpoint or
        # config.json, no network, Triton kernel unavailable, ...): the message, not a traceback.
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
