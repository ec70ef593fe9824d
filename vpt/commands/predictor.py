"""Which model `vpt sample` and `vpt eval-fvd` predict with: a `vpt train` run, or published upstream
weights (`--checkpoint`, with `--backend`, `--release` and `--ae` where the file cannot tell)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

CheckpointOption = Annotated[
    Optional[Path],
    typer.Option(
        "--checkpoint",
        rich_help_panel="Model",
        help="Published upstream weights instead of a run (e.g. RIVER's model.pth).",
    ),
]
BackendOption = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        rich_help_panel="Model",
        help="Backend of --checkpoint when the file is not recognised automatically.",
    ),
]
ReleaseOption = Annotated[
    Optional[str],
    typer.Option(
        "--release",
        rich_help_panel="Model",
        help="Which release --checkpoint is, where its weights cannot tell (RIVER: bair64 or kth; a VideoGeneration-PyTorch Latte dit_ckpt.pth: vg-ucf or vg-mnist); sets its architecture where needed, frame size and protocol.",
    ),
]
AutoencoderOption = Annotated[
    Optional[Path],
    typer.Option(
        "--ae",
        rich_help_panel="Model",
        help="Autoencoder weights for --checkpoint (e.g. RIVER's vqvae.ckpt); default: the one inside the checkpoint.",
    ),
]

StepOption = Annotated[
    Optional[int],
    typer.Option(
        "--step",
        min=0,
        rich_help_panel="Model",
        help="Use the run's checkpoint of this training step (default: its latest). --run may also name a step folder, runs/NAME/checkpoints/step_NNNNNN.",
    ),
]


def load_predictor(
    run: Path | None,
    checkpoint: Path | None,
    backend: str | None,
    ae: Path | None,
    release: str | None,
    *,
    step: int | None = None,
    newest_run_default: bool = True,
) -> tuple[Any, dict, dict]:
    """(model, where it came from, the run's config or {} for published weights).

    A run predicts with the checkpoint of `step` (default: its latest); `run` may also name one of its
    checkpoint folders, and so may `checkpoint` (a vpt run's folder is never published weights)."""
    from vpt.console import info
    from vpt.errors import UsageError
    from vpt.models.backend import Backend
    from vpt.runs import Run, checkpoint_step, newest_run, split_step_folder

    if checkpoint is not None and run is None and _is_run_checkpoint(checkpoint):
        run, checkpoint = checkpoint, None
    if checkpoint is not None:
        if run is not None:
            raise UsageError("give either --run or --checkpoint, not both")
        if step is not None:
            raise UsageError("--step chooses a checkpoint of a --run; published weights (--checkpoint) have no steps")
        return _published(checkpoint, backend, ae, release), published_origin(checkpoint, ae, release), {}
    if ae is not None or backend is not None or release is not None:
        raise UsageError(
            "--ae, --backend and --release go with --checkpoint; a run names its own backend, autoencoder and protocol"
        )
    if run is None:
        run = newest_run("runs") if newest_run_default else None
        if run is None:
            raise UsageError("no run found under ./runs; pass --run DIR (a `vpt train` run) or --checkpoint FILE")
        info(f"Using the newest run under ./runs: {run}")
    run, folder_step = split_step_folder(run)
    if folder_step is not None and step is not None and folder_step != step:
        raise UsageError(f"--run names the checkpoint of step {folder_step} and --step says {step}: give one")
    step = folder_step if step is None else step
    handle = Run(run)
    config = handle.read_config()  # first: a folder that is no run is told so, not that it lacks step N
    step_dir = handle.latest_checkpoint() if step is None else handle.checkpoint_at(step)
    if step_dir is None:
        raise UsageError(f"{handle.root} has no finished checkpoint yet")
    model = Backend.from_run(run, checkpoint=step_dir)
    origin = {"run": str(handle.root.resolve()), "checkpoint_dir": str(step_dir), "step": checkpoint_step(step_dir)}
    return model, origin, config


def _is_run_checkpoint(path: Path) -> bool:
    """Whether `path` is a checkpoints/step_NNNNNN folder of a vpt run."""
    from vpt.runs import Run, split_step_folder

    run, step = split_step_folder(path)
    return step is not None and Run(run).config_path.is_file()


def published_origin(checkpoint: Path, ae: Path | None, release: str | None) -> dict:
    return {
        "checkpoint": str(checkpoint.resolve()),
        "autoencoder": str(ae.resolve()) if ae else None,
        "release": release,
    }


def _published(checkpoint: Path, backend: str | None, ae: Path | None, release: str | None):
    from vpt.errors import UsageError
    from vpt.models.registry import backend_names, get_backend

    if not checkpoint.exists():
        raise UsageError(f"--checkpoint not found: {checkpoint}")
    if backend is not None:
        backend_cls = get_backend(backend)
    else:
        claimed = [n for n in backend_names() if get_backend(n).recognizes_checkpoint(checkpoint)]
        if len(claimed) != 1:
            raise UsageError(
                f"{checkpoint}: cannot tell which backend it belongs to"
                + (f" ({', '.join(claimed)} all accept it)" if claimed else "")
                + "; pass --backend NAME"
            )
        backend_cls = get_backend(claimed[0])
    return backend_cls.from_checkpoint(checkpoint, autoencoder=ae, preset=release)
