"""Training telemetry: metrics.jsonl, TensorBoard (or wandb), a rank-0 progress bar, the loss-curve PNG, and MFU.

`MetricsLogger` is created on every rank but only rank 0 (`is_main`) writes anything, so the loop calls it
unconditionally. `Throughput` turns per-step token counts and wall time into trained tokens/s, total tokens/s
(per GPU) and MFU = achieved FLOP/s / the device's dense bf16 peak (`peak_flops`). FLOPs per token come from
`modeling.flops_per_token`. On resume, lines logged after the checkpoint's step by the interrupted run are
dropped from metrics.jsonl, because the resumed run logs those steps again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from ..data_builders.errors import TrajtuneError

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from the vendors' datasheets. Matched in order, so the
# more specific names come first. TRAJTUNE_PEAK_FLOPS overrides for anything not listed.
_PEAKS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("H800", 989e12),
    ("H20", 148e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]

# Shown in the progress bar, in this order, when present.
_BAR_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb")


def peak_flops(device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device (a torch.device, "cuda:0" or an index), or None when unknown/CPU.

    Example: on an H100 SXM, `peak_flops("cuda") == 989e12`.
    """
    env = os.environ.get("TRAJTUNE_PEAK_FLOPS")
    if env:
        return float(env)
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device).upper()
    return next((peak for key, peak in _PEAKS if key in name), None)


def memory_gb(device) -> float:
    """Peak memory so far, GB: CUDA max allocated on a GPU, else this process's resident set (CPU runs)."""
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import psutil

    return psutil.Process().memory_info().rss / 1e9


class Throughput:
    """Per-step speed: trained tokens/s and total tokens/s per GPU, and MFU (None where the peak is unknown).

    MFU counts every token the model processed (trained or not): the FLOPs were spent on all of them.
    """

    def __init__(self, flops_per_token: float, peak: float | None, world_size: int = 1):
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.world_size = world_size

    def rates(self, total_tokens: int, trained_tokens: int, seconds: float) -> dict[str, float]:
        """total_tokens / trained_tokens: summed over all ranks for the step; seconds: its wall time."""
        seconds = max(seconds, 1e-9)
        total = total_tokens / seconds / self.world_size
        out = {"tokens_per_s": trained_tokens / seconds / self.world_size, "total_tokens_per_s": total}
        if self.peak:
            out["mfu"] = total * self.flops_per_token / self.peak
        return out


class MetricsLogger:
    """Writes `output_dir/metrics.jsonl` (one JSON object per `log` call), TensorBoard events under
    `output_dir/tensorboard` (report_to="tensorboard") or wandb (report_to="wandb"), and a progress bar; `close`
    writes `output_dir/loss_curve.png`. Only the instance with is_main=True has any side effect.
    """

    def __init__(self, output_dir: str, report_to: str, is_main: bool, total_steps: int, resume_step: int = 0):
        if report_to not in ("tensorboard", "wandb", "none"):
            raise TrajtuneError(f"report_to={report_to!r} is not one of tensorboard, wandb, none")
        self.is_main = is_main
        self.out = Path(output_dir)
        self.history: list[dict] = []
        self._writer = self._wandb = self._bar = None
        if not is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.jsonl"
        self.history = self._kept_history(resume_step)
        with self.path.open("w", encoding="utf-8") as f:  # rewritten: stale lines past resume_step dropped
            f.writelines(json.dumps(row) + "\n" for row in self.history)
        self._file = self.path.open("a", encoding="utf-8")
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        elif report_to == "wandb":
            try:
                import wandb
            except ImportError as e:
                raise TrajtuneError("report_to=wandb needs `pip install wandb` (or use report_to=tensorboard)") from e
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "trajtune"), dir=str(self.out))
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total_steps, initial=resume_step, desc="train", dynamic_ncols=True)
        self._t0 = time.time()

    def _kept_history(self, resume_step: int) -> list[dict]:
        if not resume_step or not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("step", 0) <= resume_step:
                    rows.append(row)
        return rows

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record `values` (loss, lr, grad_norm, tokens_per_s, mfu, mem_gb, val_loss, ...) for optimizer step `step`.

        Non-finite values are written as null in JSON (and still shown in the bar) so a NaN is visible, not lost.
        """
        if not self.is_main:
            return
        row = {"step": step, "time": round(time.time() - self._t0, 3)}
        for k, v in values.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else None
        self.history.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"train/{k}" if not k.startswith("val") else f"eval/{k}", float(v), step)
        if self._wandb is not None:
            self._wandb.log({k: float(v) for k, v in values.items()}, step=step)
        if self._bar is not None:
            self._bar.update(max(0, step - self._bar.n))
            shown = {k: values[k] for k in _BAR_KEYS if k in values}
            if shown:
                self._bar.set_postfix({k: (f"{v:.3g}" if k != "mfu" else f"{100 * v:.1f}%") for k, v in shown.items()})
            if self._bar.n >= self._bar.total:
                # Closed at the last step: left open, what prints after it (export, its progress bar) would break
                # the line and close() would draw the bar a second time below.
                self._bar.close()
                self._bar = None

    def close(self) -> None:
        """Flush and close everything; write loss_curve.png (train loss, and val_loss where logged)."""
        if not self.is_main:
            return
        self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._bar is not None:
            self._bar.close()
        self.plot_loss_curve(self.out / "loss_curve.png")

    def plot_loss_curve(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        # Matplotlib's first use on a machine builds a font cache and logs it ("generated new fontManager", and a
        # warning when that takes long); our plot needs no font choice, so that is noise here.
        font_log = logging.getLogger("matplotlib.font_manager")
        level = font_log.level
        font_log.setLevel(logging.ERROR)
        try:
            import matplotlib.pyplot as plt
        finally:
            font_log.setLevel(level)

        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in (("loss", "train loss"), ("val_loss", "validation loss")):
            pts = [(r["step"], r[key]) for r in self.history if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=label, marker="o" if key == "val_loss" else None)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (per trained token)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
