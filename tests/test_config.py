"""Typed configs: YAML + --set overrides, and one-line errors for every user mistake."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from vpt.config import config_to_dict, dump_config, load_config, parse_override
from vpt.errors import ConfigError
from vpt.training import TrainConfig


@dataclass
class ModelSection:
    depth: int = 2
    width: float = 1.5
    sampler: Literal["euler", "heun", "rk4"] = "rk4"
    channels: list[int] = field(default_factory=lambda: [64, 128])
    pretrained: Optional[str] = None


@dataclass
class Schema:
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)


def _write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_file_and_overrides_are_typed(tmp_path):
    path = _write(tmp_path, "model:\n  depth: 4\n  channels: [8, 16, 32]\ntrain:\n  lr: 1e-4\n")
    cfg = load_config(
        Schema,
        path,
        [
            "train.max_steps=20",
            "model.width=2",
            "train.compile=true",
            "model.channels=[1,2]",
            "model.pretrained=/tmp/x",
            "train.betas=0.5,0.9",
        ],
    )
    assert cfg.model.depth == 4 and cfg.model.channels == [1, 2]
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)  # "1e-4" is a str to PyYAML
    assert cfg.train.max_steps == 20 and cfg.train.compile is True
    assert cfg.model.width == 2.0 and isinstance(cfg.model.width, float)
    assert cfg.model.pretrained == "/tmp/x" and cfg.train.betas == [0.5, 0.9]
    assert cfg.train.batch_size == TrainConfig().batch_size  # untouched defaults stay
    # the resolved config round-trips
    again = load_config(Schema, _write(tmp_path, dump_config(cfg)))
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (
            "train:\n  batch_sise: 1\n",
            [],
            r"cfg.yaml: unknown key 'train.batch_sise' \(did you mean 'train.batch_size'\?\)",
        ),
        (
            "train:\n  lerning_rate: 1\n",
            [],
            r"cfg.yaml: unknown key 'train.lerning_rate' \(valid keys: max_steps, .*\blr\b",
        ),
        ("modle:\n  depth: 1\n", [], r"unknown key 'modle' \(did you mean 'model'\?\)"),
        ("model:\n  depth: two\n", [], r"cfg.yaml: 'model.depth' expects int, got 'two' \(str\)"),
        (
            "model:\n  sampler: rk5\n",
            [],
            r"'model.sampler' expects one of \['euler', 'heun', 'rk4'\], got 'rk5' \(did you mean 'rk4'\?\)",
        ),
        ("model:\n  channels: [1, x]\n", [], r"'model.channels\[1\]' expects int"),
        ("train:\n  max_steps: 0\n", [], r"train.max_steps must be >= 1"),
        (
            "model: {}\n",
            ["train.max_step=3"],
            r"--set train.max_step=3: unknown key 'train.max_step' \(did you mean 'train.max_steps'\?\)",
        ),
        ("model: {}\n", ["train.lr=fast"], r"--set train.lr=fast: 'train.lr' expects float, got 'fast'"),
        ("model: {}\n", ["nonsense"], r"expected section.key=value"),
        ("model: [1\n", [], r"not valid YAML"),
    ],
)
def test_mistakes_raise_one_line(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Schema, _write(tmp_path, text), overrides)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml"):
        load_config(Schema, tmp_path / "nope.yaml")


def test_parse_override_types():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert parse_override("a.b=false") == (["a", "b"], False)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=x=y") == (["a"], "x=y")
