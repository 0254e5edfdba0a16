"""HF export: full, LoRA adapter and merged exports reload with from_pretrained (and PeftModel) and give the
in-memory model's logits; trajtune.json and the chat template travel along; a given state dict wins."""

import json
import math
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TEMPLATES
from peft import PeftModel
from test_train_distributed import free_port
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from trajtune.data_builders.errors import TrajtuneError
from trajtune.data_builders.render import template_stop_tokens
from trajtune.data_builders.tokenizer import byte_level_tokenizer
from trajtune.trainer.export import export_hf
from trajtune.trainer.modeling import load_model, make_tiny_llama

TEMPLATE = (TEMPLATES / "llama-3.1-instruct.jinja").read_text()
LORA = SimpleNamespace(r=4, alpha=8, dropout=0.0, targets=None)


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer(TEMPLATE)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    return make_tiny_llama(str(tmp_path_factory.mktemp("base")), len(tok), tok)


def _ids(vocab):
    return torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(0))


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _perturb(model, scale=0.02, only=None):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if only is None or only in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def test_full_export_reloads_with_same_logits_template_and_info(tmp_path, base_dir, tok):
    model, _ = load_model(base_dir, dtype=torch.float32, attn="varlen")  # a training-only backend name
    _perturb(model)  # "trained": differs from the base on disk
    out = tmp_path / "hf"
    export_hf(model, None, tok, str(out), {"steps": 7, "data_manifest_sha256": "abc"}, dtype="fp32")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    ids = _ids(model.config.vocab_size)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is True and config["dtype"] == "float32"
    assert "trajtune_varlen" not in (out / "config.json").read_text()
    info = json.loads((out / "trajtune.json").read_text())
    assert info == {"format": "full", "dtype": "float32", "steps": 7, "data_manifest_sha256": "abc"}
    assert AutoTokenizer.from_pretrained(out).chat_template == TEMPLATE


def test_default_export_is_bf16_safetensors(tmp_path, base_dir, tok):
    model, _ = load_model(base_dir, dtype=torch.float32, attn="sdpa")
    out = tmp_path / "hf"
    export_hf(model, None, tok, str(out), {})
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    want = model.state_dict()
    for k, v in reloaded.state_dict().items():  # the exact bf16 rounding of the trained weights
        assert v.dtype == torch.bfloat16 and torch.equal(v, want[k].to(torch.bfloat16)), k
    ids = _ids(model.config.vocab_size)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), rtol=0, atol=0.05)


def test_given_state_dict_is_what_gets_saved(tmp_path, base_dir, tok):
    """Under ZeRO-3 the live parameters are shards; the consolidated state dict is the truth."""
    model, _ = load_model(base_dir, dtype=torch.float32, attn="sdpa")
    trained = {k: v + 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    export_hf(model, trained, tok, str(tmp_path / "hf"), {}, dtype="fp32")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, trained[k])


def test_tied_embeddings_export_reloads(tmp_path, tok):
    src = make_tiny_llama(str(tmp_path / "tied"), len(tok), tok, tie_word_embeddings=True)
    model, _ = load_model(src, dtype=torch.float32, attn="sdpa")
    _perturb(model)
    export_hf(model, None, tok, str(tmp_path / "hf"), {}, dtype="fp32")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    ids = _ids(model.config.vocab_size)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)


def test_lora_adapter_and_merged_exports_give_the_lora_models_logits(tmp_path, base_dir, tok):
    model, _ = load_model(base_dir, dtype=torch.float32, attn="sdpa", lora=LORA)
    _perturb(model, scale=0.1, only="lora_B")  # lora_B starts at zero: make the adapter do something
    ids = _ids(model.get_base_model().config.vocab_size)
    want = _logits(model, ids)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(base_dir), ids)
    assert (want - base_logits).abs().max() > 1e-3

    export_hf(model, None, tok, str(tmp_path / "adapter"), {"steps": 1}, dtype="fp32")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter")
    torch.testing.assert_close(_logits(with_adapter, ids), want, rtol=1e-5, atol=1e-5)

    export_hf(model, model.state_dict(), tok, str(tmp_path / "merged"), {"steps": 1}, merge_lora=True, dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_logits(merged, ids), want, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "merged" / "adapter" / "adapter_config.json").exists()
    info = json.loads((tmp_path / "merged" / "trajtune.json").read_text())
    assert info["format"] == "lora_merged" and info["base_model"] == base_dir
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template == TEMPLATE
    # The training model is left as it was: still a LoRA model with its adapter.
    torch.testing.assert_close(_logits(model, ids), want)


def test_merge_without_lora_and_bad_dtype_are_errors(tmp_path, base_dir, tok):
    model, _ = load_model(base_dir, dtype=torch.float32, attn="sdpa")
    with pytest.raises(TrajtuneError, match="no LoRA"):
        export_hf(model, None, tok, str(tmp_path / "a"), {}, merge_lora=True)
    with pytest.raises(TrajtuneError, match="bf16, fp16, fp32"):
        export_hf(model, None, tok, str(tmp_path / "b"), {}, dtype="int8")


@pytest.fixture
def umask_002():
    """A umask unlike the usual 022, so a mode that ignores it cannot pass by chance; restored afterwards."""
    old = os.umask(0o002)
    yield 0o664
    os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode) for p in directory.rglob("*") if p.is_file()}


def test_exported_and_tiny_model_files_get_the_umask_mode(tmp_path, base_dir, tok, umask_002):
    """safetensors writes a 0600 temp file and renames it; every file must get 0o666 minus the umask instead."""
    from trajtune.launcher.cli import main

    model, _ = load_model(base_dir, dtype=torch.float32, attn="sdpa", lora=LORA)
    export_hf(model, None, tok, str(tmp_path / "merged"), {}, merge_lora=True, dtype="fp32")  # full + adapter/
    tok.save_pretrained(tmp_path / "tok")
    assert main(["tiny-model", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "tiny")]) == 0
    for out in ("merged", "tiny"):
        modes = _modes(tmp_path / out)
        assert {"model.safetensors", "config.json"} <= set(modes), modes
        assert modes == dict.fromkeys(modes, umask_002), (out, {k: oct(v) for k, v in modes.items()})
    assert "adapter/adapter_model.safetensors" in _modes(tmp_path / "merged")


ZERO3_SCRIPT = textwrap.dedent("""
    import sys, torch, deepspeed
    from types import SimpleNamespace
    from transformers import AutoModelForCausalLM
    from trajtune.trainer.modeling import load_model
    from trajtune.trainer.export import export_hf
    base, out = sys.argv[1], sys.argv[2]
    deepspeed.init_distributed(dist_backend="gloo")
    ds = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1}
    lora = SimpleNamespace(r=4, alpha=8, dropout=0.0, targets=None)
    model, _ = load_model(base, dtype=torch.float32, attn="sdpa", ds_config=ds, lora=lora)
    q = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert q.numel() == 0 and tuple(q.ds_shape) == (64, 64), "ZeRO-3 did not partition at load"
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        full = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in full.items():
            if "lora_B" in k:
                v.fill_(0.01)
    export_hf(model, full, None, out, {}, merge_lora=True, dtype="fp32")
    plain, _ = load_model(base, dtype=torch.float32, attn="sdpa", ds_config=ds)
    with deepspeed.zero.GatheredParameters(list(plain.parameters())):
        full = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    export_hf(plain, full, None, out + "-full", {}, dtype="fp32")
    print("OK")
""")


def test_zero3_load_is_partitioned_and_exports_from_gathered_state_dict(tmp_path, base_dir):
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
               WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT, base_dir, str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    # W' = W + (alpha / r) * B @ A with B = 0.01: every q/k/v/o weight moved, nothing else did.
    moved = {k for k, v in merged.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert moved and all(k.split(".")[-2] in {"q_proj", "k_proj", "v_proj", "o_proj"} for k in moved)
    assert Path(out, "adapter", "adapter_model.safetensors").exists()
    full = AutoModelForCausalLM.from_pretrained(f"{out}-full")  # plain ZeRO-3 model: exactly the base weights
    for k, v in full.state_dict().items():
        assert torch.equal(v, base.state_dict()[k]), k


def _fake_torch_run(run: Path, model, base_dir: str, lora_r: int = 0) -> Path:
    """A run directory in trainer/checkpoint.py's layout, as engine=torch writes it (model.pt = state_dict)."""
    import yaml

    from trajtune.launcher.config import to_dict
    from trajtune.trainer.config import TrainConfig

    cfg = TrainConfig(model=base_dir, data=str(run / "no-data"), output_dir=str(run))
    cfg.lora.r = lora_r
    ckpt = run / "checkpoints" / "step_00000003"
    ckpt.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt / "model.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 3, "data_manifest_sha256": "f00"}))
    (run / "checkpoints" / "latest").write_text("step_00000003\n")
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    return ckpt


def test_cli_export_of_a_full_checkpoint(tmp_path, base_dir):
    from trajtune.launcher.cli import main

    model, _ = load_model(base_dir, dtype=torch.float32, attn="sdpa")
    _perturb(model)
    _fake_torch_run(tmp_path / "run", model, base_dir)
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = _ids(model.config.vocab_size)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)
    info = json.loads((tmp_path / "hf" / "trajtune.json").read_text())
    assert info["steps"] == 3 and info["data_sha256"] == "f00" and info["config"]["model"] == base_dir  # older key read
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template == TEMPLATE  # the base model's tokenizer
    # --merge on a full fine-tune is a user error: exit 2 with a message, no traceback.
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "m"), "--merge"]) == 2


def test_cli_export_of_a_lora_checkpoint_merged(tmp_path, base_dir):
    from trajtune.launcher.cli import main

    model, _ = load_model(base_dir, dtype=torch.float32, attn="sdpa", lora=SimpleNamespace(
        r=8, alpha=16, dropout=0.0, targets=["q_proj", "k_proj", "v_proj", "o_proj"]))  # = TrainConfig defaults
    _perturb(model, scale=0.1, only="lora_B")
    _fake_torch_run(tmp_path / "run", model, base_dir, lora_r=8)
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoints"), "--out", str(tmp_path / "hf"),
                 "--merge", "--dtype", "fp32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = _ids(merged.config.vocab_size)
    torch.testing.assert_close(_logits(merged, ids), _logits(model, ids), rtol=1e-4, atol=1e-4)
    # Without --merge: the adapter alone, which peft loads onto the base model (the skeleton was never loaded).
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "adapter"), "--dtype", "fp32"]) == 0
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "adapter")
    torch.testing.assert_close(_logits(adapted, ids), _logits(model, ids), rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "adapter" / "trajtune.json").read_text())["base_model"] == base_dir


@pytest.fixture(scope="module")
def base_style(tmp_path_factory):
    """A base model's tokenizer (eos `<|endoftext|>`; `<|im_end|>` only a vocabulary token) given Qwen2.5-Instruct's
    ChatML template, as when a base model is fine-tuned on chat data, and a tiny model whose eos is the same."""
    tok = byte_level_tokenizer((TEMPLATES / "qwen2.5-instruct.jinja").read_text(), ["<|endoftext|>"])
    tok.eos_token = tok.pad_token = "<|endoftext|>"
    return tok, make_tiny_llama(str(tmp_path_factory.mktemp("base-style")), len(tok), tok)


@pytest.mark.parametrize("template, eos, want", [
    ("qwen2.5-instruct.jinja", "<|endoftext|>", ["<|im_end|>"]),  # the eos is the export's to add, not the template's
    ("glm-4-9b-chat.jinja", None, ["<|user|>", "<|observation|>"]),  # next role token; after a call, observation
    ("llama-3.1-instruct.jinja", None, ["<|eot_id|>"]),  # <|eom_id|> is in its text but not after a reply
])
def test_template_stop_tokens_are_what_the_template_renders(template, eos, want):
    tok = byte_level_tokenizer((TEMPLATES / template).read_text(), [eos] if eos else [])
    if eos:
        tok.eos_token = eos
    assert template_stop_tokens(tok).tokens() == want


def test_export_of_a_base_model_on_chatml_stops_at_im_end(tmp_path, base_style):
    """generation_config.json / config.json eos: the base's <|endoftext|> and the template's <|im_end|>, so
    transformers (and vLLM, which reads the same file) stop at the end of the assistant turn."""
    from trajtune.launcher.cli import main

    tok, base = base_style
    eot, im_end = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert json.loads(Path(base, "config.json").read_text())["eos_token_id"] == eot  # the base alone: no im_end
    model, _ = load_model(base, dtype=torch.float32, attn="sdpa")
    _fake_torch_run(tmp_path / "run", model, base)
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--dtype", "fp32"]) == 0
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [eot, im_end]
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == [eot, im_end]
    assert GenerationConfig.from_pretrained(out).eos_token_id == [eot, im_end]
    # generate stops at <|im_end|>: biased so greedy decoding picks it first, it is the only new token.
    prompt = torch.tensor([tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")])
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    new = reloaded.generate(prompt, max_new_tokens=4, do_sample=False, sequence_bias={(im_end,): 100.0})
    assert new[0, prompt.shape[1]:].tolist() == [im_end]


@pytest.mark.slow
def test_lora_zero3_gradient_checkpointing_two_ranks_match_one_process(tmp_path):
    """`trajtune train` under the deepspeed launcher, 2 ranks, LoRA + ZeRO-3 + gradient checkpointing, gives the loss
    curve of a 1-process LoRA run without either. Before DeepSpeed 0.19.3 the recompute of a checkpointed block
    re-partitioned frozen weights under torch's checkpoint (CheckpointError "Recomputed values ... different
    metadata"; transformers issue 47254), hence setup.py's floor: with DeepSpeed 0.19.2 this test fails so."""
    from test_train import make_run_inputs
    from test_train_distributed import STEPS, deepspeed_cmd, metrics, run, run_args

    from trajtune.launcher.config import load_config
    from trajtune.trainer.config import TrainConfig
    from trajtune.trainer.loop import train

    data, model = make_run_inputs(tmp_path, n_packs=16)
    lora = {"lora.r": 4, "lora.alpha": 8}
    run(deepspeed_cmd(2, run_args(data, model, tmp_path / "two", gradient_checkpointing="true", export="true", **lora)))
    one = train(load_config(TrainConfig, None, run_args(data, model, tmp_path / "one", engine="torch", **lora)))
    two = metrics(tmp_path / "two")
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in two:
        assert math.isfinite(two[step]["loss"]) and two[step]["loss"] == pytest.approx(one["losses"][step], rel=1e-4)
    assert two[STEPS]["loss"] < two[1]["loss"]
    info = json.loads((tmp_path / "two" / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["ds_config"]["zero_optimization"]["stage"] == 3
    assert (tmp_path / "two" / "final" / "adapter_config.json").is_file()
