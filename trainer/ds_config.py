"""The DeepSpeed config of a run: a `ds_configs/*.json` file (ZeRO settings only) plus the run config.

Batch sizes, optimizer, lr, clipping and precision come only from the run config, and a JSON that sets any of
them (or "auto") is rejected, so the two can never disagree. No torch import: `trajtune train --dry-run` prints
this config without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data_builders.errors import TrajtuneError

# Keys the run config owns; a ds_config JSON must not set them.
_OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
               "gradient_clipping", "optimizer", "scheduler", "bf16", "fp16")


def _find_auto(node: Any, path: str = "") -> str | None:
    if isinstance(node, dict):
        for k, v in node.items():
            found = _find_auto(v, f"{path}.{k}" if path else k)
            if found:
                return found
    return path if node == "auto" else None


def build_ds_config(path: str | Path, cfg: Any, accumulation: int, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for a run: `path` (ZeRO settings only) + batch sizes, precision, clipping, optimizer."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute():
        # `ds_configs/zero3.json` (the default) also names the copy shipped in the trajtune package root.
        shipped = Path(__file__).resolve().parent.parent / path
        path = shipped if shipped.is_file() else path
    if not path.is_file():
        raise TrajtuneError(f"ds_config {path} does not exist (relative to the working directory or the trajtune "
                            "package); use one of ds_configs/zero2.json, zero3.json, zero3_offload.json")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrajtuneError(f"{path}: not valid JSON ({e})") from None
    for key in _OWNED_KEYS:
        if key in ds:
            raise TrajtuneError(f"{path}: remove {key!r}; trajtune fills it from the run config (micro_batch_size, "
                                "global_batch_size, lr, max_grad_norm, bf16) so the two cannot disagree")
    auto = _find_auto(ds)
    if auto:
        raise TrajtuneError(f"{path}: {auto} is \"auto\"; give a value (trajtune fills batch sizes and lr itself)")
    ds.update({
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": bool(cfg.bf16)},
        "steps_per_print": 2**31 - 1,  # our own metrics log progress
        "wall_clock_breakdown": False,
    })
    if cfg.bf16:
        # DeepSpeed accumulates micro-step gradients in the model dtype by default (runtime/engine.py
        # get_data_types); summing many bf16 micro-gradients loses their low bits, so ZeRO sums them in fp32.
        ds.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
    zero = ds.setdefault("zero_optimization", {})
    if (zero.get("offload_optimizer") or {}).get("device", "none") != "none":
        # Offloaded optimizer states want DeepSpeed's CPU Adam; built by DeepSpeed from this section.
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": cfg.lr, "betas": list(cfg.adam_betas),
                                                      "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay}}
    else:
        ds["zero_allow_untested_optimizer"] = True  # our torch AdamW, same as the torch engine
    return ds
