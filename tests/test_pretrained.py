"""Models and tokenizers named on the command line: a local directory first, then the Hugging Face cache (offline);
a mistyped path says where it looked and that nothing is downloaded, never the Hub's "Repo id must be ..."."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, TEMPLATES

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.pretrained import resolve_pretrained
from trajtune.launcher.cli import main

DATA = str(FIXTURES / "datasets" / "openai_chat_tools.jsonl")


def put_in_hub_cache(cache: Path, repo_id: str, files: Path, commit: str = "0123456789abcdef") -> Path:
    """Lay out `files` as the cached snapshot of `repo_id` (models--org--name/snapshots/<commit>, refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    """A built dataset and a tiny model (the same tokenizer), for the model= paths."""
    from test_train import make_run_inputs

    return make_run_inputs(tmp_path_factory.mktemp("pretrained"), n_packs=4)


def assert_says_where_it_looked(err: str, local: Path, cache_dir: str) -> None:
    assert f"no local directory {local.absolute()}" in err
    assert f"Hugging Face cache {cache_dir}" in err
    assert "Nothing is downloaded here" in err
    assert "Repo id must be" not in err


def test_mistyped_tokenizer_path_says_where_it_looked(run_inputs, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    data, _ = run_inputs
    typo = data / "tokenizr"
    assert main(["render", "--data", DATA, "--tokenizer", str(typo), "--index", "0"]) == 2
    err = capsys.readouterr().err
    assert_says_where_it_looked(err, typo, constants.HF_HUB_CACHE)
    assert f"did you mean {data / 'tokenizer'}?" in err
    # build, with a relative path that is also a valid hub id (org/name): both places were tried
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--data", DATA, "--tokenizer", "models/tokenizr", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert_says_where_it_looked(err, Path("models/tokenizr"), constants.HF_HUB_CACHE)
    assert "(models--models--tokenizr)" in err and "hf download models/tokenizr" in err
    assert not (tmp_path / "out").exists()


def test_mistyped_model_path_fails_train_with_the_same_message(run_inputs, tmp_path, capsys):
    from huggingface_hub import constants

    data, model = run_inputs
    typo = model.with_name("modle")
    assert main(["train", f"model={typo}", f"data={data}", f"output_dir={tmp_path / 'run'}", "engine=torch",
                 "bf16=false", "micro_batch_size=1", "global_batch_size=1", "max_steps=1", "report_to=none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"trajtune train: error: model '{typo}' not found")
    assert_says_where_it_looked(err, typo, constants.HF_HUB_CACHE)
    assert f"did you mean {model}?" in err


def test_a_file_is_not_a_model_directory(run_inputs):
    _, model = run_inputs
    with pytest.raises(TrajtuneError, match=f"is a file; give the directory that holds it \\({model}\\)"):
        resolve_pretrained(model / "config.json")


def test_hub_id_resolves_from_the_cache_through_the_cli(run_inputs, tmp_path):
    from trajtune.data_builders.tokenizer import byte_level_tokenizer

    tok_dir = tmp_path / "tok"
    byte_level_tokenizer((TEMPLATES / "qwen2.5-instruct.jinja").read_text()).save_pretrained(str(tok_dir))
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "acme/agent-tok", tok_dir)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "trajtune.launcher.cli", "render", "--data", DATA, "--tokenizer",
                           "acme/agent-tok", "--index", "0", "--json"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    assert "<|im_start|>assistant" in line["text"] and sum(line["loss_mask"]) > 0


def test_hub_id_model_loads_from_the_cache(run_inputs, tmp_path, monkeypatch):
    import torch
    from huggingface_hub import constants

    from trajtune.trainer.modeling import load_model

    _, model_dir = run_inputs
    snapshot = put_in_hub_cache(tmp_path / "hub", "acme/tiny-llama", model_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # what HF_HUB_CACHE sets at import
    assert resolve_pretrained("acme/tiny-llama") == str(snapshot)
    model, _ = load_model("acme/tiny-llama", dtype=torch.float32, attn="sdpa")
    assert model.config.vocab_size > 256 and model.config.use_cache is False
