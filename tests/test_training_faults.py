"""Training state a user can trust: the same seed gives the same run, Ctrl-C keeps a checkpoint, an
EMA switched on later starts from the trained weights, a non-finite gradient never reaches the
weights, and one GAN player's gradient never changes the other's step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from data_helpers import shapes_h5 as make_shapes_h5
from safetensors.torch import load_file
from tiny_training import TinyDataset, TinyModel, tiny_config
from torch import nn

from vpt.errors import TrainingDiverged
from vpt.runs import Run
from vpt.training import Hooks, train

REPO = Path(__file__).resolve().parents[1]
AE_CONFIG = REPO / "configs" / "ae" / "shapes.yaml"
AE_TINY = [
    "--set",
    "autoencoder.arch.ch=8",
    "--set",
    "autoencoder.arch.ch_mult=[1,2]",
    "--set",
    "autoencoder.arch.resolution=32",
    "--set",
    "autoencoder.arch.n_embed=32",
    "--set",
    "autoencoder.arch.norm_groups=4",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.val_every=0",
    "--set",
    "train.sample_every=0",
    "--set",
    "loss.disc_start=0",
    "--log-every",
    "1",
]
RIVER_CONFIG = """
backend: river
model: {latent_channels: 4, inner_dim: 32, depth: 1, mid_depth: 1, heads: 2, dropout: 0.1, context_frames: 1}
data: {frames: 4}
train: {max_steps: 3, batch_size: 2, log_every: 1, checkpoint_every: 3, sample_every: 0, val_every: 0}
"""
SEER_TINY = [
    "--set",
    "model.frames=3",
    "--set",
    "data.frames=3",
    "--set",
    "data.image_size=16",
    "--set",
    "model.unet.block_out_channels=[32,32,64]",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "train.log_every=1",
    "--set",
    "train.sample_every=0",
    "--set",
    "train.val_every=0",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Built-in shapes videos (root/videos) and their HDF5 (root/h5)."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_h5(root, num_videos=12, frames=6)
    return root


def _metrics_without_timing(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in Run(run).read_metrics()]


def _weights(run: Path) -> bytes:
    return (Run(run).latest_checkpoint() / "model.safetensors").read_bytes()


def _assert_identical_runs(a: Path, b: Path) -> None:
    first = _metrics_without_timing(a)
    assert first and first == _metrics_without_timing(b)  # every logged value, bit for bit
    assert _weights(a) == _weights(b)


# --- same config + seed => same run ----------------------------------------------------------------------


def test_train_ae_is_bit_identical_for_the_same_seed(shapes, tmp_path, invoke):
    for name in ("a", "b"):
        code, output = invoke(
            "train-ae",
            "--config",
            AE_CONFIG,
            "--data",
            shapes / "h5",
            "--run",
            tmp_path / name,
            "--max-steps",
            3,
            *AE_TINY,
        )
        assert code == 0, output
    _assert_identical_runs(tmp_path / "a", tmp_path / "b")
    code, output = invoke(
        "train-ae",
        "--config",
        AE_CONFIG,
        "--data",
        shapes / "h5",
        "--run",
        tmp_path / "c",
        "--max-steps",
        3,
        *AE_TINY,
        "--set",
        "train.seed=1",
    )
    assert code == 0, output
    assert _weights(tmp_path / "c") != _weights(tmp_path / "a")  # the seed is what decides


def test_train_river_is_bit_identical_for_the_same_seed(shapes, tmp_path, invoke):
    code, output = invoke(
        "train-ae", "--config", AE_CONFIG, "--data", shapes / "h5", "--run", tmp_path / "ae", "--max-steps", 1, *AE_TINY
    )
    assert code == 0, output
    (tmp_path / "river.yaml").write_text(RIVER_CONFIG)
    for name in ("a", "b"):
        code, output = invoke(
            "train",
            "river",
            "--config",
            tmp_path / "river.yaml",
            "--data",
            shapes / "h5",
            "--ae",
            tmp_path / "ae",
            "--run",
            tmp_path / name,
        )
        assert code == 0, output
    _assert_identical_runs(tmp_path / "a", tmp_path / "b")


def test_train_seer_is_bit_identical_for_the_same_seed(shapes, tmp_path, invoke):
    for name in ("a", "b"):
        code, output = invoke(
            "train",
            "seer",
            "--config",
            REPO / "configs" / "seer" / "tiny.yaml",
            "--data",
            shapes / "videos",
            "--run",
            tmp_path / name,
            "--max-steps",
            2,
            *SEER_TINY,
        )
        assert code == 0, output
    _assert_identical_runs(tmp_path / "a", tmp_path / "b")


# --- Ctrl-C ----------------------------------------------------------------------------------------------


def test_first_ctrl_c_finishes_the_step_and_keeps_a_checkpoint(shapes, tmp_path):
    """A real `vpt train-ae` process gets SIGINT mid-run: it writes a checkpoint at the step it reached,
    says so, exits 130, and the same command continues exactly as an uninterrupted run."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "vpt",
        "train-ae",
        "--config",
        str(AE_CONFIG),
        "--data",
        str(shapes / "h5"),
        *AE_TINY,
        "--set",
        "train.checkpoint_every=1000",
    ]
    run = tmp_path / "run"
    process = subprocess.Popen(
        [*command, "--run", str(run), "--max-steps", "1000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(Run(run).read_metrics()) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    stopped = Run(run).latest_step()
    assert 3 <= stopped < 1000
    message = " ".join(stderr.split())
    assert f"stopped at step {stopped} (Ctrl-C)" in message and "run the same command to continue" in message
    assert "Traceback" not in stderr

    finish = stopped + 2
    for name in ("run", "straight"):
        result = subprocess.run(
            [*command, "--run", str(tmp_path / name), "--max-steps", str(finish)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert _metrics_without_timing(run) == _metrics_without_timing(tmp_path / "straight")


def test_second_ctrl_c_aborts_at_once():
    from vpt.training.loop import _StopRequests

    # Python's own handler, as in a terminal: a shell that starts pytest in the background ignores SIGINT
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _StopRequests() as requests:
            os.kill(os.getpid(), signal.SIGINT)
            assert requests.requested  # the first only asks the loop to stop
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, inherited)


# --- EMA, non-finite gradients, GAN clipping --------------------------------------------------------------


def test_ema_switched_on_at_resume_starts_from_the_trained_weights(tmp_path):
    torch.manual_seed(0)
    train(TinyModel(), TinyDataset(), tiny_config(max_steps=4, ema_decay=0.0), Run.open(tmp_path / "run"))
    trained = load_file(Run(tmp_path / "run").latest_checkpoint() / "model.safetensors")
    torch.manual_seed(1)  # a different random init: it must not leak into the EMA
    train(TinyModel(), TinyDataset(), tiny_config(max_steps=5, ema_decay=0.9), Run.open(tmp_path / "run"))
    step5 = Run(tmp_path / "run").latest_checkpoint()
    raw, ema = load_file(step5 / "model.safetensors"), load_file(step5 / "ema.safetensors")
    for name in raw:
        torch.testing.assert_close(ema[name], 0.9 * trained[name] + 0.1 * raw[name])


class _InfiniteGradient(TinyModel):
    """From its `bad_at`-th call the loss stays finite but its gradient is NaN (d sqrt(u)/du at u = 0)."""

    def __init__(self, bad_at: int):
        super().__init__()
        self.bad_at = bad_at

    def loss(self, batch):
        out = super().loss(batch)
        if self.calls >= self.bad_at:
            out["loss"] = out["loss"] + torch.sqrt(self.net[0].weight.sum() * 0.0)
        return out


def test_finite_loss_with_non_finite_gradient_stops_before_the_update(tmp_path):
    torch.manual_seed(0)
    run = Run.open(tmp_path / "run")
    model = _InfiniteGradient(bad_at=5)
    with pytest.raises(TrainingDiverged, match=r"gradient norm became nan at step 5.*step_000004"):
        train(model, TinyDataset(), tiny_config(max_steps=8, grad_clip=0.0), run)
    kept = load_file(run.latest_checkpoint() / "model.safetensors")
    assert run.latest_checkpoint().name == "step_000004"
    assert all(torch.isfinite(v).all() for v in kept.values())
    # stopped before the update: the weights are those of the kept checkpoint
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())


class _TwoPlayers(nn.Module):
    """Two independent players in one optimizer: `b`'s loss is scaled by `scale`."""

    def __init__(self, scale: float):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 2), nn.Linear(8, 2)
        self.scale = scale

    def param_groups(self):
        return [{"params": list(self.a.parameters())}, {"params": list(self.b.parameters())}]

    def loss(self, batch):
        loss_a = ((self.a(batch["x"]) - batch["y"]) ** 2).mean()
        loss_b = ((self.b(batch["x"]) + batch["y"]) ** 2).mean()
        return {"loss": loss_a + self.scale * loss_b}


def test_each_player_is_clipped_on_its_own(tmp_path):
    """Scaling one player's loss by 1000 leaves the other player's updates bit-identical."""
    models = {}
    for scale in (1.0, 1000.0):
        models[scale] = _TwoPlayers(scale)
        train(
            models[scale],
            TinyDataset(),
            tiny_config(max_steps=4, grad_clip=0.05, ema_decay=0.0),
            Run.open(tmp_path / f"scale{scale}"),
        )
    for name, value in models[1.0].a.state_dict().items():
        assert torch.equal(value, models[1000.0].a.state_dict()[name])
    assert not torch.equal(models[1.0].b.weight, torch.zeros_like(models[1.0].b.weight))


def test_gan_objective_gives_each_player_its_own_group():
    from vpt.models.autoencoders import build_autoencoder
    from vpt.models.autoencoders.objective import LossConfig

    autoencoder = build_autoencoder(
        "vqgan", {"ch": 8, "ch_mult": [1, 2], "resolution": 32, "n_embed": 16, "norm_groups": 4}
    )
    objective = autoencoder.build_objective(LossConfig(perceptual_weight=0.0))
    groups = objective.param_groups()
    assert [set(map(id, g["params"])) for g in groups] == [
        {id(p) for p in objective.autoencoder.parameters()},
        {id(p) for p in objective.discriminator.parameters()},
    ]


def test_resume_without_rng_state_continues_and_says_it_is_not_exact(tmp_path, capsys):
    torch.manual_seed(0)
    train(TinyModel(), TinyDataset(), tiny_config(max_steps=4), Run.open(tmp_path / "run"))
    for file in Run(tmp_path / "run").latest_checkpoint().glob("rng_state_*.pt"):
        file.unlink()  # what a user does with an RNG file an older vpt pickled
    capsys.readouterr()
    assert train(TinyModel(), TinyDataset(), tiny_config(max_steps=6), Run.open(tmp_path / "run")) == 6
    assert "not bit-identical" in " ".join(capsys.readouterr().err.split())


def test_library_training_leaves_the_host_programs_ctrl_c_alone(tmp_path):
    """Called from another program (here pytest), the loop installs no SIGINT handler unless asked, and a
    handler it installs on request is the previous one again afterwards."""
    seen = []

    def host_handler(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, host_handler)
    try:
        inside = []
        hooks = Hooks(validate=lambda model: inside.append(signal.getsignal(signal.SIGINT)) or {})
        train(TinyModel(), TinyDataset(), tiny_config(max_steps=2, val_every=1), Run.open(tmp_path / "a"), hooks)
        assert inside and all(handler is host_handler for handler in inside)
        inside.clear()
        train(
            TinyModel(),
            TinyDataset(),
            tiny_config(max_steps=2, val_every=1),
            Run.open(tmp_path / "b"),
            hooks,
            checkpoint_on_ctrl_c=True,
        )
        assert inside and all(handler is not host_handler for handler in inside)  # the loop's own, while it ran
        assert signal.getsignal(signal.SIGINT) is host_handler  # and the host's again after
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_entry_point_owns_ctrl_c_only_while_it_runs():
    from vpt.cli import main
    from vpt.console import cli_owns_process

    with pytest.raises(SystemExit):
        main(["--version"])
    assert not cli_owns_process()  # a program that called main() keeps its own Ctrl-C afterwards
