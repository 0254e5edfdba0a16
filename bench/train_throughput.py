"""Training throughput: trajtune's step vs TRL's SFTTrainer (padding-free), same model, data and device, one run.

Prints trained tokens/s/GPU, total tokens/s/GPU and MFU for both, and the ratio. The model is random-init with
the shape of a preset (default: Qwen2.5-1.5B, 4096-token packs); the data are synthetic samples packed into rows
of --seq-len, with a trained span at the end of each sample (like assistant turns). Both sides get exactly the
same packs, one per micro-batch: TRL receives each pack as one pre-tokenized row with `seq_lengths` (its
padding-free collator turns that into position_ids) and labels, so only the step machinery differs.

trajtune's side is the real loop's pieces: `load_model` (attention backend: flash-attn 2 > torch varlen > SDPA),
`trainer.data.collate` and `trainer.loop.token_loss_sum`, with weights in --dtype and torch AdamW (fused on CUDA).
TRL gets the best backend transformers has here without trajtune (flash_attention_2 if installed, else SDPA).

    python bench/train_throughput.py                      # on a GPU: Qwen2.5-1.5B shape, 4096 packed
    python bench/train_throughput.py --preset tiny --steps 4 --warmup 1 --seq-len 256   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRESETS = {
    # Qwen/Qwen2.5-1.5B config.json (architecture only; weights are random).
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, tie_word_embeddings=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Model
    p.add_argument("--preset", choices=sorted(PRESETS), default="qwen2.5-1.5b", help="Model shape.")
    p.add_argument("--layers", type=int, default=None, help="Override the number of layers (memory/speed).")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="Weights dtype (default bf16 on CUDA).")
    p.add_argument("--attn", default="auto", help="trajtune attention backend (auto|flash|varlen|sdpa).")
    p.add_argument("--gradient-checkpointing", action="store_true", help="Recompute activations (both sides).")
    # Data
    p.add_argument("--seq-len", type=int, default=4096, help="Pack length in tokens.")
    p.add_argument("--micro-batch", type=int, default=1, help="Packs per step (both sides).")
    p.add_argument("--mean-sample", type=int, default=None, help="Mean sample length (default seq_len / 6).")
    # Runtime
    p.add_argument("--steps", type=int, default=20, help="Timed steps per side.")
    p.add_argument("--warmup", type=int, default=5, help="Untimed steps first (kernel autotune, allocator).")
    p.add_argument("--skip-trl", action="store_true", help="Only measure trajtune.")
    p.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_packs(n_packs: int, seq_len: int, vocab: int, mean_sample: int, seed: int) -> list[dict]:
    """Packs of whole synthetic samples filling up to seq_len (first fit in order); each sample's last ~40% is
    trained. Rows: input_ids, labels (-100 = not trained, aligned with input_ids), position_ids, seq_lengths."""
    rng = random.Random(seed)
    packs = []
    while len(packs) < n_packs:
        ids, labels, pos, lens = [], [], [], []
        while True:
            n = max(16, min(seq_len, int(rng.lognormvariate(0, 0.6) * mean_sample)))
            if lens and len(ids) + n > seq_len:
                break
            n = min(n, seq_len - len(ids))
            sample = [rng.randrange(3, vocab) for _ in range(n)]
            cut = int(n * 0.6)
            ids += sample
            labels += [-100] * cut + sample[cut:]
            pos += list(range(n))
            lens.append(n)
            if len(ids) >= seq_len:
                break
        packs.append({"input_ids": ids, "labels": labels, "position_ids": pos, "seq_lengths": lens})
    return packs


def write_model(out_dir: str, preset: str, layers: int | None, device) -> str:
    """Random-init model of the preset's shape, saved with save_pretrained (both sides load it from disk)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trajtune.data_builders.tokenizer import byte_level_tokenizer

    # A tokenizer beside the weights, so TRL finds one (it only uses pad/eos ids; the data are token ids already).
    tokenizer = byte_level_tokenizer(None, extra_special_tokens=["<|im_end|>"])
    fields = dict(PRESETS[preset])
    if layers:
        fields["num_hidden_layers"] = layers
    config = Qwen2Config(**fields, use_cache=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):  # init on the GPU: random init of 1.5B weights on CPU takes minutes
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    del model
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_trajtune(model_dir, packs, args, dtype, device) -> dict:
    """The loop's step: collate -> forward (position_ids, no mask, no cache) -> token CE sum / trained -> AdamW."""
    import torch

    from trajtune.trainer.attention import cu_seqlens_from_position_ids
    from trajtune.trainer.data import IGNORE, collate
    from trajtune.trainer.loop import token_loss_sum
    from trajtune.trainer.modeling import load_model

    model, backend = load_model(model_dir, dtype=dtype, attn=args.attn,
                                gradient_checkpointing=args.gradient_checkpointing)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    times, totals, trained = [], [], []
    batches = [packs[i:i + args.micro_batch] for i in range(0, len(packs), args.micro_batch)]
    for i, rows in enumerate(batches):
        _sync(device)
        t0 = time.perf_counter()
        batch = collate(rows)
        extra = {}
        if backend not in ("sdpa", "eager"):
            # Varlen kernels: sample boundaries computed once here on CPU, not from position_ids in every layer.
            cu, longest = cu_seqlens_from_position_ids(batch["position_ids"])
            cu = cu.to(device)
            extra = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        logits = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                       use_cache=False, **extra).logits
        n_trained = int((batch["targets"] != IGNORE).sum())
        loss = token_loss_sum(logits, batch["targets"]) / max(n_trained, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            totals.append(int(batch["lengths"].sum()))
            trained.append(n_trained)
    mem = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    del model, opt
    return {"backend": backend, "times": times, "total": totals, "trained": trained, "mem_gb": mem,
            "last_loss": loss.item()}


def bench_trl(model_dir, packs, args, dtype, device) -> dict:
    """TRL SFTTrainer, padding_free=True, each pack one pre-tokenized row (seq_lengths -> position_ids)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trajtune.trainer.attention import flash_attn_installed

    attn = "flash_attention_2" if (device.type == "cuda" and flash_attn_installed()) else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    n_steps = len(packs) // args.micro_batch
    data = Dataset.from_list([{k: p[k] for k in ("input_ids", "labels", "seq_lengths")} for p in packs])
    out = tempfile.mkdtemp(prefix="trl-bench-")
    config = SFTConfig(output_dir=out, per_device_train_batch_size=args.micro_batch, max_steps=n_steps,
                       learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0, padding_free=True,
                       packing=False, max_length=None, bf16=dtype == torch.bfloat16, use_cpu=device.type != "cuda",
                       gradient_checkpointing=args.gradient_checkpointing, report_to="none", save_strategy="no",
                       logging_steps=10_000, dataloader_num_workers=0, max_grad_norm=1.0, optim="adamw_torch_fused"
                       if device.type == "cuda" else "adamw_torch", shuffle_dataset=False, disable_tqdm=True,
                       seed=args.seed, train_sampling_strategy="sequential")  # same pack order as ours
    trainer = SFTTrainer(model=model, args=config, train_dataset=data)
    collator = trainer.data_collator
    counts: list[tuple[int, int]] = []

    def counting_collator(examples):
        batch = collator(examples)
        counts.append((int(batch["input_ids"].numel()), int((batch["labels"] != -100).sum())))
        return batch

    trainer.data_collator = counting_collator
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            _sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            _sync(device)
            times.append(time.perf_counter() - self.t0)

    trainer.add_callback(Timer())
    trainer.train()
    mem = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    # The dataloader may prefetch one batch ahead: step i used counts[i].
    counts = counts[: len(times)]
    w = args.warmup
    return {"backend": attn, "times": times[w:], "total": [c[0] for c in counts[w:]],
            "trained": [c[1] for c in counts[w:]], "mem_gb": mem}


def summarize(raw: dict, flops_tok: float, peak: float | None) -> dict:
    seconds = sum(raw["times"])
    total_tps = sum(raw["total"]) / seconds
    out = {"attention": raw["backend"], "steps_timed": len(raw["times"]),
           "median_step_s": statistics.median(raw["times"]), "trained_tokens_per_s": sum(raw["trained"]) / seconds,
           "total_tokens_per_s": total_tps, "trained_tokens": sum(raw["trained"]), "mfu": total_tps * flops_tok / peak if peak else None,
           "peak_mem_gb": raw["mem_gb"]}
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from trajtune.trainer.metrics import peak_flops
    from trajtune.trainer.modeling import flops_per_token

    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    tmp = tempfile.mkdtemp(prefix="throughput-")
    model_dir = write_model(tmp, args.preset, args.layers, device)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    n_packs = (args.warmup + args.steps) * args.micro_batch
    packs = make_packs(n_packs, args.seq_len, config.vocab_size, args.mean_sample or args.seq_len // 6, args.seed)
    flops_tok = flops_per_token(config, args.seq_len)
    peak = peak_flops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; peak {peak / 1e12:.0f} TFLOP/s" if peak else f"device {name}; peak unknown (no MFU)")
    print(f"model {args.preset} ({config.num_hidden_layers} layers, {flops_tok / 1e9:.3g} GFLOP/token fwd+bwd) "
          f"dtype {dtype}; {args.micro_batch} x {args.seq_len}-token "
          f"packs, {sum(len(p['seq_lengths']) for p in packs) / len(packs):.1f} samples/pack; "
          f"{args.warmup} warmup + {args.steps} timed steps", flush=True)

    results = {"trajtune": summarize(bench_trajtune(model_dir, packs, args, dtype, device), flops_tok, peak)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if not args.skip_trl:
        results["trl"] = summarize(bench_trl(model_dir, packs, args, dtype, device), flops_tok, peak)

    print(f"\n{'':10} {'attention':18} {'step s':>8} {'trained tok/s/GPU':>18} {'total tok/s/GPU':>16} "
          f"{'MFU':>6} {'mem GB':>7}")
    for side, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "n/a"
        print(f"{side:10} {r['attention']:18} {r['median_step_s']:8.3f} {r['trained_tokens_per_s']:18.1f} "
              f"{r['total_tokens_per_s']:16.1f} {mfu:>6} {mem:>7}")
    if "trl" in results:
        ratio = results["trajtune"]["trained_tokens_per_s"] / results["trl"]["trained_tokens_per_s"]
        results["speedup_vs_trl"] = ratio
        print(f"\ntrajtune / TRL (trained tokens/s): {ratio:.2f}x; trained tokens timed: "
              f"{results['trajtune']['trained_tokens']} vs {results['trl']['trained_tokens']} (same packs)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": name, "peak_flops": peak, **results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
