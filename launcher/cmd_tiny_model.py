"""`trajtune tiny-model`: a small random Llama-style model for a CPU quick start, saved like a real checkpoint.

    trajtune tiny-model --tokenizer runs/quickstart/built/tokenizer --out runs/quickstart/tiny-llama

Its vocabulary is the tokenizer's (added special tokens included), and it is written with `save_pretrained`,
so training loads it through the same `from_pretrained` path as a real model. Nothing is downloaded.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", required=True, help="Tokenizer directory (e.g. a built dataset's tokenizer/).")
    parser.add_argument("--out", required=True, help="Directory to write the model (config, safetensors, tokenizer).")
    parser.add_argument("--hidden", type=int, default=64, help="Hidden size.")
    parser.add_argument("--layers", type=int, default=2, help="Number of transformer layers.")
    parser.add_argument("--heads", type=int, default=4, help="Attention heads (2 key/value heads when divisible).")
    parser.add_argument("--max-positions", type=int, default=4096, help="Longest sequence the model accepts.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")


def run(args: argparse.Namespace) -> int:
    from ..data_builders.tokenizer import load_tokenizer
    from ..trainer.modeling import make_tiny_llama

    tokenizer = load_tokenizer(args.tokenizer)
    kv_heads = 2 if args.heads % 2 == 0 else args.heads
    make_tiny_llama(args.out, len(tokenizer), tokenizer, seed=args.seed, hidden_size=args.hidden,
                    intermediate_size=2 * args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                    num_key_value_heads=kv_heads, max_position_embeddings=args.max_positions)
    print(f"wrote a {args.layers}-layer, {args.hidden}-wide random Llama (vocab {len(tokenizer)}) to {args.out}")
    return 0
