"""Typed configs: YAML + key=value overrides, types checked, unknown keys rejected with a suggestion."""

from dataclasses import dataclass, field

import pytest

from trajtune.data_builders.errors import TrajtuneError
from trajtune.launcher.config import describe, load_config, parse_overrides


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
