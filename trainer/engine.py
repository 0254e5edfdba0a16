"""The engines the training loop drives: DeepSpeed (ZeRO-2/3, offload) and a plain-PyTorch single-process twin.

This is the only file in trajtune that imports `deepspeed`. Both engines offer the same small interface:
`forward(batch) -> logits`, `backward(loss, last_micro)`, `step(lr, skip) -> (grad_norm, applied)`,
`save_checkpoint(dir)`, `load_checkpoint(dir)`, `full_state_dict()` (consolidated, rank 0; None elsewhere),
`all_reduce_sum(tensor)`, `barrier()`, `model` (the underlying module), `rank`, `world_size`, `device`.

Loss convention: the loop passes a loss already divided by the trained-token count of the *global* batch, so
the gradients of all micro-batches on all ranks must be SUMMED. DeepSpeed instead averages over ranks and (by
default) divides by the accumulation steps, so its wrapper multiplies the loss by world size and backpropagates
with `scale_wrt_gas=False`. The learning rate is set by the loop on every step (no scheduler object), so the
schedule's state is the step number alone.

The DeepSpeed config they get is built by trainer/ds_config.py (torch-free, so `trajtune train --dry-run` can
print it at once).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from ..data_builders.errors import TrajtuneError


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the launcher's environment (deepspeed / torchrun); (0, 0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: matrices decay, vectors (norms, biases) do not.

    Uses `ds_shape` when ZeRO-3 has already partitioned a parameter (its local shape is then [0]).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """torch AdamW over `param_groups` (its default multi-tensor kernels; ZeRO hands it flat fp32 partitions)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                             eps=cfg.adam_eps)


def _rng_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchEngine:
    """Single process, plain PyTorch: fp32 master weights, bf16 autocast when asked, torch AdamW."""

    rank = 0
    world_size = 1

    def __init__(self, model: torch.nn.Module, cfg: Any):
        self.device = torch.device(_rng_device())
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.bf16 = bool(cfg.bf16)
        self.max_grad_norm = cfg.max_grad_norm

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, T, V] for a collated micro-batch (no attention mask, no cache: per-sample masks)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(input_ids=batch["input_ids"].to(self.device),
                             position_ids=batch["position_ids"].to(self.device), use_cache=False)
        return out.logits

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        loss.backward()

    def step(self, lr: float, skip: bool) -> tuple[float, bool]:
        """Clip and update (unless `skip` or the gradient norm is not finite); always clears the gradients."""
        grad_norm = float("nan")
        applied = False
        if not skip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if torch.isfinite(torch.tensor(grad_norm)):
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                applied = True
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, applied

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def barrier(self) -> None:
        pass

    def save_checkpoint(self, directory: str | Path) -> None:
        torch.save(self.model.state_dict(), Path(directory) / "model.pt")
        torch.save(self.optimizer.state_dict(), Path(directory) / "optimizer.pt")

    def load_checkpoint(self, directory: str | Path) -> None:
        directory = Path(directory)
        if not (directory / "model.pt").is_file():
            raise TrajtuneError(f"{directory}: no model.pt; this checkpoint was not written by engine=torch "
                                "(resume with the engine that wrote it)")
        self.model.load_state_dict(torch.load(directory / "model.pt", map_location=self.device))
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=self.device))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()


class DeepSpeedEngineWrapper:
    """DeepSpeed's engine behind the loop's interface. Gradient accumulation is driven by the loop: the boundary
    is set explicitly before each backward and `step` is called once per optimizer step."""

    def __init__(self, model: torch.nn.Module, cfg: Any, ds_config: dict[str, Any]):
        import deepspeed

        self.rank, _, self.world_size = dist_env()
        offload = "optimizer" in ds_config  # build_ds_config adds it only for an offloaded optimizer
        optimizer = None if offload else make_optimizer(model, cfg)
        params = param_groups(model, cfg.weight_decay) if offload else None
        self.ds, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                                config=ds_config)
        self.model = self.ds.module
        self.device = self.ds.device
        self.zero_stage = int(ds_config["zero_optimization"].get("stage", 0))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.ds(input_ids=batch["input_ids"].to(self.device),
                      position_ids=batch["position_ids"].to(self.device), use_cache=False)
        return out.logits

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        # Gradients are reduced (and averaged over ranks) only at the boundary; × world size turns DeepSpeed's
        # average into the sum our global-token normalisation needs.
        self.ds.set_gradient_accumulation_boundary(last_micro)
        self.ds.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self, lr: float, skip: bool) -> tuple[float, bool]:
        """One optimizer step. A non-finite loss makes non-finite gradients, and DeepSpeed's ZeRO optimizers skip a
        step whose global gradient norm is not finite; `applied` reports what DeepSpeed did."""
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        applied = bool(getattr(self.ds, "_step_applied", True))
        if skip and applied:
            raise TrajtuneError("the loss was not finite but DeepSpeed applied the update (this ZeRO stage / "
                                "precision does not check gradients); use ds_configs/zero3.json or bf16=false")
        return norm, applied

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        tensor = tensor.to(self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def save_checkpoint(self, directory: str | Path) -> None:
        """Collective: every rank writes its shard under `directory/engine/`."""
        self.ds.save_checkpoint(str(directory), tag="engine", save_latest=False)

    def load_checkpoint(self, directory: str | Path) -> None:
        if not (Path(directory) / "engine").is_dir():
            raise TrajtuneError(f"{directory}: no engine/ folder; this checkpoint was not written by "
                                "engine=deepspeed (resume with the engine that wrote it)")
        path, _ = self.ds.load_checkpoint(str(directory), tag="engine", load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
        if path is None:
            raise TrajtuneError(f"{directory}: DeepSpeed could not load this checkpoint (see the log above); was it "
                                f"written with the same world size ({self.world_size}) and ZeRO stage?")

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective under ZeRO-3 (all ranks must call); the full state dict on rank 0, None elsewhere."""
        if self.zero_stage == 3:
            return self.ds._zero3_consolidated_16bit_state_dict()
        return self.model.state_dict() if self.rank == 0 else None


# torch >= 2.13 deprecates the collectives DeepSpeed's ZeRO calls every step; each call repeats the warning.
_KNOWN_WARNINGS = r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"


def init_distributed(use_deepspeed: bool, timeout_minutes: float = 30.0) -> None:
    """Start the process group for DeepSpeed (nccl on CUDA, gloo on CPU), `timeout_minutes` for its rendezvous and
    every collective, and run one all-reduce over it; a lone process gets a local rendezvous. A rank that cannot
    join (a peer never started, ranks that disagree on WORLD_SIZE or MASTER_ADDR/PORT, a blocked port) raises
    TrajtuneError naming its rank, host and what it saw, after at most about `timeout_minutes`.
    Pair with `shutdown_distributed` (a process that exits with the group alive can abort in C++ teardown)."""
    if not use_deepspeed:
        return
    import datetime
    import warnings

    import deepspeed
    import torch.distributed as dist

    warnings.filterwarnings("ignore", message=_KNOWN_WARNINGS, category=FutureWarning, module=r"torch\.distributed")

    if "RANK" not in os.environ:  # plain `trajtune train`, not under a launcher
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if torch.cuda.is_available():
        torch.cuda.set_device(dist_env()[1])
    try:
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   timeout=datetime.timedelta(minutes=timeout_minutes))
        # A peer can join the store but not the group (it expects another world size): that shows here, at once,
        # rather than as a hang in the model's first weight gather.
        dist.all_reduce(torch.ones(1, device="cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:  # DistStoreError / DistNetworkError (the store), gloo's or NCCL's collective error
        raise TrajtuneError(rendezvous_failure(e, timeout_minutes)) from None


# What a rank reads to find its peers (torch.distributed's env:// rendezvous).
RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK")


def rendezvous_env() -> str:
    """`MASTER_ADDR=... MASTER_PORT=... WORLD_SIZE=... RANK=... LOCAL_RANK=...` as this process sees them."""
    return " ".join(f"{key}={os.environ.get(key, '(unset)')}" for key in RENDEZVOUS_ENV)


def rendezvous_failure(error: BaseException, timeout_minutes: float) -> str:
    """The message for a rank that could not join the process group: who, where, what it saw, what to check."""
    detail = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return (f"rank {os.environ.get('RANK', '?')} on host {socket.gethostname()} could not join the process group "
            f"(timeout_minutes={timeout_minutes:g}): {type(error).__name__}: {detail}. This rank saw "
            f"{rendezvous_env()}. Every rank must see the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE and its own "
            "RANK (each rank's logs/rank_K.log in output_dir records what it saw). Check that all WORLD_SIZE ranks "
            "were started (hostfile slots, --nnodes × --nproc-per-node, srun --nodes; `trajtune train --dry-run "
            "--nodes N --gpus-per-node G` prints the commands for a shape), that MASTER_ADDR is the first node and "
            "reachable from every node, that MASTER_PORT is free there and open in the firewall, and on nodes with "
            "several network interfaces set NCCL_SOCKET_IFNAME (GLOO_SOCKET_IFNAME for gloo) to the one they share; "
            "raise timeout_minutes when some ranks start much later than others")


def shutdown_distributed() -> None:
    """Destroy the default process group if one is up (at the end of `train`, on success and on errors alike)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def make_engine(kind: str, model: torch.nn.Module, cfg: Any, ds_config: dict[str, Any] | None):
    """A TorchEngine (kind "torch") or a DeepSpeedEngineWrapper (kind "deepspeed", needs ds_config)."""
    if kind == "torch":
        return TorchEngine(model, cfg)
    return DeepSpeedEngineWrapper(model, cfg, ds_config)


def load_consolidated_state_dict(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of a trajtune checkpoint (either engine), on CPU, in one process (for export).

    `checkpoint_dir` may be a checkpoint (`.../checkpoints/step_00000100`), the `checkpoints/` folder or the run's
    output_dir; the latter two resolve to the latest checkpoint.
    """
    from .checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint_dir)
    if (ckpt / "model.pt").is_file():
        return torch.load(ckpt / "model.pt", map_location="cpu")
    if (ckpt / "engine").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="engine"))
    raise TrajtuneError(f"{ckpt}: neither model.pt (engine=torch) nor engine/ (engine=deepspeed); not a checkpoint")
