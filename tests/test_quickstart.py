"""The README's main job, end to end through the real CLI: convert -> build -> tiny-model -> train -> export.

Recipe test in torchtune's style: tiny data, the real commands, assertions on what a user would look at
(the reconciled conversion summary, the built manifest, a falling loss, an exported model that loads).
"""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import FIXTURES, ROOT, TEMPLATES


def trajtune(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "trajtune.launcher.cli", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"trajtune {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def readme_main_job(tmp_path: Path, *train_overrides: str) -> dict[str, str]:
    """The README's main job, command by command (the config shortened by `train_overrides`): their outputs."""
    inputs = sorted(str(p) for p in (FIXTURES / "datasets").iterdir() if p.is_file() and p.suffix in (".json", ".jsonl")
                    and p.name != "README.md")
    return {
        "convert": trajtune("convert", *inputs, "--from", "auto", "--out", "runs/quickstart/agent.jsonl",
                            "--quarantine", "runs/quickstart/quarantine.jsonl", cwd=tmp_path),
        "build": trajtune("build", "--data", "runs/quickstart/agent.jsonl", "--template",
                          str(TEMPLATES / "qwen2.5-instruct.jinja"), "--seq-len", "2048", "--val-fraction", "0.1",
                          "--out", "runs/quickstart/built", cwd=tmp_path),
        "tiny-model": trajtune("tiny-model", "--tokenizer", "runs/quickstart/built/tokenizer", "--out",
                               "runs/quickstart/tiny-llama", cwd=tmp_path),
        "train": trajtune("train", "--config", str(ROOT / "configs/quickstart.yaml"), *train_overrides, cwd=tmp_path),
    }


def test_readme_main_job_runs_end_to_end_and_again(tmp_path: Path):
    # The README's config, shortened: the same keys, four steps.
    out = readme_main_job(tmp_path, "max_steps=4", "save_steps=2")
    assert "read 32 = kept 29 + quarantined 3" in out["convert"]
    manifest = json.loads((tmp_path / "runs/quickstart/built/manifest.json").read_text())
    assert manifest["seq_len"] == 2048

    run = tmp_path / "runs/quickstart/run"
    losses = [row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert yaml.safe_load((run / "config.yaml").read_text())["global_batch_size"] == 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert model.config.vocab_size == len(tok) and tok.chat_template

    # The same commands again (what a user does the next morning): the dataset is rebuilt with a new timestamp
    # but the same data, and training finds the finished run instead of failing on it.
    final = (run / "final" / "model.safetensors").read_bytes()
    again = readme_main_job(tmp_path, "max_steps=4", "save_steps=2")
    assert json.loads((tmp_path / "runs/quickstart/built/manifest.json").read_text())["data_sha256"] == \
        manifest["data_sha256"]
    assert "already trained" in again["train"], again["train"]
    assert (run / "final" / "model.safetensors").read_bytes() == final
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in map(json.loads, rows) if "loss" in r]) == 4  # no step was run twice
