"""Model loading for training: one `from_pretrained` path for real checkpoints and tiny test models.

`load_model` picks the attention backend (trainer/attention.py), loads the weights in the training dtype, with
ZeRO-3 shards them at load (transformers' `HfDeepSpeedConfig` must exist before `from_pretrained`; this file does
not import deepspeed itself), turns off the KV cache (with a cache, packed samples silently attend to each other
under SDPA), and optionally wraps the model in a peft LoRA. `make_tiny_llama` writes a random tiny Llama to disk
so tests load it through that same path. `flops_per_token` is the FLOP count used for MFU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data_builders.errors import TrajtuneError
from ..data_builders.pretrained import resolve_pretrained
from .attention import VARLEN_NAME, choose_backend, register_varlen
from .config import DEFAULT_LORA_TARGETS
from .export import match_umask

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

log = logging.getLogger("trajtune.modeling")


def _zero_stage(ds_config: dict | None) -> int:
    return int(((ds_config or {}).get("zero_optimization") or {}).get("stage", 0))


def load_model(
    model_path: str,
    *,
    dtype: torch.dtype,
    attn: str = "auto",
    gradient_checkpointing: bool = False,
    lora: Any = None,
    ds_config: dict | None = None,
) -> tuple[PreTrainedModel, str]:
    """Load a causal LM for training; returns (model, attention backend name).

    model_path: a local directory, or a hub id in the Hugging Face cache (`resolve_pretrained`; nothing is
    downloaded). dtype: the weights' dtype.
    attn: see `attention.choose_backend`; "auto" picks flash-attn 2 > torch varlen > SDPA by what is installed.
    lora: any object with r, alpha, dropout, targets (r == 0 or None means full fine-tuning); targets default to
    the attention projections. ds_config: the DeepSpeed config the engine will use; with ZeRO stage 3 the
    weights are partitioned while loading, and the `HfDeepSpeedConfig` that does it stays attached to the model
    (`model._trajtune_hf_ds_config`) because transformers only holds a weak reference to it.
    The model comes back in train mode with `config.use_cache = False`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_path = resolve_pretrained(model_path, "model")
    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise TrajtuneError(f"model {model_path!r}: not a model directory with a config.json ({e})") from e
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = choose_backend(attn, device_type, config, half=dtype in (torch.bfloat16, torch.float16))
    if backend == VARLEN_NAME:
        register_varlen()

    keep_alive = None
    if _zero_stage(ds_config) == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(ds_config)  # must live while from_pretrained runs (weakref inside)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=backend)
    if keep_alive is not None:
        model._trajtune_hf_ds_config = keep_alive
    # The packing trap: with use_cache=True transformers builds no per-sample mask from position_ids.
    model.config.use_cache = False
    if gradient_checkpointing:
        # Non-reentrant checkpointing: needs no input grads, so it also works with frozen embeddings under LoRA.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if lora is not None and (getattr(lora, "r", 0) or 0) > 0:
        model = wrap_lora(model, lora)
    model.train()
    log.info("attention backend: %s (asked: %s, device: %s)", backend, attn, device_type)
    return model, backend


def wrap_lora(model: PreTrainedModel, lora: Any):
    """Wrap `model` in a peft LoRA (only adapter weights trainable). lora: r, alpha, dropout, targets."""
    from peft import LoraConfig, get_peft_model

    targets = list(getattr(lora, "targets", None) or DEFAULT_LORA_TARGETS)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise TrajtuneError(
            f"lora.targets {missing} name no module of this model; its linear layers include "
            f"{sorted(n for n in present if n.endswith('proj'))}"
        )
    peft_config = LoraConfig(
        r=int(lora.r),
        lora_alpha=float(getattr(lora, "alpha", 2 * lora.r)),
        lora_dropout=float(getattr(lora, "dropout", 0.0)),
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def make_tiny_llama(out_dir: str, vocab_size: int, tokenizer=None, seed: int = 0, **overrides) -> str:
    """Write a random tiny Llama (config + fp32 safetensors, + tokenizer if given) to out_dir; returns out_dir.

    Defaults: hidden 64, 2 layers, 4 heads, 2 KV heads (grouped-query, as real models), untied embeddings;
    any LlamaConfig field can be overridden. The same seed gives the same weights. Example:
    `make_tiny_llama(tmp, tok.vocab_size + len(tok.added_tokens_encoder), tok, num_hidden_layers=1)`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        use_cache=False,
    )
    if tokenizer is not None:
        fields.update(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
    fields.update(overrides)
    config = LlamaConfig(**fields)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    match_umask(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def matmul_params(model_config) -> int:
    """Weights that take part in a matmul per token: attention + MLP projections of every layer + LM head.

    The input embedding is a lookup (no FLOPs) and norms/biases are negligible, so they are left out. Covers
    Llama/Qwen2/Mistral-style configs (gated MLP: gate, up, down).
    """
    c = model_config
    hidden, layers = c.hidden_size, c.num_hidden_layers
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * hidden * c.intermediate_size
    return layers * (attn + mlp) + hidden * c.vocab_size


def flops_per_token(model_config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), the PaLM / torchtitan convention for MFU.

    6 * N for the matmul weights N (`matmul_params`: 2 FLOPs per weight forward, 4 backward), plus attention
    scores and values: 12 * layers * heads * head_dim * seq_len (QK^T and AV, 2 FLOPs each per key, x3 for the
    backward). seq_len is the packed row length; the causal half and the per-sample block mask are not
    subtracted, as in the convention, so the attention term is an upper bound for packed rows.
    """
    c = model_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    attention = 12 * c.num_hidden_layers * c.num_attention_heads * head_dim * seq_len
    return float(6 * matmul_params(c) + attention)
