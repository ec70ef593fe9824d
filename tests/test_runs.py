"""Run directories: create, resume, --fresh/--force, config handling, best checkpoint, hooks."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import yaml
from tiny_training import TinyDataset, TinyModel, tiny_config

from vpt.errors import ConfigError, UsageError
from vpt.runs import Run, newest_run, start_run
from vpt.training import Hooks, TrainConfig, train


@dataclass
class Schema:
    train: TrainConfig = field(default_factory=TrainConfig)


def test_new_run_writes_resolved_config(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  max_steps: 5\n  lr: 0.01\n")
    run, cfg = start_run(
        Schema, run_dir=tmp_path / "run", config_file=cfg_file, overrides=["train.seed=3"], log_every=2
    )
    stored = yaml.safe_load(run.config_path.read_text())
    assert stored["train"]["max_steps"] == 5 and stored["train"]["seed"] == 3 and stored["train"]["log_every"] == 2
    assert stored["train"]["batch_size"] == TrainConfig().batch_size  # defaults are written out too
    assert cfg.train.lr == 0.01


def test_resumed_run_keeps_its_config_and_applies_overrides(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  max_steps: 5\n")
    run, _ = start_run(Schema, run_dir=tmp_path / "run", config_file=cfg_file, overrides=[])
    run.step_dir(5).mkdir()  # a finished checkpoint: the run resumes from here on
    run.release()
    other = tmp_path / "other.yaml"
    other.write_text("train:\n  max_steps: 5\n  lr: 0.5\n")
    _, cfg = start_run(Schema, run_dir=tmp_path / "run", config_file=other, overrides=[], max_steps=9)
    assert cfg.train.lr == TrainConfig().lr  # the run's own config wins over a different --config
    assert cfg.train.max_steps == 9  # --max-steps extends it
    err = capsys.readouterr().err
    assert "differs in train.lr" in err and "max_steps" not in err  # what the command line sets is no difference


def test_ordinary_resume_with_the_same_config_says_nothing_about_differences(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  max_steps: 5\n")
    run, _ = start_run(Schema, run_dir=tmp_path / "run", config_file=cfg_file, overrides=["train.seed=4"])
    run.step_dir(5).mkdir()
    run.release()
    start_run(Schema, run_dir=tmp_path / "run", config_file=cfg_file, overrides=["train.seed=4"], max_steps=8)
    assert "differs" not in capsys.readouterr().err


def test_a_run_without_checkpoint_is_new_and_a_refused_start_writes_no_config(tmp_path):
    """A start that failed leaves no config to be resumed with; the next --config is the one used."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("train:\n  lr: 0.5\n")
    second.write_text("train:\n  lr: 0.25\n")

    def refuse(cfg):
        raise UsageError("refused before the config is written")

    with pytest.raises(UsageError, match="refused"):
        start_run(Schema, run_dir=tmp_path / "run", config_file=first, overrides=[], complete=refuse)
    assert not (tmp_path / "run" / "config.yaml").exists()
    run, _ = start_run(Schema, run_dir=tmp_path / "run", config_file=first, overrides=[])  # stops before a checkpoint
    run.release()
    _, cfg = start_run(Schema, run_dir=tmp_path / "run", config_file=second, overrides=[])
    assert cfg.train.lr == 0.25


def test_new_run_needs_a_config(tmp_path):
    with pytest.raises(UsageError, match="--config is required"):
        start_run(Schema, run_dir=tmp_path / "run", config_file=None, overrides=[])


def test_bad_override_on_resume_is_a_config_error(tmp_path):
    start_run(Schema, run_dir=tmp_path / "run", config_file=None, overrides=[], defaults={})
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        start_run(Schema, run_dir=tmp_path / "run", config_file=None, overrides=["train.max_stps=3"])


def test_fresh_needs_force_and_then_starts_over(tmp_path):
    torch.manual_seed(0)
    train(TinyModel(), TinyDataset(), tiny_config(max_steps=2), Run.open(tmp_path / "run"))
    with pytest.raises(UsageError, match=r"--fresh would delete the existing run .*step 2.*--force"):
        Run.open(tmp_path / "run", fresh=True)
    assert Run(tmp_path / "run").latest_step() == 2  # nothing was deleted
    run = Run.open(tmp_path / "run", fresh=True, force=True)
    assert run.latest_checkpoint() is None and not run.metrics_path.exists()


def test_best_checkpoint_is_kept_beyond_keep_last(tmp_path):
    scores = iter([3.0, 1.0, 2.0, 4.0])  # the best is at step 4
    seen_steps = []

    def validate(model):
        assert not model.training  # hooks run in eval mode
        return {"val_loss": next(scores)}

    def sample(model, step, out_dir):
        seen_steps.append(step)
        (out_dir / f"s{step}.txt").write_text("ok")

    torch.manual_seed(0)
    run = Run.open(tmp_path / "run")
    cfg = tiny_config(max_steps=8, checkpoint_every=2, val_every=2, sample_every=4, keep_last=1)
    train(TinyModel(), TinyDataset(), cfg, run, Hooks(validate=validate, sample=sample))
    assert [p.name for p in run.finished_checkpoints()] == ["step_000004", "step_000008"]
    assert run.best_checkpoint().name == "step_000004"
    assert seen_steps == [4, 8] and (run.samples_dir / "s8.txt").exists()
    val = [r for r in run.read_metrics() if "val_loss" in r]
    assert [(r["step"], r["val_loss"]) for r in val] == [(2, 3.0), (4, 1.0), (6, 2.0), (8, 4.0)]


def test_newest_run(tmp_path):
    for name in ("a", "b"):
        start_run(Schema, run_dir=tmp_path / "runs" / name, config_file=None, overrides=[], defaults={})
    assert newest_run(tmp_path / "runs").name == "b"
    assert newest_run(tmp_path / "empty") is None
