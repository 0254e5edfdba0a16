"""Typed configs: YAML + key=value overrides, types checked, unknown keys rejected with a suggestion."""

from dataclasses import dataclass, field

import pytest
from conftest import ROOT

from trajtune.data_builders.build import BuildConfig
from trajtune.data_builders.errors import TrajtuneError
from trajtune.launcher.cli import main
from trajtune.launcher.config import describe, load_config, parse_overrides
from trajtune.trainer.config import TrainConfig


@dataclass
class Inner:
    r: int = field(default=0, metadata={"help": "rank"})
    targets: list[str] = field(default_factory=lambda: ["q_proj"], metadata={"help": "modules"})


@dataclass
class Demo:
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate"})
    bf16: bool = field(default=False, metadata={"help": "bf16"})
    name: str | None = field(default=None, metadata={"help": "name"})
    lora: Inner = field(default_factory=Inner, metadata={"help": "LoRA"})


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-5\nlora:\n  r: 4\n")
    cfg = load_config(Demo, path, ["bf16=true", "lora.targets=[a,b]", "lr=2e-5"])
    assert cfg.lr == 2e-5 and cfg.bf16 is True and cfg.lora.r == 4 and cfg.lora.targets == ["a", "b"]


def test_unknown_key_is_an_error_with_suggestion():
    with pytest.raises(TrajtuneError, match="did you mean lr"):
        load_config(Demo, None, ["lrr=1"])
    with pytest.raises(TrajtuneError, match="lora.rr"):
        load_config(Demo, None, ["lora.rr=1"])


def test_wrong_type_is_an_error():
    with pytest.raises(TrajtuneError, match="bf16: expected true or false"):
        load_config(Demo, None, ["bf16=3"])
    with pytest.raises(TrajtuneError, match="not key=value"):
        parse_overrides(["lr"])


def test_every_field_has_help():
    assert all(help_text for _, _, help_text in describe(Demo))
    assert ("lora.r", "0", "rank") in describe(Demo)


# --- Where a bad key came from, and trajtune's name for other trainers' keys (through the real CLI) ---

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def test_unknown_override_names_the_command_line_and_trajtunes_key(capsys):
    assert main(["train", "--config", QUICKSTART, "learning_rate=1e-5"]) == 2
    err = capsys.readouterr().err
    assert ("override 'learning_rate=1e-5' on the command line: unknown config key 'learning_rate'; "
            "trajtune calls it lr") in err
    assert "quickstart.yaml" not in err  # the file is fine; the command line is not


def test_unknown_yaml_key_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\n\nnum_train_epochs: 2\n")
    assert main(["train", "--config", str(path), "lr=1e-5"]) == 2
    assert f"{path}:3: unknown config key 'num_train_epochs'; trajtune calls it epochs" in capsys.readouterr().err
    path.write_text("lora:\n  r: 4\n  alpha: high\n")
    assert main(["train", "--config", str(path)]) == 2
    assert f"{path}:3: lora.alpha: expected int, got 'high'" in capsys.readouterr().err


@pytest.mark.parametrize("pair, says", [
    ("per_device_train_batch_size=2", "trajtune calls it micro_batch_size"),
    ("gradient_accumulation_steps=8", "derives accumulation = global_batch_size / (micro_batch_size × world size)"),
    ("max_seq_length=2048", "trajtune build --seq-len"),
    ("lora_r=16", "trajtune calls it lora.r"),
    ("warmpu_ratio=0.1", "did you mean warmup_ratio?"),
    ("lr=fast", "lr: expected a number, got 'fast'"),
])
def test_other_trainers_keys_and_typos_get_a_suggestion(pair, says):
    with pytest.raises(TrajtuneError, match="on the command line") as e:
        load_config(TrainConfig, None, [pair])
    assert says in str(e.value)


def test_build_config_maps_max_seq_length_to_its_own_key(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("max_seq_length: 2048\n")
    with pytest.raises(TrajtuneError) as e:
        load_config(BuildConfig, path)
    assert f"{path}:1: unknown config key 'max_seq_length'; trajtune calls it seq_len" in str(e.value)
