"""Telemetry: metrics.jsonl / TensorBoard / loss-curve files, resume trimming, rank-0-only output, MFU pieces."""

import json

import pytest
import torch

from trajtune.data_builders.errors import TrajtuneError
from trajtune.trainer import metrics
from trajtune.trainer.metrics import MetricsLogger, Throughput, memory_gb, peak_flops


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logger_writes_jsonl_tensorboard_and_loss_curve(tmp_path):
    log = MetricsLogger(str(tmp_path), "tensorboard", is_main=True, total_steps=3)
    for step, loss in [(1, 2.5), (2, 2.0), (3, 1.5)]:
        log.log(step, {"loss": loss, "lr": 1e-5 * step, "grad_norm": 0.5, "tokens_per_s": 1000.0, "mfu": 0.4})
    log.log(3, {"val_loss": 1.7})
    log.close()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    assert rows[1]["loss"] == 2.0 and rows[1]["lr"] == 2e-5 and rows[1]["grad_norm"] == 0.5
    assert rows[1]["tokens_per_s"] == 1000.0 and rows[3]["val_loss"] == 1.7
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    png = tmp_path / "loss_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_non_finite_values_are_logged_as_null_not_dropped(tmp_path):
    log = MetricsLogger(str(tmp_path), "none", is_main=True, total_steps=2)
    log.log(1, {"loss": float("nan"), "grad_norm": float("inf")})
    log.close()
    assert _rows(tmp_path / "metrics.jsonl") == [{"step": 1, "time": pytest.approx(0, abs=60), "loss": None,
                                                   "grad_norm": None}]


def test_resume_keeps_history_up_to_the_checkpoint_and_drops_the_rest(tmp_path):
    first = MetricsLogger(str(tmp_path), "none", is_main=True, total_steps=5)
    for step in range(1, 5):
        first.log(step, {"loss": 5.0 - step})
    first.close()  # the run "died" after logging step 4; its checkpoint is at step 2
    again = MetricsLogger(str(tmp_path), "none", is_main=True, total_steps=5, resume_step=2)
    for step in (3, 4, 5):
        again.log(step, {"loss": 1.0 / step})
    again.close()
    rows = _rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2]["loss"] == pytest.approx(1 / 3)


def test_only_rank_zero_writes(tmp_path):
    log = MetricsLogger(str(tmp_path / "run"), "tensorboard", is_main=False, total_steps=2)
    log.log(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "run").exists()


def test_unknown_report_to_is_an_error(tmp_path):
    with pytest.raises(TrajtuneError, match="report_to"):
        MetricsLogger(str(tmp_path), "mlflow", is_main=True, total_steps=1)


def test_peak_flops_known_gpus_cpu_and_override(monkeypatch):
    monkeypatch.delenv("TRAJTUNE_PEAK_FLOPS", raising=False)
    assert peak_flops("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, want in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("Mystery GPU", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d, n=name: n)
        assert peak_flops("cuda") == want, name
    monkeypatch.setenv("TRAJTUNE_PEAK_FLOPS", "1e15")
    assert peak_flops("cpu") == 1e15


def test_throughput_counts_trained_and_total_tokens_per_gpu_and_mfu():
    rates = Throughput(flops_per_token=1e9, peak=1e12, world_size=2).rates(
        total_tokens=8000, trained_tokens=2000, seconds=2.0)
    assert rates["tokens_per_s"] == 500.0  # trained tokens / s / GPU
    assert rates["total_tokens_per_s"] == 2000.0
    assert rates["mfu"] == pytest.approx(2000.0 * 1e9 / 1e12)
    assert "mfu" not in Throughput(1e9, None).rates(10, 5, 1.0)


def test_memory_gb_on_cpu_is_the_process_size():
    assert 0.01 < memory_gb("cpu") < 1000
    assert metrics.memory_gb(torch.device("cpu")) > 0
