"""`trajtune export`: turn a training checkpoint into a Hugging Face model directory (what vLLM and chat load).

    trajtune export --checkpoint runs/sft --out runs/sft/hf                 # latest checkpoint, bf16
    trajtune export --checkpoint runs/sft/checkpoints/step_00000400 --out hf400 --dtype fp16
    trajtune export --checkpoint runs/lora --out runs/lora/merged --merge   # LoRA: merged full model (+ adapter/)

One process, no GPU needed. The run's `config.yaml` (next to `checkpoints/`) says which base model and LoRA
settings the checkpoint belongs to; its paths are as the training run saw them, so run this from the same
working directory (or pass --model). Weights come from `load_consolidated_state_dict` (either engine; ZeRO
shards are merged on CPU). The tokenizer is the built dataset's (`DATA/tokenizer/`), else the base model's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="A checkpoint (run/checkpoints/step_N), a checkpoints/ folder or a run directory (latest).")
    parser.add_argument("--out", required=True, help="Output directory for the Hugging Face model.")
    parser.add_argument("--merge", action="store_true", help="LoRA runs: write a merged full model (adapter in out/adapter).")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="Dtype of the saved weights.")
    parser.add_argument("--model", default=None, help="Base model directory, if it moved since training.")


def _run_dir(checkpoint: Path) -> Path:
    """The output_dir holding config.yaml: checkpoints live at OUTPUT_DIR/checkpoints/step_N."""
    for candidate in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (candidate / "config.yaml").is_file():
            return candidate
    from ..data_builders.errors import TrajtuneError

    raise TrajtuneError(f"{checkpoint}: no config.yaml in it or the run directory above it; export needs the run's "
                        "config to know the base model and LoRA settings")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data_builders.errors import TrajtuneError
    from ..trainer.checkpoint import resolve_checkpoint
    from ..trainer.config import TrainConfig
    from ..trainer.engine import load_consolidated_state_dict
    from ..trainer.export import data_recipe, export_hf, export_tokenizer
    from ..trainer.modeling import wrap_lora
    from .config import load_config, to_dict

    ckpt = resolve_checkpoint(args.checkpoint)
    cfg = load_config(TrainConfig, _run_dir(ckpt) / "config.yaml", [f"model={args.model}"] if args.model else [])
    lora = cfg.lora if cfg.lora.r > 0 else None
    if args.merge and lora is None:
        raise TrajtuneError(f"--merge: the run in {ckpt} fine-tuned the full model (lora.r=0); there is nothing to merge")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state_dict = load_consolidated_state_dict(ckpt)
    # The skeleton: same architecture (and LoRA wrapping) as in training, on the meta device. Every weight comes
    # from the checkpoint (a LoRA run's holds the base weights too), so loading the base model's weights as well
    # would cost its whole size in memory for nothing; a LoRA merge builds its own CPU copy (`_merged_copy`).
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from ..data_builders.pretrained import resolve_pretrained

    base = resolve_pretrained(cfg.model, "model")  # a local directory, or a hub id from the cache
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
        try:  # from_config derives a generation config; the base model's own file (sampling defaults) wins
            model.generation_config = GenerationConfig.from_pretrained(base)
        except OSError:
            pass
        if lora is not None:
            model = wrap_lora(model, lora)

    tokenizer = export_tokenizer(cfg.data, base)
    # data_sha256: the data identity (older checkpoints name their manifest-file hash data_manifest_sha256)
    info = {"config": to_dict(cfg), "data_sha256": state.get("data_sha256", state.get("data_manifest_sha256")),
            "steps": state.get("step"), "checkpoint": str(ckpt), "recipe": data_recipe(cfg.data)}
    export_hf(model, state_dict, tokenizer, args.out, info, merge_lora=args.merge, dtype=args.dtype)
    kind = "merged model" if args.merge else ("LoRA adapter" if lora else "model")
    print(f"trajtune export: {kind} from {ckpt} (step {state.get('step')}) written to {args.out} ({args.dtype})")
    return 0
