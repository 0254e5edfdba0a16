"""The SFT training loop, top to bottom: config -> data -> model + engine -> resume -> steps -> export.

One optimizer step = `global_batch_size` packs over all ranks = micro_batch_size × accumulation × world size.
The loss is cross-entropy summed over trained tokens and divided by the trained-token count of the whole global
batch (all-reduced before the first micro-batch), so how the batch is split over micro-batches and ranks does
not change the update. Every step does two tiny all-reduces: the trained-token count, and at the end the
loss sum + token count + "stop requested" flag, which is how a SIGTERM/SIGUSR1 or a Ctrl-C (SIGINT) on any rank
stops all of them at the same step with a checkpoint (a second Ctrl-C aborts at once, without one).
Before any weight is read: the dataset's tokenizer must fit the model, and a checkpoint to resume must come from
the same data, batch, seed, world size and engine; a run whose last checkpoint is its final step is already
trained, and running it again does nothing. The same loop drives DeepSpeed or the plain-PyTorch engine
(trainer/engine.py). Every rank logs to output_dir/logs/rank_K.log, and rank 0 writes its measured step and
checkpoint times to logs/timing.json (trainer/run_logs.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data_builders.errors import TrajtuneError
from . import checkpoint
from .config import TrainConfig
from .data import (
    IGNORE,
    check_fits_model,
    collate,
    data_identity,
    fetch,
    load_data_tokenizer,
    open_built_dataset,
    step_micro_batches,
    validation_micro_batches,
)
from .ds_config import build_ds_config
from .engine import dist_env, init_distributed, make_engine, rendezvous_env, shutdown_distributed
from .run_logs import FILE_ONLY, RankLog, Timing

log = logging.getLogger("trajtune.train")

OOM_HELP = ("out of memory at step {step}: lower micro_batch_size (the global batch is kept by more accumulation), "
            "set gradient_checkpointing=true, use ds_config=ds_configs/zero3.json (shards weights, grads and "
            "optimizer over ranks) or ds_configs/zero3_offload.json (optimizer states in CPU memory), or use LoRA "
            "(lora.r=16)")


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to cfg.lr, then cosine/linear/constant."""
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropy over positions whose target is not -100 (fp32). logits [B, T, V], targets [B, T]."""
    targets = targets.to(logits.device)
    keep = targets != IGNORE
    # Only trained positions are upcast: fp32 logits of every position (4096 x 152k vocab) would be 2.5 GB, and
    # agent data trains a minority of its tokens.
    return torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")


class StopRequest:
    """Remembers the first SIGTERM/SIGUSR1 (preemption, `scancel --signal`) or SIGINT (Ctrl-C) in `signum`, so the
    loop can checkpoint at the step boundary and stop; a second SIGINT raises KeyboardInterrupt (abort now)."""

    def __init__(self, is_main: bool) -> None:
        self.signum: int | None = None
        self.is_main = is_main
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                self._previous[sig] = signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.signum == signal.SIGINT:
                raise KeyboardInterrupt
            if self.is_main:  # os.write to fd 2: a print here could re-enter a stderr write the signal cut
                os.write(2, b"\nCtrl-C: stopping with a checkpoint after this step; press Ctrl-C again to abort "
                            b"at once without one\n")
        self.signum = self.signum or signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def pid_file(rank: int) -> Path | None:
    """TRAJTUNE_PID_DIR/rank_{rank}.pid when the Slurm templates set TRAJTUNE_PID_DIR, else None."""
    pid_dir = os.environ.get("TRAJTUNE_PID_DIR")
    return Path(pid_dir) / f"rank_{rank}.pid" if pid_dir else None


def announce_pid(rank: int) -> None:
    """Write `pid_file(rank)` = `NODE PID` once this rank's signal handlers are up (removed by `forget_pid`): a batch
    script signals the ranks themselves, since launchers forward only SIGINT/SIGTERM (and DeepSpeed's kills its
    ranks 30 s later). NODE is the Slurm node name, where there is one: several slurmd may share a host."""
    path = pid_file(rank)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{os.environ.get('SLURMD_NODENAME') or socket.gethostname()} {os.getpid()}\n")
    os.replace(tmp, path)  # a reader never sees half a line


def forget_pid(rank: int) -> None:
    path = pid_file(rank)
    if path is not None:
        path.unlink(missing_ok=True)


@torch.no_grad()
def validation_loss(engine: Any, val_ds: Any, micro: int) -> float:
    """Token-weighted loss over all validation packs, split over ranks (collective)."""
    engine.model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    tokens = torch.zeros((), dtype=torch.float64)
    for indices in validation_micro_batches(len(val_ds), micro, engine.rank, engine.world_size):
        # A rank out of packs still runs a forward (ZeRO-3 gathers weights collectively), with no targets.
        batch = collate(fetch(val_ds, indices or [0]))
        if not indices:
            batch["targets"].fill_(IGNORE)
        loss_sum += float(token_loss_sum(engine.forward(batch), batch["targets"]))
        tokens += int((batch["targets"] != IGNORE).sum())
    engine.model.train()
    total = engine.all_reduce_sum(torch.stack([loss_sum, tokens]))
    return float(total[0] / total[1].clamp(min=1))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the SFT run described by `cfg`. Returns {"step", "losses" (step -> loss), "bad_steps",
    "stopped" (True when a signal ended it early), "signal" (its number, or None), "already_trained" (True when
    the checkpoint to resume was the run's last step, so nothing ran), "checkpoint", "val_loss"}.
    Raises TrajtuneError on bad input; KeyboardInterrupt on a second Ctrl-C."""
    from .export import export_tokenizer
    from .metrics import MetricsLogger, Throughput, memory_gb, peak_flops
    from .modeling import flops_per_token, load_model

    # --- Setup: config checks, ranks, engine kind, batch arithmetic (all before anything slow) ---
    cfg.check()
    rank, _, world_size = dist_env()
    engine_kind = cfg.resolve_engine(world_size, torch.cuda.is_available())
    accumulation = cfg.accumulation_steps(world_size)
    train_ds, val_ds, manifest = open_built_dataset(cfg.data)
    data_sha = data_identity(cfg.data, manifest)
    total_steps = cfg.max_steps or int(cfg.epochs * len(train_ds) // cfg.global_batch_size)
    if total_steps < 1:
        raise TrajtuneError(f"{cfg.data} has {len(train_ds)} packs: {cfg.epochs} epochs make no full global batch of "
                            f"{cfg.global_batch_size}; lower global_batch_size or raise epochs / max_steps")
    output_dir = Path(cfg.output_dir)

    # --- Checks before any weight is read: data vs model, resume; a finished run is a no-op ---
    data_tok = load_data_tokenizer(cfg.data)  # read once: the fit check and the export both use it
    check_fits_model(cfg.data, cfg.model, data_tok)
    run_facts = {"global_batch_size": cfg.global_batch_size, "seed": cfg.seed, "world_size": world_size,
                 "engine": engine_kind, "data_sha256": data_sha}
    resume_from = checkpoint.find_resume(cfg.resume, output_dir)
    if resume_from is not None:
        state = checkpoint.read_state(resume_from)
        checkpoint.check_resumable(resume_from, state, run_facts)
        if state["step"] >= total_steps and (not cfg.export or _exported_step(output_dir / "final") == state["step"]):
            if rank == 0:
                log.info("already trained: %s is step %d of this run's %d%s; nothing to do (raise max_steps or "
                         "epochs to train on, or use resume=none or a new output_dir to start over)", resume_from,
                         state["step"], total_steps, f", exported to {output_dir / 'final'}" if cfg.export else "")
            return {"step": int(state["step"]), "losses": {}, "bad_steps": int(state.get("bad_steps", 0)),
                    "stopped": False, "signal": None, "already_trained": True, "checkpoint": str(resume_from),
                    "val_loss": None}
    tokenizer = export_tokenizer(cfg.data, cfg.model, data_tok) if cfg.export else None  # fails now, not after

    # --- From here on a process group may be up: every way out of the try destroys it ---
    rank_log = RankLog(output_dir, rank, world_size, rendezvous_env())  # logs/rank_K.log, every rank
    stop = metrics = None
    try:
        init_distributed(engine_kind == "deepspeed", cfg.timeout_minutes)
        if rank == 0:
            log.info("engine %s: %d rank(s) × micro %d × accumulation %d = global batch %d packs; %d steps (%.2f "
                     "epochs of %d packs)", engine_kind, world_size, cfg.micro_batch_size, accumulation,
                     cfg.global_batch_size, total_steps, total_steps * cfg.global_batch_size / len(train_ds),
                     len(train_ds))

        # --- Model and engine ---
        torch.manual_seed(cfg.seed)  # same on every rank: new (e.g. LoRA) weights must agree across ranks
        ds_config = build_ds_config(cfg.ds_config, cfg, accumulation, world_size) if engine_kind == "deepspeed" else None
        dtype = torch.bfloat16 if (cfg.bf16 and engine_kind == "deepspeed") else torch.float32  # torch: autocast
        model, attn_backend = load_model(cfg.model, dtype=dtype, attn=cfg.attn,
                                         gradient_checkpointing=cfg.gradient_checkpointing,
                                         lora=cfg.lora if cfg.lora.r > 0 else None, ds_config=ds_config)
        engine = make_engine(engine_kind, model, cfg, ds_config)
        is_main = engine.rank == 0

        # --- Resume (checked above): the step number is the whole data position ---
        start_step = 0
        if resume_from is not None:
            state = checkpoint.load(engine, resume_from)
            start_step = int(state["step"])
            if is_main:
                log.info("resumed from %s at step %d", resume_from, start_step)
                if state.get("total_steps") != total_steps:
                    log.warning("the checkpoint's run had %s steps, this one has %d: the lr schedule changes from "
                                "here", state.get("total_steps"), total_steps)
        if is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
            (output_dir / "run_info.json").write_text(json.dumps({
                "engine": engine_kind, "world_size": world_size, "accumulation_steps": accumulation,
                "total_steps": total_steps, "attention_backend": attn_backend, "ds_config": ds_config,
                "data_sha256": data_sha, "train_packs": len(train_ds)}, indent=2) + "\n")

        seq_len = int(manifest.get("seq_len") or max(len(r["input_ids"]) for r in fetch(train_ds, [0])))
        throughput = Throughput(flops_per_token(engine.model.config, seq_len), peak_flops(engine.device), world_size)
        metrics = MetricsLogger(str(output_dir), cfg.report_to, is_main, total_steps, resume_step=start_step)
        timing = Timing(output_dir, is_main, world_size)  # logs/timing.json: what a preemption signal must allow
        stop = StopRequest(is_main)
        announce_pid(rank)
        trainer_state = {**run_facts, "total_steps": total_steps}
        losses: dict[int, float] = {}
        bad_in_a_row = 0
        bad_total = int(state.get("bad_steps", 0)) if resume_from is not None else 0
        last_saved = start_step if resume_from is not None else -1
        val_loss = None

        # --- The loop ---
        step = start_step
        while step < total_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, total_steps, cfg)
            micro_batches = [collate(fetch(train_ds, idx)) for idx in step_micro_batches(
                len(train_ds), cfg.seed, step, cfg.global_batch_size, cfg.micro_batch_size, engine.rank, world_size)]
            local_trained = sum(int((b["targets"] != IGNORE).sum()) for b in micro_batches)
            local_tokens = sum(int(b["lengths"].sum()) for b in micro_batches)
            global_trained = float(engine.all_reduce_sum(torch.tensor([float(local_trained)]))[0])
            loss_sum = torch.zeros((), dtype=torch.float64)
            try:
                for i, batch in enumerate(micro_batches):
                    ce_sum = token_loss_sum(engine.forward(batch), batch["targets"])
                    engine.backward(ce_sum / max(global_trained, 1.0), last_micro=i == len(micro_batches) - 1)
                    loss_sum += float(ce_sum.detach())
                totals = engine.all_reduce_sum(torch.tensor(
                    [float(loss_sum), float(local_tokens), float(stop.requested)], dtype=torch.float64))
                loss = float(totals[0]) / max(global_trained, 1.0)
                grad_norm, applied = engine.step(lr, skip=not math.isfinite(loss))
            except torch.OutOfMemoryError:
                raise TrajtuneError(OOM_HELP.format(step=step + 1)) from None
            step += 1
            step_seconds = time.perf_counter() - t0

            # --- Bookkeeping: bad steps, metrics, validation, checkpoints ---
            if applied:
                bad_in_a_row = 0
            else:
                bad_in_a_row += 1
                bad_total += 1
                if is_main:
                    log.warning("step %d: loss %s / grad norm %s not finite; update skipped (%d in a row)",
                                step, loss, grad_norm, bad_in_a_row)
                if bad_in_a_row >= cfg.max_bad_steps:
                    raise TrajtuneError(
                        f"{bad_in_a_row} steps in a row (up to step {step}) had a NaN/inf loss or gradient "
                        f"(max_bad_steps={cfg.max_bad_steps}); lower lr, check the data (trajtune build's manifest), "
                        f"or resume from the last good checkpoint in {checkpoint.checkpoints_dir(output_dir)}")
            losses[step] = loss
            if step % cfg.log_steps == 0 or step == total_steps:
                values = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "bad_steps": bad_total,
                          "mem_gb": memory_gb(engine.device)}
                values.update(throughput.rates(int(totals[1]), int(global_trained), step_seconds))
                metrics.log(step, values)
                FILE_ONLY.info("step %d/%d: loss %.6g, lr %.3g, grad norm %.3g, %.3f s", step, total_steps, loss, lr,
                               grad_norm, step_seconds)
            if val_ds is not None and cfg.eval_steps and step % cfg.eval_steps == 0 and step < total_steps:
                val_loss = validation_loss(engine, val_ds, cfg.micro_batch_size)
                metrics.log(step, {"val_loss": val_loss})
            stopping = bool(totals[2] > 0)
            # The second step this process runs (the first warms up), or the only one.
            if step - start_step >= 2 or step == total_steps or stopping:
                timing.record("step_seconds", step_seconds, step)
            if step == total_steps or stopping or (cfg.save_steps and step % cfg.save_steps == 0):
                t_save = time.perf_counter()
                checkpoint.save(engine, output_dir, step, {**trainer_state, "bad_steps": bad_total}, cfg.keep_last)
                timing.record("checkpoint_seconds", time.perf_counter() - t_save, step)
                last_saved = step
            if stopping:
                # A rank stopped by a peer's signal reports SIGTERM: what a launcher stopping the job would send.
                signum = stop.signum or signal.SIGTERM
                saved = checkpoint.latest_checkpoint(output_dir)
                if is_main:
                    again = "run the same command again" if cfg.resume == "auto" else "run again with resume=auto"
                    log.warning("%s: stopped at step %d with a checkpoint (%s); %s to continue",
                                signal.Signals(signum).name, step, saved, again)
                else:  # in its rank log: every rank agreed on this step
                    FILE_ONLY.info("%s: stopped at step %d with a checkpoint (%s)", signal.Signals(signum).name, step,
                                   saved)
                return {"step": step, "losses": losses, "bad_steps": bad_total, "stopped": True, "signal": signum,
                        "already_trained": False, "checkpoint": str(saved), "val_loss": val_loss}

        # --- End: final validation, checkpoint (if the loop did not just write it), export ---
        if val_ds is not None:
            val_loss = validation_loss(engine, val_ds, cfg.micro_batch_size)
            metrics.log(step, {"val_loss": val_loss})
        if last_saved != step:
            t_save = time.perf_counter()
            checkpoint.save(engine, output_dir, step, {**trainer_state, "bad_steps": bad_total}, cfg.keep_last)
            timing.record("checkpoint_seconds", time.perf_counter() - t_save, step)
        if cfg.export:
            export(engine, cfg, tokenizer, output_dir / "final", {
                "config": dataclasses.asdict(cfg), "steps": step, "data_sha256": data_sha,
                "attention_backend": attn_backend, "recipe": manifest.get("recipe")})
        FILE_ONLY.info("finished at step %d", step)
    except BaseException as e:
        rank_log.failure(e)
        raise
    finally:
        forget_pid(rank)  # before the handlers go: a signal sent after that would kill the rank
        if stop is not None:
            stop.restore()
        if metrics is not None:
            metrics.close()
        shutdown_distributed()
        rank_log.close()
    return {"step": step, "losses": losses, "bad_steps": bad_total, "stopped": False, "signal": None,
            "already_trained": False, "checkpoint": str(checkpoint.latest_checkpoint(output_dir)), "val_loss": val_loss}


def _exported_step(final_dir: Path) -> int | None:
    """The step of the export in `final_dir` (its trajtune.json), or None when there is none."""
    info = final_dir / "trajtune.json"
    return json.loads(info.read_text()).get("steps") if info.is_file() else None


def export(engine: Any, cfg: TrainConfig, tokenizer: Any, out_dir: Path, info: dict[str, Any]) -> None:
    """Collective: consolidate the weights (ZeRO-3 gathers them to rank 0) and write a Hugging Face model there."""
    from .export import export_hf

    state_dict = engine.full_state_dict()
    if engine.rank == 0:
        export_hf(engine.model, state_dict, tokenizer, str(out_dir), info, merge_lora=cfg.merge_lora,
                  dtype="bf16" if cfg.bf16 else "fp32")
        log.info("exported %s", out_dir)
    engine.barrier()
