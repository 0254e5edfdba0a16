"""The training run's typed config: every key `trajtune train` accepts, with its default and a one-line help.

Loaded with `trajtune.launcher.config.load_config(TrainConfig, yaml_path, ["key=value", ...])`; unknown keys are
errors. `check()` catches contradictions that types cannot (e.g. a global batch that micro batches cannot tile).
Defaults follow AgentTuning (arXiv 2310.12823): AdamW, lr 5e-5, cosine schedule with 2% warmup, batch 64.
No torch import here, so `trajtune train --help` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..data_builders.errors import TrajtuneError

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # attention projections of Llama/Qwen/Mistral


@dataclass
class LoraSettings:
    """LoRA adapter settings; r == 0 means full fine-tuning (no adapter)."""

    r: int = field(default=0, metadata={"help": "LoRA rank; 0 = off (full fine-tuning)."})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS),
                               metadata={"help": "Module names that get adapters (e.g. [q_proj,v_proj])."})


@dataclass
class TrainConfig:
    """One SFT run. Paths are as given (relative to the working directory)."""

    # Inputs and outputs
    model: str = field(default="", metadata={"help": "Model directory, or a hub id in the HF cache (nothing is downloaded)."})
    data: str = field(default="", metadata={"help": "A dataset directory written by `trajtune build`."})
    output_dir: str = field(default="runs/sft", metadata={"help": "Run directory: config, checkpoints, metrics, final/."})
    # Runtime
    engine: Literal["auto", "deepspeed", "torch"] = field(
        default="auto", metadata={"help": "deepspeed, torch (plain PyTorch, one process, for debugging), or auto "
                                          "(deepspeed with several ranks or on a GPU, else torch)."})
    ds_config: str = field(default="ds_configs/zero3.json",
                           metadata={"help": "DeepSpeed config JSON (zero2 / zero3 / zero3_offload); batch sizes, lr "
                                             "and clipping are filled from this config."})
    attn: Literal["auto", "flash", "varlen", "sdpa", "eager"] = field(
        default="auto", metadata={"help": "Attention backend; auto = flash-attn 2, else torch varlen on CUDA, else SDPA."})
    bf16: bool = field(default=True, metadata={"help": "Train in bfloat16 (set false for fp32, e.g. on CPU)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory."})
    seed: int = field(default=0, metadata={"help": "Seed for weights of new layers, data order and dropout."})
    timeout_minutes: float = field(
        default=30.0, metadata={"help": "How long ranks wait for each other (rendezvous, any collective, a peer's "
                                        "checkpoint write) before failing with an error naming the rank."})
    # Batch and schedule
    micro_batch_size: int = field(default=1, metadata={"help": "Packs per forward pass on one rank."})
    global_batch_size: int = field(default=64, metadata={"help": "Packs per optimizer step over all ranks "
                                                                 "(= micro × accumulation × world size)."})
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training packs (used when max_steps is 0)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps to run; 0 = derive from epochs."})
    lr: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Cosine decays to lr × this ratio at the last step."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not applied to norms/biases)."})
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata={"help": "AdamW betas."})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    warmup_ratio: float = field(default=0.02, metadata={"help": "Fraction of steps with linear warmup from 0."})
    schedule: Literal["cosine", "linear", "constant"] = field(
        default="cosine", metadata={"help": "LR decay after warmup."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the global gradient norm; 0 = no clipping."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings (lora.r=0 = off)."})
    # Checkpoints
    save_steps: int = field(default=500, metadata={"help": "Save a checkpoint every N steps (0 = only at the end)."})
    keep_last: int = field(default=2, metadata={"help": "Keep this many most recent checkpoints."})
    resume: str = field(default="auto", metadata={"help": "auto (latest checkpoint in output_dir, if any), none, "
                                                          "or a checkpoint directory."})
    export: bool = field(default=True, metadata={"help": "Export a Hugging Face model to output_dir/final at the end."})
    merge_lora: bool = field(default=False, metadata={"help": "With LoRA, export a merged full model too."})
    # Logging and evaluation
    log_steps: int = field(default=1, metadata={"help": "Log metrics every N steps."})
    eval_steps: int = field(default=0, metadata={"help": "Validation loss every N steps (0 = only at the end)."})
    report_to: Literal["tensorboard", "wandb", "none"] = field(
        default="tensorboard", metadata={"help": "Where metrics go besides metrics.jsonl."})
    # Failures
    max_bad_steps: int = field(default=5, metadata={"help": "Abort after this many NaN/inf-loss steps in a row."})

    def check(self) -> None:
        """Raise TrajtuneError on values that are well-typed but impossible."""
        if not self.model:
            raise TrajtuneError("model is not set: give model=PATH (a Hugging Face model directory)")
        if not self.data:
            raise TrajtuneError("data is not set: give data=DIR (a directory written by `trajtune build`)")
        for name in ("micro_batch_size", "global_batch_size", "log_steps", "keep_last", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise TrajtuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "save_steps", "eval_steps"):
            if getattr(self, name) < 0:
                raise TrajtuneError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps == 0 and self.epochs <= 0:
            raise TrajtuneError("set epochs > 0 or max_steps > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrajtuneError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.timeout_minutes <= 0:
            raise TrajtuneError(f"timeout_minutes must be > 0, got {self.timeout_minutes}")
        if self.lr <= 0:
            raise TrajtuneError(f"lr must be > 0, got {self.lr}")
        if len(self.adam_betas) != 2:
            raise TrajtuneError(f"adam_betas must be two numbers, got {self.adam_betas}")
        if self.lora.r < 0:
            raise TrajtuneError(f"lora.r must be >= 0, got {self.lora.r}")
        if self.merge_lora and self.lora.r == 0:
            raise TrajtuneError("merge_lora=true needs a LoRA run (lora.r > 0); a full fine-tune exports full weights")

    def resolve_engine(self, world_size: int, has_gpu: bool) -> str:
        """engine=auto: DeepSpeed when launched on several ranks or on a GPU; the plain-PyTorch twin on one CPU."""
        if self.engine != "auto":
            if self.engine == "torch" and world_size > 1:
                raise TrajtuneError(f"engine=torch runs one process, but WORLD_SIZE={world_size}; use engine=deepspeed")
            return self.engine
        return "deepspeed" if world_size > 1 or has_gpu else "torch"

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per rank per step; the global batch must be micro × accumulation × world exactly."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise TrajtuneError(
                f"global_batch_size={self.global_batch_size} is not a multiple of micro_batch_size="
                f"{self.micro_batch_size} × world_size={world_size} = {per_step}; pick a global batch that is "
                f"(e.g. {max(per_step, self.global_batch_size // per_step * per_step)}) or change micro_batch_size")
        return self.global_batch_size // per_step
