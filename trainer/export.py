"""Export a trained model as a Hugging Face directory that `from_pretrained` and vLLM load as is.

Full fine-tuning: `out_dir` gets config.json (dtype set to the export dtype, `use_cache` back on for inference),
16-bit safetensors, generation_config.json (config.json and it list the chat template's stop tokens as eos, see
`stop_token_ids`), the tokenizer with its chat template, and trajtune.json (run config,
data manifest hash, steps, format). LoRA: `out_dir` is the peft adapter (adapter_config.json +
adapter_model.safetensors, loaded with `PeftModel.from_pretrained(base, out_dir)`); with `merge_lora` it is
instead the merged full model and the adapter goes to `out_dir/adapter`. Under ZeRO-3 the caller passes the
consolidated state dict (rank 0) because the live parameters are shards; the merge then happens on a CPU copy
rebuilt from the config, which also leaves the training model untouched. Call on rank 0 only.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..data_builders.errors import TrajtuneError

if TYPE_CHECKING:
    import torch

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
MAX_SHARD = "5GB"  # several files load in parallel; vLLM and from_pretrained read the index


def resolve_dtype(dtype) -> torch.dtype:
    """'bf16' | 'fp16' | 'fp32' | a torch.dtype -> torch.dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise TrajtuneError(f"export dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


def export_tokenizer(data: str | Path, model: str | Path, data_tokenizer=None):
    """The tokenizer an export ships: the built dataset's (`DATA/tokenizer/`, what training saw), its chat template
    the one of the build's rendering recipe (`export_chat_template`: a prompt format written in), else the base
    model's. `data_tokenizer`: DATA/tokenizer already loaded (trainer/data.py `load_data_tokenizer`); changed in
    place. Raises TrajtuneError when neither loads, since a model without its tokenizer is not usable."""
    from transformers import AutoTokenizer

    from ..data_builders.pretrained import resolve_pretrained

    tok_dir = Path(data) / "tokenizer"
    try:
        tok = data_tokenizer if data_tokenizer is not None and tok_dir.is_dir() else AutoTokenizer.from_pretrained(
            str(tok_dir) if tok_dir.is_dir() else resolve_pretrained(model, "model"))
    except (OSError, ValueError) as e:
        raise TrajtuneError(f"no tokenizer in {tok_dir} nor in {model} ({e}); the export would not be usable") from e
    recipe = data_recipe(data)
    if recipe is not None and tok_dir.is_dir():  # the chat template renders tools and calls as training did
        from ..data_builders.render.recipe import RenderRecipe, export_chat_template

        tok.chat_template = export_chat_template(tok, RenderRecipe.from_dict(recipe, str(Path(data) / "manifest.json")))
    return tok


def data_recipe(data: str | Path) -> dict | None:
    """The rendering recipe of the built dataset `data` (its manifest's "recipe"), None for a build without one."""
    manifest = Path(data) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("recipe") if manifest.is_file() else None
    except (OSError, ValueError):
        return None  # the trainer reports a broken manifest itself, before it gets here


def _process_umask() -> int:
    """The process umask. `os` has no getter, so set a strict one and restore at once (a file another thread
    creates in between gets a stricter mode, never a looser one)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def match_umask(directory: str | Path) -> None:
    """Give the `*.safetensors` files under `directory` the mode a plain `open()` gives (0o666 minus the umask).

    safetensors writes through a private temporary file (mode 0600) and renames it, so without this the
    weights are the one part of a model directory that others (a shared project group, vLLM under another
    account) cannot read, while config and tokenizer can.
    """
    mode = 0o666 & ~_process_umask()
    for path in Path(directory).rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def _cast(state_dict: dict, dtype: torch.dtype) -> dict:
    """Floating tensors to `dtype` on CPU; integer buffers untouched."""
    return {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in state_dict.items()
    }


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _as_list(ids) -> list[int]:
    return [] if ids is None else [int(i) for i in (ids if isinstance(ids, list | tuple) else [ids])]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids generation stops at: the model's own eos (generation config, then config), the chat template's
    stop tokens (`template_stop_tokens`, every kind of message) and the tokenizer's eos, each once, in that order. A base model fine-tuned on ChatML data
    stops at `<|endoftext|>` by itself but ends every turn with `<|im_end|>`, so both must stop generation."""
    from ..data_builders.render import template_stop_tokens

    gen = getattr(model, "generation_config", None)
    ids = _as_list(getattr(gen, "eos_token_id", None)) + _as_list(model.config.eos_token_id)
    stops = [*template_stop_tokens(tokenizer).tokens(), tokenizer.eos_token] if tokenizer is not None else []
    for token in filter(None, stops):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) == 1:  # a stop "token" the vocabulary splits cannot be an eos id
            ids.append(encoded[0])
    return list(dict.fromkeys(ids))


def _inference_config(config, dtype: torch.dtype, eos_ids: list[int]):
    """A copy of the model config as inference wants it: cache on, dtype = the saved weights' dtype, every stop
    id as eos (a list when several, as Llama-3.1's config.json has)."""
    cfg = copy.deepcopy(config)
    cfg.use_cache = True
    cfg.dtype = dtype
    if eos_ids:
        cfg.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    return cfg


def _check_covers(model, state_dict: dict) -> None:
    """A partial state dict would save a partial model that loads with random weights: refuse it."""
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if model.config.tie_word_embeddings else set()
    missing = [k for k in model.state_dict() if k not in state_dict and k not in tied]
    if missing:
        raise TrajtuneError(f"export: the state dict lacks {len(missing)} of the model's weights (e.g. {missing[:3]}); "
                            "pass the full consolidated state dict (ZeRO-3: gathered on rank 0)")


def _save_full(model, state_dict: dict, out: Path, dtype: torch.dtype, tokenizer) -> None:
    """Weights, config.json and generation_config.json (eos = `stop_token_ids`, which transformers' generate
    and vLLM both stop at)."""
    from transformers import GenerationConfig

    _check_covers(model, state_dict)
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True, max_shard_size=MAX_SHARD)
    eos_ids = stop_token_ids(model, tokenizer)
    _inference_config(model.config, dtype, eos_ids).save_pretrained(out)  # overwrites the training-time config.json
    gen = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig.from_model_config(model.config))
    if eos_ids:
        gen.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    gen.save_pretrained(out)


def _merged_copy(peft_model, state_dict: dict):
    """A plain model with LoRA merged, built on CPU in fp32 from the config and `state_dict` (peft key names)."""
    import torch
    from peft import get_peft_model
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    base = peft_model.get_base_model()
    keep = getattr(base, "_trajtune_hf_ds_config", None)
    # Constructed directly (not from_config) and with ZeRO-3 switched off, so this copy is whole, not partitioned.
    unset_hf_deepspeed_config()
    try:
        with no_init_weights():
            fresh = type(base)(copy.deepcopy(base.config)).to(torch.float32)
        peft_config = copy.deepcopy(peft_model.peft_config[peft_model.active_adapter])
        wrapped = get_peft_model(fresh, peft_config)
    finally:
        if keep is not None:
            set_hf_deepspeed_config(keep)
    missing, unexpected = wrapped.load_state_dict(_cast(state_dict, torch.float32), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {}) if fresh.config.tie_word_embeddings else set()
    missing = [k for k in missing if not any(k.endswith(t) for t in tied)]
    if missing or unexpected:
        raise TrajtuneError(
            f"export: the state dict does not match the LoRA model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    fresh.tie_weights()
    fresh.generation_config = copy.deepcopy(base.generation_config)  # the base's own (from_config would derive one)
    return wrapped.merge_and_unload()


def export_hf(
    model,
    state_dict: dict | None,
    tokenizer,
    out_dir: str,
    info: dict,
    merge_lora: bool = False,
    dtype="bf16",
) -> None:
    """Write `model` (weights from `state_dict`, or the model's own when None) to out_dir as described above.

    info: JSON-serialisable facts for trajtune.json, e.g. {"config": {...}, "data_manifest_sha256": "...",
    "steps": 1200}. dtype: "bf16" (default) | "fp16" | "fp32" or a torch.dtype. merge_lora on a model without
    LoRA is an error (nothing to merge). Example: `export_hf(model, None, tok, "out/hf", {"steps": 10})`.
    """
    torch_dtype = resolve_dtype(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_peft = _is_peft(model)
    if merge_lora and not is_peft:
        raise TrajtuneError("export --merge: this model has no LoRA adapter to merge (it was fully fine-tuned)")
    source = state_dict if state_dict is not None else model.state_dict()

    if not is_peft:
        fmt = "full"
        _save_full(model, _cast(source, torch_dtype), out, torch_dtype, tokenizer)
    elif not merge_lora:
        fmt = "lora_adapter"
        model.save_pretrained(out, state_dict=_cast(source, torch_dtype), safe_serialization=True)
    else:
        fmt = "lora_merged"
        merged = _merged_copy(model, source)
        _save_full(merged, _cast(merged.state_dict(), torch_dtype), out, torch_dtype, tokenizer)
        model.save_pretrained(out / "adapter", state_dict=_cast(source, torch_dtype), safe_serialization=True)

    match_umask(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    meta = {"format": fmt, "dtype": str(torch_dtype).removeprefix("torch."), **info}
    if is_peft:
        meta.setdefault("base_model", model.get_base_model().config.name_or_path)
    (out / "trajtune.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
