"""Attention backends for packed training: pick one, and keep packed samples from attending to each other.

A packed row holds several samples back to back; `position_ids` restart at 0 where a sample starts. Every
backend here turns that into per-sample causal attention:
- `flash_attention_2` (flash-attn installed, CUDA): transformers' own varlen path reads cu_seqlens from
  `position_ids` when no attention_mask is passed.
- `trajtune_varlen` (CUDA, no flash-attn): PyTorch's built-in `torch.nn.attention.varlen.varlen_attn` (where its
  signature takes the keywords we pass, VARLEN_KEYWORDS), registered as a transformers attention function; cu_seqlens come from `position_ids` here. Off CUDA that kernel does not
  exist (PyTorch has no CPU op), so the same function runs a reference per-sample SDPA loop: slow, exact, and what
  the CPU tests use to pin the cu_seqlens logic.
- `sdpa` (anything else, CPU included): transformers builds a block-diagonal causal mask from `position_ids`,
  but only when no attention_mask is passed and no cache is used, so callers pass `use_cache=False`.
`choose_backend` applies that order for `attn="auto"`; the loader logs the choice.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import TYPE_CHECKING

from ..data_builders.errors import TrajtuneError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("trajtune.attention")

VARLEN_NAME = "trajtune_varlen"
# What users may ask for (config key `attn`): auto picks among the first three.
BACKENDS = ("flash_attention_2", VARLEN_NAME, "sdpa", "eager")
_ALIASES = {"flash": "flash_attention_2", "fa2": "flash_attention_2", "varlen": VARLEN_NAME}


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


# Keywords `varlen_attention_forward` passes to `varlen_attn`. PyTorch 2.9's takes `is_causal` and `return_aux`
# only; `scale`, then keyword-only `window_size`, then `enable_gqa` came in later releases (2.13 has all three).
VARLEN_KEYWORDS = ("scale", "window_size", "enable_gqa")


def _takes_keywords(fn, names: tuple[str, ...]) -> bool:
    """`fn` accepts each of `names` as a keyword argument (or takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no introspectable signature: do not guess that it takes them
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    ok = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return all(n in params and params[n].kind in ok for n in names)


def torch_varlen_available() -> bool:
    """PyTorch's `varlen_attn` exists and takes the keywords we call it with (VARLEN_KEYWORDS).

    Checked on the signature, not the version: setup.py allows torch>=2.4, and from 2.9 on the module exists
    but at first lacks some of them, so the first forward would raise a TypeError deep inside the model.
    """
    if importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return False
    from torch.nn.attention import varlen

    fn = getattr(varlen, "varlen_attn", None)
    return fn is not None and _takes_keywords(fn, VARLEN_KEYWORDS)


def _uses_sliding_window(model_config) -> bool:
    """True when the config really slides (Mistral-style); Qwen2 carries `sliding_window` but may not use it."""
    if model_config is None or getattr(model_config, "sliding_window", None) is None:
        return False
    return bool(getattr(model_config, "use_sliding_window", True))


def choose_backend(attn: str, device_type: str, model_config=None, half: bool = True) -> str:
    """The attention implementation to load a model with, as a transformers `attn_implementation` name.

    attn: "auto" | "flash_attention_2" (alias "flash", "fa2") | "varlen" | "sdpa" | "eager".
    device_type: "cuda" or "cpu" (where the model will run). half: the weights are bf16/fp16 (the fused varlen
    kernels take nothing else). An explicit choice that cannot run here is an error, never a silent fallback.
    Example: `choose_backend("auto", "cpu") == "sdpa"`.
    """
    name = _ALIASES.get(attn, attn)
    if name == "auto":
        if device_type != "cuda" or not half:
            return "sdpa"
        if flash_attn_installed():
            return "flash_attention_2"
        if _uses_sliding_window(model_config):
            return "sdpa"
        if torch_varlen_available():
            return VARLEN_NAME
        log.info("attention: flash-attn is not installed and this PyTorch has no varlen_attn taking %s: using sdpa",
                 ", ".join(VARLEN_KEYWORDS))
        return "sdpa"
    if name not in BACKENDS:
        raise TrajtuneError(f"attn={attn!r} is not one of auto, {', '.join(BACKENDS)}")
    if name in ("flash_attention_2", VARLEN_NAME) and device_type == "cuda" and not half:
        raise TrajtuneError(f"attn={attn} needs bf16 or fp16 weights (bf16=true); in fp32 use attn=sdpa")
    if name == "flash_attention_2":
        if not flash_attn_installed():
            raise TrajtuneError("attn=flash_attention_2 needs flash-attn: `pip install flash-attn`, or use attn=auto")
        if device_type != "cuda":
            raise TrajtuneError("attn=flash_attention_2 needs a CUDA GPU; on CPU use attn=sdpa (or auto)")
    if name == VARLEN_NAME:
        if device_type == "cuda" and not torch_varlen_available():  # off CUDA the reference loop runs instead
            import torch

            raise TrajtuneError(
                f"attn=varlen needs torch.nn.attention.varlen.varlen_attn taking {', '.join(VARLEN_KEYWORDS)}; "
                f"PyTorch {torch.__version__} has none (2.13 has it): upgrade torch, or use attn=sdpa or attn=auto")
        if _uses_sliding_window(model_config):
            raise TrajtuneError("attn=varlen does not do sliding-window attention; use attn=flash_attention_2 or sdpa")
    return name


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sample boundaries of packed rows, flattened: (cu_seqlens int32 [N+1], longest sample length).

    A sample starts at the start of each row and wherever the position does not follow the previous one by 1
    (a restart at 0, as the packer writes). Example: position_ids [[0,1,2,0,1]] -> cu_seqlens [0,3,5], max 3.
    """
    import torch

    pos = position_ids.reshape(position_ids.shape[0], -1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    start_idx = torch.nonzero(starts.reshape(-1), as_tuple=True)[0]
    total = torch.tensor([pos.numel()], device=pos.device, dtype=start_idx.dtype)
    cu = torch.cat([start_idx, total]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def reference_varlen_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """Per-sample causal SDPA, the semantics of `varlen_attn(..., window_size=(-1, 0))`, for any device.

    q: (T, Hq, D); k, v: (T, Hkv, D) with Hq a multiple of Hkv (grouped-query attention). Returns (T, Hq, D).
    """
    import torch
    import torch.nn.functional as F

    out = torch.empty_like(q)
    groups = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # (H, L, D)
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, dim=0), vs.repeat_interleave(groups, dim=0)
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1)
    return out


def varlen_attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function (`AttentionInterface`) on PyTorch's varlen kernel.

    query: (B, Hq, S, D); key, value: (B, Hkv, S, D); returns ((B, S, Hq, D), None) as transformers expects.
    Samples are cut at `position_ids` restarts; there is no attention_mask for this backend (registered without a
    mask function), so padding must be its own "sample" (the packer's pad run restarting at 0 does that).
    """
    import torch

    if dropout > 0.0:
        raise TrajtuneError("attn=varlen has no attention dropout; set the model's attention_dropout to 0")
    if kwargs.get("sliding_window") is not None:
        raise TrajtuneError("attn=varlen does not do sliding-window attention; use attn=sdpa")
    batch, heads, seq, dim = query.shape
    if key.shape[2] != seq:
        # Decoding with a KV cache (q shorter than k) is not what this training backend is for.
        raise TrajtuneError("attn=varlen is for training (no KV cache); generate with attn=sdpa")
    if kwargs.get("cu_seq_lens_q") is not None and kwargs.get("max_length_q") is not None:
        # Boundaries computed once by the caller (as TRL's collator and transformers' FA2 path accept): saves the
        # device-to-host sync that deriving max_len costs in every layer.
        cu, max_len = kwargs["cu_seq_lens_q"].to(query.device, torch.int32), int(kwargs["max_length_q"])
    else:
        if position_ids is None:
            position_ids = torch.arange(seq, device=query.device).expand(batch, seq)
        elif position_ids.shape[0] != batch:
            position_ids = position_ids.expand(batch, -1)
        cu, max_len = cu_seqlens_from_position_ids(position_ids)
        cu = cu.to(query.device)
    q = query.transpose(1, 2).reshape(batch * seq, heads, dim)
    k = key.transpose(1, 2).reshape(batch * seq, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * seq, value.shape[1], dim)
    if q.is_cuda:
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(
            q, k, v, cu, cu, max_len, max_len, scale=scaling, window_size=(-1, 0), enable_gqa=k.shape[1] != heads
        )
    else:
        out = reference_varlen_attn(q, k, v, cu, scaling)
    return out.reshape(batch, seq, heads, dim), None


def register_varlen() -> None:
    """Make `attn_implementation="trajtune_varlen"` loadable by transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_NAME, varlen_attention_forward)
