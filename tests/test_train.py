"""The training loop in one process (plain-PyTorch engine, fp32, CPU, a tiny Llama): it trains, micro-batching
does not change the update, resume is exact, NaN steps are skipped, a signal checkpoints, bad configs fail early.

Also home of `make_run_inputs`, the tiny built dataset + model the distributed tests share.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from conftest import TEMPLATES

from trajtune.data_builders.errors import TrajtuneError
from trajtune.launcher.cli import main as cli_main
from trajtune.launcher.config import load_config
from trajtune.trainer import loop
from trajtune.trainer.config import TrainConfig
from trajtune.trainer.data import collate
from trajtune.trainer.engine import load_consolidated_state_dict


def make_run_inputs(root: Path, n_packs: int = 16, seq_len: int = 48, val_packs: int = 0, seed: int = 0):
    """A `trajtune build`-shaped dataset of random packs (+ tokenizer) and a tiny Llama; returns (data, model)."""
    from datasets import Dataset

    from trajtune.data_builders.tokenizer import byte_level_tokenizer
    from trajtune.trainer.modeling import make_tiny_llama

    tok = byte_level_tokenizer((TEMPLATES / "qwen2.5-instruct.jinja").read_text())
    rng = random.Random(seed)

    def packs(n: int) -> dict[str, list]:
        cols: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": []}
        for _ in range(n):
            ids, labels, pos, lens = [], [], [], []
            while True:
                length = rng.randint(4, 16)
                if len(ids) + length > seq_len - rng.randint(0, 8):
                    break
                sample = [rng.randrange(256) for _ in range(length)]
                prompt = rng.randint(1, length - 1)  # the first `prompt` tokens are not trained
                ids += sample
                labels += [-100] * prompt + sample[prompt:]
                pos += list(range(length))
                lens.append(length)
            for k, v in zip(cols, (ids, labels, pos, lens)):
                cols[k].append(v)
        return cols

    data = root / "data"
    Dataset.from_dict(packs(n_packs)).save_to_disk(str(data / "train"))
    if val_packs:
        Dataset.from_dict(packs(val_packs)).save_to_disk(str(data / "validation"))
    tok.save_pretrained(str(data / "tokenizer"))
    (data / "manifest.json").write_text(json.dumps({"seq_len": seq_len, "packs": n_packs}))
    model = make_tiny_llama(str(root / "model"), len(tok), tok, seed=seed)
    return data, Path(model)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_inputs")
    return make_run_inputs(root, n_packs=16, val_packs=3)


def config(data: Path, model: Path, out: Path, **overrides) -> TrainConfig:
    base = {"model": str(model), "data": str(data), "output_dir": str(out), "engine": "torch", "bf16": False,
            "micro_batch_size": 2, "global_batch_size": 4, "max_steps": 6, "lr": 1e-3, "warmup_ratio": 0.2,
            "save_steps": 0, "report_to": "none", "export": False, "attn": "sdpa"}
    base.update(overrides)
    return load_config(TrainConfig, None, [f"{k}={v}" for k, v in base.items()])


def test_collate_joins_packs_into_one_row_and_masks_every_boundary():
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, -100, 8, 9], "position_ids": [0, 1, 0, 1, 2]},
            {"input_ids": [1, 2], "labels": [-100, 2], "position_ids": [0, 1]}]
    b = collate(rows)
    # One row (flash-attn in transformers finds sample boundaries from position_ids only at batch size 1).
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2]]
    assert b["targets"].tolist() == [[6, -100, 8, 9, -100, 2, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1]]
    assert b["lengths"].tolist() == [5, 2]


def test_data_order_covers_each_pack_once_per_epoch_whatever_the_split():
    from trajtune.trainer.data import step_micro_batches, stream_indices

    n, global_batch = 12, 4
    epoch = [i for step in range(3) for i in stream_indices(n, 7, step * global_batch, global_batch)]
    assert sorted(epoch) == list(range(n))  # every pack once, none dropped
    assert stream_indices(n, 7, 12, 12) != epoch and sorted(stream_indices(n, 7, 12, 12)) == list(range(n))
    for step in range(4):  # 1 rank × 4 micro-batches of 1 == 2 ranks × 1 micro-batch of 2: the same packs
        one = [i for mb in step_micro_batches(n, 7, step, global_batch, 1, 0, 1) for i in mb]
        two = [i for r in (0, 1) for mb in step_micro_batches(n, 7, step, global_batch, 2, r, 2) for i in mb]
        assert one == two == stream_indices(n, 7, step * global_batch, global_batch)


def test_torch_engine_trains_writes_run_files_and_exports(inputs, tmp_path):
    data, model = inputs
    out = tmp_path / "run"
    result = loop.train(config(data, model, out, max_steps=8, export=True, eval_steps=4, report_to="tensorboard"))
    losses = [result["losses"][s] for s in range(1, 9)]
    assert result["step"] == 8 and not result["stopped"]
    assert sum(losses[-2:]) < sum(losses[:2]) - 0.1, losses  # it learns (random bytes, but the per-pack unigram)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert all({"lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in train_rows)
    assert any("val_loss" in r for r in rows) and result["val_loss"] is not None
    assert load_config(TrainConfig, out / "config.yaml").max_steps == 8  # resolved config reloads
    assert json.loads((out / "run_info.json").read_text())["accumulation_steps"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    trained = load_consolidated_state_dict(out)
    for name, tensor in exported.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], atol=0, rtol=0)


def test_micro_batching_does_not_change_the_update(inputs, tmp_path):
    """1×4, 2×2 and 4×1 (micro × accumulation) over the same 4 packs give the same weights after a step."""
    data, model = inputs
    weights = []
    for micro in (1, 2, 4):
        out = tmp_path / f"m{micro}"
        loop.train(config(data, model, out, micro_batch_size=micro, max_steps=1, warmup_ratio=0.0))
        weights.append(load_consolidated_state_dict(out))
    norms = [json.loads((tmp_path / f"m{m}" / "metrics.jsonl").read_text().splitlines()[0])["grad_norm"]
             for m in (1, 2, 4)]
    assert norms[1] == pytest.approx(norms[0], rel=1e-5) and norms[2] == pytest.approx(norms[0], rel=1e-5)
    before = load_consolidated_state_dict_from_model(model)
    for name in weights[0]:
        assert not torch.equal(weights[0][name], before[name]), name  # the step did change every weight
        for other in weights[1:]:
            # Adam's first step is ~lr·g/|g|: a near-zero gradient turns fp32 summation-order noise into up to
            # ~1% of the lr (1e-3), so compare at 1e-5; a wrong normalisation is off by a whole step (1e-3).
            torch.testing.assert_close(other[name], weights[0][name], atol=1e-5, rtol=1e-5)


def load_consolidated_state_dict_from_model(model: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model)).state_dict()


def test_resume_continues_with_the_same_losses(inputs, tmp_path):
    data, model = inputs
    full = loop.train(config(data, model, tmp_path / "full", save_steps=3, keep_last=5))
    # A new run directory resuming from the step-3 checkpoint of the first run.
    resumed = loop.train(config(data, model, tmp_path / "resumed",
                                resume=str(tmp_path / "full" / "checkpoints" / "step_00000003")))
    assert sorted(resumed["losses"]) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed["losses"][step] == full["losses"][step]
    # keep_last rotation and the latest pointer
    kept = sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000003", "step_00000006"]


def test_resume_auto_ignores_a_half_written_checkpoint(inputs, tmp_path):
    data, model = inputs
    out = tmp_path / "run"
    loop.train(config(data, model, out, max_steps=3))
    (out / "checkpoints" / ".tmp-step_00000004" / "engine").mkdir(parents=True)  # a crash mid-save
    again = loop.train(config(data, model, out, max_steps=4))  # resume=auto; the run extended by one step
    assert sorted(again["losses"]) == [4]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert not list((out / "checkpoints").glob(".tmp-*"))


def wrap_loss(monkeypatch, on_call) -> None:
    """Make loop.token_loss_sum return on_call(n, loss): n counts its calls from 1 (two micro-batches a step here)."""
    real, calls = loop.token_loss_sum, itertools.count(1)
    monkeypatch.setattr(loop, "token_loss_sum", lambda logits, targets: on_call(next(calls), real(logits, targets)))


def test_nan_loss_skips_the_step_and_counts_it(inputs, tmp_path, monkeypatch):
    data, model = inputs
    wrap_loss(monkeypatch, lambda n, loss: loss * float("nan") if n in (3, 4) else loss)  # both micro-batches of step 2
    out = tmp_path / "run"
    result = loop.train(config(data, model, out, max_steps=4, max_bad_steps=2))
    assert result["bad_steps"] == 1 and result["step"] == 4
    assert result["losses"][2] != result["losses"][2]  # NaN logged, not hidden
    assert all(torch.isfinite(t).all() for t in load_consolidated_state_dict(out).values())


def test_too_many_bad_steps_in_a_row_abort(inputs, tmp_path, monkeypatch):
    data, model = inputs
    monkeypatch.setattr(loop, "token_loss_sum", lambda logits, targets: logits.sum() * float("nan"))
    with pytest.raises(TrajtuneError, match=r"2 steps in a row.*max_bad_steps=2"):
        loop.train(config(data, model, tmp_path / "run", max_bad_steps=2))


def test_sigusr1_saves_a_checkpoint_and_stops(inputs, tmp_path, monkeypatch):
    data, model = inputs

    def signal_during_step_2(n, loss):
        if n == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss

    wrap_loss(monkeypatch, signal_during_step_2)
    out = tmp_path / "run"
    result = loop.train(config(data, model, out))
    assert result["stopped"] and result["step"] == 2 and result["signal"] == signal.SIGUSR1
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored


def test_global_batch_that_micro_batches_cannot_tile_is_an_error(inputs, tmp_path):
    data, model = inputs
    with pytest.raises(TrajtuneError, match="global_batch_size=5 is not a multiple of micro_batch_size=2"):
        loop.train(config(data, model, tmp_path / "run", global_batch_size=5))


def test_cli_rejects_an_unknown_key_with_a_suggestion(capsys):
    assert cli_main(["train", "model=m", "data=d", "learning_rate=1e-5"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'learning_rate'" in err


def test_cli_lists_keys_with_help(capsys):
    assert cli_main(["train", "--keys"]) == 0
    listing = capsys.readouterr().out
    for key in ("global_batch_size", "lora.r", "ds_config", "resume", "max_bad_steps"):
        assert key in listing


def test_missing_dataset_is_a_clear_error(inputs, tmp_path):
    _, model = inputs
    with pytest.raises(TrajtuneError, match="no manifest.json"):
        loop.train(config(tmp_path / "nowhere", model, tmp_path / "run"))


def test_export_takes_the_models_tokenizer_without_a_dataset_one_and_fails_before_training_without_any(inputs, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    data, model = inputs
    bare = tmp_path / "data"
    shutil.copytree(data, bare, ignore=shutil.ignore_patterns("tokenizer"))
    out = tmp_path / "run"
    loop.train(config(bare, model, out, max_steps=1, export=True))
    assert AutoTokenizer.from_pretrained(str(out / "final")).chat_template == \
        AutoTokenizer.from_pretrained(str(model)).chat_template
    no_tok = tmp_path / "model"
    shutil.copytree(model, no_tok, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*", "special_tokens*"))
    with pytest.raises(TrajtuneError, match=r"(?s)no tokenizer in .*the export would not be usable"):
        loop.train(config(bare, no_tok, tmp_path / "run2", max_steps=1, export=True))
    assert not (tmp_path / "run2" / "checkpoints").exists()  # refused before any step


def test_lora_run_trains_only_the_adapter_and_exports_it_merged(inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    data, model = inputs
    out = tmp_path / "lora"
    result = loop.train(config(data, model, out, max_steps=6, export=True, merge_lora=True, **{"lora.r": 4}))
    assert result["losses"][6] < result["losses"][1]
    trained = load_consolidated_state_dict(out)
    base = load_consolidated_state_dict_from_model(model)
    base_in_peft = {k: v for k, v in trained.items() if "lora_" not in k}
    for name, tensor in base_in_peft.items():  # frozen base weights untouched
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(tensor, base[plain]), name
    merged = AutoModelForCausalLM.from_pretrained(str(out / "final")).state_dict()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])
    assert (out / "final" / "adapter").is_dir()


def test_lr_warms_up_linearly_then_decays_by_cosine(tmp_path):
    cfg = config(tmp_path, tmp_path, tmp_path, lr=1.0, warmup_ratio=0.1, max_steps=100)
    lrs = [loop.lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.001


def test_ds_config_gets_batch_sizes_from_the_run_and_refuses_its_own(tmp_path):
    from conftest import ROOT

    from trajtune.launcher.config import build as build_config
    from trajtune.trainer.ds_config import build_ds_config

    cfg = build_config(TrainConfig, {"model": "m", "data": "d", "micro_batch_size": 2, "global_batch_size": 64,
                                     "max_grad_norm": 0.5, "bf16": True})
    ds = build_ds_config(ROOT / "ds_configs" / "zero3.json", cfg, accumulation=4, world_size=8)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == \
        (64, 2, 4)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True} and "optimizer" not in ds
    offload = build_ds_config(ROOT / "ds_configs" / "zero3_offload.json", cfg, accumulation=4, world_size=8)
    assert offload["optimizer"]["params"]["lr"] == cfg.lr  # DeepSpeed's CPU Adam for offloaded states
    for bad, message in (({"train_batch_size": 32}, "remove 'train_batch_size'"),
                         ({"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto"}},
                          "zero_optimization.reduce_bucket_size is \"auto\"")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(TrajtuneError, match=message):
            build_ds_config(path, cfg, accumulation=4, world_size=8)


def test_bf16_sums_micro_batch_gradients_in_fp32_unless_the_ds_config_says_otherwise(tmp_path):
    from conftest import ROOT

    from trajtune.launcher.config import build as build_config
    from trajtune.trainer.ds_config import build_ds_config

    def ds_for(bf16: bool, path=ROOT / "ds_configs" / "zero3.json"):
        cfg = build_config(TrainConfig, {"model": "m", "data": "d", "global_batch_size": 8, "bf16": bf16})
        return build_ds_config(path, cfg, accumulation=4, world_size=2)

    # DeepSpeed's key (runtime/constants.py DATA_TYPES / GRAD_ACCUM_DTYPE); by default it accumulates in bf16.
    assert ds_for(True)["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in ds_for(False)  # fp32 training accumulates in fp32 already
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}, "data_types": {"grad_accum_dtype": "bf16"}}))
    assert ds_for(True, own)["data_types"] == {"grad_accum_dtype": "bf16"}


class _FakeEngine:
    """Just enough of the engine interface for checkpoint.save: one rank, a file per checkpoint."""

    rank, world_size = 0, 1

    def barrier(self) -> None:
        pass

    def save_checkpoint(self, path) -> None:
        (Path(path) / "weights.txt").write_text("w")


def test_rotation_never_deletes_the_checkpoint_just_saved(tmp_path):
    from trajtune.trainer import checkpoint

    engine = _FakeEngine()
    for step in (400, 500, 150):  # a run resumed from an older checkpoint saves below newer ones
        checkpoint.save(engine, tmp_path, step, {}, keep_last=2)
    assert checkpoint.latest_checkpoint(tmp_path).name == checkpoint.step_name(150)
    assert checkpoint.latest_checkpoint(tmp_path).is_dir()
    for step in (160, 170):
        checkpoint.save(engine, tmp_path, step, {}, keep_last=2)
    kept = sorted(p.name for p in checkpoint.checkpoints_dir(tmp_path).glob("step_*"))
    assert kept == [checkpoint.step_name(s) for s in (160, 170, 400, 500)]  # rotation within this timeline only


def test_merge_lora_without_lora_is_refused_before_training(tmp_path):
    with pytest.raises(TrajtuneError, match="merge_lora=true needs a LoRA run"):
        config(tmp_path, tmp_path, tmp_path, merge_lora=True).check()


def test_token_loss_sum_is_cross_entropy_over_trained_positions_with_the_same_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.tensor([[-100, 3, 4, -100, -100, 7], [1, -100, -100, -100, 2, -100]])
    got = loop.token_loss_sum(logits, targets)
    (grad,) = torch.autograd.grad(got, logits)
    want = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 11), targets.reshape(-1), reduction="sum")
    (want_grad,) = torch.autograd.grad(want, logits)
    assert got.dtype == torch.float32 and torch.allclose(got, want)
    assert torch.equal(grad, want_grad) and not grad[0, 0].any() and grad[0, 1].any()
    nothing = loop.token_loss_sum(logits, torch.full((2, 6), -100))
    assert nothing.item() == 0 and not torch.autograd.grad(nothing, logits)[0].any()
