"""The shared training loop: exact resume, crash-safe checkpoints, divergence, multi-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_training import TinyDataset, TinyModel, tiny_config
from torch import nn

from vpt.errors import TrainingDiverged
from vpt.runs import Run
from vpt.training import lr_factor, train
from vpt.training.sampler import ResumableSampler


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in Run(run_dir).read_metrics() if "loss" in r]


def _train(run_dir: Path, max_steps: int, *, kill_at: int | None = None, **overrides) -> int:
    torch.manual_seed(0)  # the model init must be the same for every run
    model = TinyModel(kill_at=kill_at)
    return train(model, TinyDataset(), tiny_config(max_steps=max_steps, **overrides), Run.open(run_dir))


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_is_exact(tmp_path, grad_accum):
    """8 steps straight == killed during step 5 (after the step-4 checkpoint) + resume to 8."""
    _train(tmp_path / "straight", 8, grad_accum=grad_accum)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "split", 8, grad_accum=grad_accum, kill_at=4 * grad_accum + 1)
    assert Run(tmp_path / "split").latest_step() == 4
    torch.manual_seed(999)  # a resumed process starts with unrelated RNG state
    assert _train(tmp_path / "split", 8, grad_accum=grad_accum) == 8
    straight, split = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert [s for s, _ in straight] == list(range(1, 9))
    assert split == straight  # identical losses, step for step, no duplicated steps
    # the final weights are identical as well
    a = Run(tmp_path / "straight").latest_checkpoint() / "model.safetensors"
    b = Run(tmp_path / "split").latest_checkpoint() / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()


class _ModelWithFrozenPart(TinyModel):
    """A backend whose `train()` keeps a frozen part in eval mode (as NeuralSDE's frozen drift)."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Dropout(0.5)  # built in training mode, as every new module
        self.frozen_modes: list[bool] = []

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def loss(self, batch):
        self.frozen_modes.append(self.frozen.training)
        return super().loss(batch)


def test_the_loop_trains_through_the_models_own_train_method(tmp_path):
    """Frozen parts are in eval mode from the first step, not only after a validation restored training mode."""
    model = _ModelWithFrozenPart()
    train(model, TinyDataset(), tiny_config(max_steps=3), Run.open(tmp_path / "run"))
    assert model.frozen_modes == [False, False, False]
    assert model.net.training


def test_checkpoints_are_pruned_and_latest_points_to_newest(tmp_path):
    _train(tmp_path / "run", 8)
    run = Run(tmp_path / "run")
    names = [p.name for p in run.finished_checkpoints()]
    assert names == ["step_000006", "step_000008"]  # keep_last=2
    assert (run.checkpoints_dir / "latest").read_text().strip() == "step_000008"
    ckpt = run.latest_checkpoint()
    for name in (
        "model.safetensors",
        "ema.safetensors",
        "config.json",
        "trainer_state.json",
        "rng_state_0.pt",
        "training_state/optimizer.bin",
    ):
        assert (ckpt / name).is_file(), name
    # the weights live once, beside accelerate's state, and nothing in it needs numpy to unpickle
    assert sorted(p.name for p in (ckpt / "training_state").iterdir()) == ["optimizer.bin"]
    assert json.loads((ckpt / "config.json").read_text())["train"]["max_steps"] == 8
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["samples_seen"] == 8 * 4


def test_crash_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch):
    """A crash in the middle of writing step 6 leaves step 4 as `latest`, and the run resumes from it."""
    real_save = torch.save

    def crashing_save(obj, path, *args, **kwargs):
        if "step_000006" in str(path) and str(path).endswith("optimizer.bin"):
            raise KeyboardInterrupt("simulated kill while writing the checkpoint")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", 8)
    monkeypatch.setattr(torch, "save", real_save)
    run = Run(tmp_path / "run")
    assert run.latest_checkpoint().name == "step_000004"
    assert any(p.name.startswith(".pending") for p in run.checkpoints_dir.iterdir())
    assert _train(tmp_path / "run", 8) == 8
    assert not any(p.name.startswith(".pending") for p in run.checkpoints_dir.iterdir())
    _train(tmp_path / "straight", 8)
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")


def test_checkpoint_of_the_flat_layout_still_resumes_exactly(tmp_path):
    """Runs written before accelerate's state was kept (optimizer.pt beside the weights) continue bit-identically."""
    import shutil

    _train(tmp_path / "straight", 8)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "old", 8, kill_at=5)  # the lr schedule depends on max_steps: stop as a kill would
    ckpt = Run(tmp_path / "old").latest_checkpoint()
    (ckpt / "training_state" / "optimizer.bin").rename(ckpt / "optimizer.pt")  # the same torch.save dict
    shutil.rmtree(ckpt / "training_state")
    (ckpt / "config.json").unlink()
    record = json.loads((ckpt / "trainer_state.json").read_text())
    del record["sharded"]
    (ckpt / "trainer_state.json").write_text(json.dumps(record))
    assert _train(tmp_path / "old", 8) == 8
    assert _losses(tmp_path / "old") == _losses(tmp_path / "straight")


def test_stale_latest_pointer_falls_back_to_newest_finished(tmp_path):
    _train(tmp_path / "run", 4)
    run = Run(tmp_path / "run")
    (run.checkpoints_dir / "latest").write_text("step_999999\n")  # names a dir that is gone
    assert run.latest_checkpoint().name == "step_000004"
    (run.checkpoints_dir / "latest").unlink()
    assert run.latest_step() == 4


def test_nan_loss_stops_with_clear_message_and_keeps_last_good(tmp_path):
    torch.manual_seed(0)
    run = Run.open(tmp_path / "run")
    model = TinyModel(poison_at=5)  # the 5th loss call (step 5) is NaN
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5.*step_000004"):
        train(model, TinyDataset(), tiny_config(max_steps=8), run)
    assert run.latest_checkpoint().name == "step_000004"
    assert max(step for step, _ in _losses(tmp_path / "run")) == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before the update


def test_ema_tracks_weights(tmp_path):
    from safetensors.torch import load_file

    _train(tmp_path / "run", 8, ema_decay=0.5)
    ckpt = Run(tmp_path / "run").latest_checkpoint()
    raw, ema = load_file(ckpt / "model.safetensors"), load_file(ckpt / "ema.safetensors")
    assert set(ema) == set(raw)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # averaged, not a copy


def test_lr_schedule_warmup_then_cosine():
    cfg = tiny_config(max_steps=12, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.5)
    assert lr_factor(1, cfg) == pytest.approx(1.0)
    assert lr_factor(2, cfg) == pytest.approx(1.0)
    assert lr_factor(7, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lr_factor(12, cfg) == pytest.approx(0.1)
    assert lr_factor(5, tiny_config(lr_schedule="constant", warmup_steps=0)) == 1.0
    from_zero = tiny_config(max_steps=12, warmup_steps=2, lr_schedule="constant", warmup_from_zero=True)
    assert [lr_factor(step, from_zero) for step in range(3)] == [0.0, 0.5, 1.0]  # transformers' warm-up


def test_sampler_shards_and_resumes_the_same_stream():
    full = ResumableSampler(10, seed=3)
    stream = [next(it) for it in [iter(full)] for _ in range(25)]
    assert sorted(k.index for k in stream[:10]) == list(range(10))  # each epoch is a permutation
    ranks = [ResumableSampler(10, seed=3, rank=r, world=2) for r in range(2)]
    taken = [[k for k, _ in zip(iter(s), range(12))] for s in ranks]
    assert taken[0] == stream[0:24:2] and taken[1] == stream[1:24:2]
    resumed = ResumableSampler(10, seed=3, rank=1, world=2, start=8)
    assert [k for k, _ in zip(iter(resumed), range(4))] == stream[9:17:2]


def test_accelerate_launch_two_processes_trains_and_resumes(tmp_path):
    script = Path(__file__).parent / "tiny_training.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}

    def launch(run_dir: Path, steps: int, kill_at: int | None = None, expect_rc: int = 0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script),
            "--run",
            str(run_dir),
            "--max-steps",
            str(steps),
        ]
        cmd += ["--kill-at", str(kill_at)] if kill_at else []
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert (result.returncode == 0) == (expect_rc == 0), result.stderr[-3000:]

    launch(tmp_path / "straight", 6)
    launch(tmp_path / "split", 6, kill_at=4, expect_rc=130)  # both ranks die during step 4
    assert Run(tmp_path / "split").latest_step() == 2
    launch(tmp_path / "split", 6)
    straight, split = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert [s for s, _ in straight] == list(range(1, 7))
    assert split == straight
    ckpt = Run(tmp_path / "split").latest_checkpoint()
    assert {p.name for p in ckpt.glob("rng_state_*.pt")} == {"rng_state_0.pt", "rng_state_1.pt"}
    assert json.loads((ckpt / "trainer_state.json").read_text())["samples_seen"] == 6 * 4 * 2


def test_bf16_precision_runs_the_loss_under_autocast(tmp_path):
    seen = []

    class Probe(TinyModel):
        def loss(self, batch):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return super().loss(batch)

    torch.manual_seed(0)
    train(Probe(), TinyDataset(), tiny_config(max_steps=2, precision="bf16"), Run.open(tmp_path / "run"))
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert all(r["loss"] == r["loss"] for r in Run(tmp_path / "run").read_metrics())  # finite, logged


def test_max_minutes_stops_with_a_checkpoint_and_resumes(tmp_path):
    assert _train(tmp_path / "run", 8, max_minutes=1e-9) == 1  # budget spent after the first step
    run = Run(tmp_path / "run")
    assert run.latest_step() == 1
    assert _train(tmp_path / "run", 8) == 8
    assert [s for s, _ in _losses(tmp_path / "run")] == list(range(1, 9))


def test_dataset_on_device_hook_is_applied_before_the_loss(tmp_path):
    class Zeroing(TinyDataset):
        def on_device(self, batch):
            return {**batch, "x": batch["x"] * 0.0, "y": batch["y"] * 0.0}

    class Probe(TinyModel):
        def loss(self, batch):
            assert torch.count_nonzero(batch["x"]) == 0
            return super().loss(batch)

    torch.manual_seed(0)
    assert train(Probe(), Zeroing(), tiny_config(max_steps=2), Run.open(tmp_path / "run")) == 2


def test_fsdp2_sharded_parameters_through_the_loops_helpers(tmp_path):
    """Two gloo processes shard the tiny model with torch's FSDP2: the full weights gathered for
    model.safetensors, per-group clipping and the EMA (update, gather for ema.safetensors, reload into
    shards) match the unsharded model. accelerate applies FSDP
    only on GPUs; benchmarks/multi_gpu_check.sh runs the whole loop under it there."""
    script = Path(__file__).parent / "fsdp_dtensor_check.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path / "ema.safetensors"),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fsdp2 dtensor checks passed" in result.stdout


def test_resume_on_more_processes_warns_about_the_data_order(tmp_path):
    """A checkpoint of one process resumes under 2-process DDP: weights and optimizer load, the run says
    the data order changes, and no step is lost or repeated."""
    script = Path(__file__).parent / "tiny_training.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), "--run", str(tmp_path / "run"), "--max-steps", "6", "--kill-at", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 130 and Run(tmp_path / "run").latest_step() == 4, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(script),
            "--run",
            str(tmp_path / "run"),
            "--max-steps",
            "6",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "written by 1 processes, resuming with 2: the data order changes" in " ".join(two.stderr.split())
    assert [s for s, _ in _losses(tmp_path / "run")] == list(range(1, 7))
    state = json.loads((Run(tmp_path / "run").latest_checkpoint() / "trainer_state.json").read_text())
    assert state["world_size"] == 2


@pytest.mark.parametrize(
    "kind, fsdp2, refused",
    [
        ("FSDP", False, "fsdp_version: 2"),
        ("DEEPSPEED", False, "DeepSpeed"),
        ("FSDP", True, None),
        ("MULTI_GPU", False, None),
    ],
)
def test_unsupported_parallelism_is_one_line(kind, fsdp2, refused):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from vpt.distributed import check_parallelism
    from vpt.errors import ConfigError

    accelerator = SimpleNamespace(distributed_type=DistributedType[kind], is_fsdp2=fsdp2)
    if refused is None:
        check_parallelism(accelerator)
    else:
        with pytest.raises(ConfigError, match=refused):
            check_parallelism(accelerator)
