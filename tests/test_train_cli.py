"""`trajtune train` as a user runs it, again and again: a rerun of a finished run is a no-op, a byte-identical
rebuild of the dataset resumes, other data is refused; Ctrl-C checkpoints and exits 130 (twice: aborts at once);
a dataset whose tokenizer does not fit the model is refused before any weight is read.

Plain-PyTorch engine on CPU with the tiny inputs of test_train.py; one real subprocess for the Ctrl-C run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import config, make_run_inputs, wrap_loss

from trajtune.launcher.cli import main as cli_main
from trajtune.trainer import loop
from trajtune.trainer.modeling import make_tiny_llama

BASE = {"engine": "torch", "bf16": "false", "micro_batch_size": 2, "global_batch_size": 4, "lr": 1e-3,
        "save_steps": 0, "report_to": "none", "attn": "sdpa"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_run_inputs(tmp_path_factory.mktemp("train_cli"), n_packs=16)


def cli_args(data: Path, model: Path, out: Path, **overrides) -> list[str]:
    args = {"model": model, "data": data, "output_dir": out, **BASE, **overrides}
    return ["train", *(f"{k}={v}" for k, v in args.items())]


def rewrite_manifest(data: Path, **changes) -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    manifest.update(changes)
    (data / "manifest.json").write_text(json.dumps(manifest))


def loss_rows(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


# --- Data identity: what training reads, not when it was built ---

def test_rerun_is_a_no_op_a_rebuilt_dataset_resumes_and_other_data_is_refused(inputs, tmp_path, capsys, caplog):
    src, model = inputs
    data = tmp_path / "data"
    shutil.copytree(src, data)
    rewrite_manifest(data, data_sha256="a" * 64, created="2026-01-01T00:00:00Z", build_seconds=1.5)
    out = tmp_path / "run"
    args = cli_args(data, model, out, max_steps=3, export="true")
    assert cli_main(args) == 0
    assert json.loads((out / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())["data_sha256"] == \
        "a" * 64
    assert json.loads((out / "run_info.json").read_text())["data_sha256"] == "a" * 64
    assert json.loads((out / "final" / "trajtune.json").read_text())["data_sha256"] == "a" * 64
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()

    # The README's job run again: `build` rewrites the manifest (new timestamps), the packs are the same.
    rewrite_manifest(data, created="2026-01-02T00:00:00Z", build_seconds=2.5)
    caplog.set_level(logging.INFO, logger="trajtune")
    assert cli_main(args) == 0
    assert "already trained at step 3" in capsys.readouterr().out
    assert any("already trained" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.name == "trajtune.modeling"]  # no model was loaded
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten

    resumed = loop.train(config(data, model, out, max_steps=5))  # more steps on the same data: resumes at 3
    assert sorted(resumed["losses"]) == [4, 5]

    rewrite_manifest(data, data_sha256="b" * 64)  # packs, tokenizer or seq_len changed
    assert cli_main(cli_args(data, model, out, max_steps=6)) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "trained on other data" in err
    assert "a" * 64 in err and "b" * 64 in err and "resume=none" in err


def test_a_build_without_data_sha256_is_identified_by_its_manifest_file(inputs, tmp_path):
    data, model = inputs
    out = tmp_path / "run"
    loop.train(config(data, model, out, max_steps=1))
    state = json.loads((out / "checkpoints" / "step_00000001" / "trainer_state.json").read_text())
    assert state["data_sha256"] == hashlib.sha256((data / "manifest.json").read_bytes()).hexdigest()


# --- Signals: Ctrl-C checkpoints at the step boundary, exits 130; a second one aborts at once ---

def test_ctrl_c_checkpoints_exits_130_and_resumes_with_the_same_losses(inputs, tmp_path):
    data, model = inputs
    out = tmp_path / "run"
    # Constant lr, so the resumed run (fewer total steps) follows the same schedule as the reference below.
    constant = {"schedule": "constant", "warmup_ratio": 0.0}
    proc = subprocess.Popen([sys.executable, "-m", "trajtune.launcher.cli",
                             *cli_args(data, model, out, max_steps=500, **constant)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no step logged in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    stopped = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 1 <= stopped < 500
    assert "press Ctrl-C again to abort" in err
    resume_lines = [line for line in err.splitlines() if "to continue" in line]
    assert len(resume_lines) == 1 and f"SIGINT: stopped at step {stopped} with a checkpoint" in resume_lines[0]
    assert "run the same command again" in resume_lines[0] and "Traceback" not in err

    resumed = loop.train(config(data, model, out, max_steps=stopped + 2, **constant))
    reference = loop.train(config(data, model, tmp_path / "reference", max_steps=stopped + 2, **constant))
    assert sorted(resumed["losses"]) == [stopped + 1, stopped + 2]
    logged = loss_rows(out)
    for step in range(1, stopped + 3):
        assert logged[step] == pytest.approx(reference["losses"][step], rel=1e-6, abs=0), step


def test_a_second_ctrl_c_aborts_the_step_at_once_without_a_checkpoint(inputs, tmp_path, monkeypatch, capsys):
    data, model = inputs

    def ctrl_c_twice_in_step_2(n, loss):  # two micro-batches a step: calls 3 and 4 are step 2
        if n in (3, 4):
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    wrap_loss(monkeypatch, ctrl_c_twice_in_step_2)
    out = tmp_path / "run"
    try:
        code = cli_main(cli_args(data, model, out, max_steps=6))
    except KeyboardInterrupt:  # would otherwise end the whole pytest session
        pytest.fail("the second Ctrl-C escaped `trajtune train` as a KeyboardInterrupt")
    assert code == 130
    assert "aborted by Ctrl-C; latest checkpoint: None" in capsys.readouterr().err
    assert not (out / "checkpoints" / "latest").exists()  # step 2 never finished, so nothing was saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


# --- The dataset and the model must agree ---

def test_a_dataset_whose_tokenizer_does_not_fit_the_model_is_refused_before_loading(inputs, tmp_path, capsys,
                                                                                    caplog):
    from transformers import AutoTokenizer

    data, _ = inputs
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))  # 264 ids: 256 bytes + the template's specials
    small = make_tiny_llama(str(tmp_path / "small"), 200)  # another model's vocabulary: eos 2, no pad
    caplog.set_level(logging.INFO, logger="trajtune")
    assert cli_main(cli_args(data, small, tmp_path / "run", max_steps=1)) == 2
    err = capsys.readouterr().err
    assert "does not fit model" in err and "ids go up to 263, the model has 200 embedding rows" in err
    assert f"eos '<|im_end|>' = {tok.eos_token_id}" in err  # names the special tokens out of range
    assert "trajtune build --tokenizer" in err and "resize_token_embeddings(264)" in err
    assert not [r for r in caplog.records if r.name == "trajtune.modeling"]  # refused before loading weights

    # Room enough, but the model's eos is no token of the dataset's tokenizer: another vocabulary.
    other = make_tiny_llama(str(tmp_path / "other"), 300, eos_token_id=290)
    assert cli_main(cli_args(data, other, tmp_path / "run", max_steps=1)) == 2
    err = capsys.readouterr().err
    assert "eos_token_id 290 (config.json) is no token of the dataset's tokenizer" in err
    assert "trajtune build --tokenizer" in err
    assert not (tmp_path / "run").exists()
