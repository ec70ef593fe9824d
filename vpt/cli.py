"""The `vpt` command line: registers the subcommands, nothing else."""

from __future__ import annotations

import errno
import sys

import typer
from typer.core import TyperGroup

from vpt.errors import VptError

_STORAGE_ERRORS = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}

# `vpt --help` lists the commands as a newcomer meets them: the quickstart, then the pipeline in the order
# it runs, then `info`
COMMAND_ORDER = (
    "quickstart",
    "make-data",
    "extract-frames",
    "convert-h5",
    "train-ae",
    "save-latents",
    "train",
    "sample",
    "eval-fvd",
    "info",
)


class _PipelineOrder(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        def position(name: str) -> int:
            return COMMAND_ORDER.index(name) if name in COMMAND_ORDER else len(COMMAND_ORDER)

        return sorted(super().list_commands(ctx), key=position)


app = typer.Typer(
    name="vpt",
    cls=_PipelineOrder,
    help="vpt: video prediction toolkit - videos -> frames -> HDF5 -> autoencoder -> latents -> model -> samples -> metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        import vpt

        typer.echo(f"vpt {vpt.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print vpt's version and exit.", metavar=""
    ),
) -> None:
    """vpt: video prediction toolkit - videos -> frames -> HDF5 -> autoencoder -> latents -> model -> samples -> metrics."""


def _interruptible(fn, what_is_kept: str):
    """A command whose Ctrl-C becomes one line saying what is kept (typer would exit 130 silently)."""
    import functools

    from vpt.errors import Interrupted

    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted: {what_is_kept}") from None

    return command


RESUMES = "finished work is kept; run the same command to continue"
NOTHING_WRITTEN = "nothing was written"
TRAINING_ABORTED = "aborted: the last finished checkpoint is kept; run the same command to continue"


def _register() -> None:
    from vpt.commands import convert_h5, eval_fvd, extract_frames, info, make_data

    app.command("info", help="Versions, devices, attention backend and optional packages.")(info.info)
    app.add_typer(make_data.app, name="make-data")
    app.command("extract-frames", help="Videos -> folders of numbered frames (parallel, resumable).")(
        _interruptible(extract_frames.extract_frames, "finished videos are kept; run the same command to continue")
    )
    app.command(
        "convert-h5", help="Frame folders or videos -> HDF5 shards (parallel, resumable; vpt or RIVER layout)."
    )(_interruptible(convert_h5.convert_h5, "finished shards are kept; run the same command to continue"))
    app.command(
        "eval-fvd",
        help="FVD/KVD (I3D, published presets) and PSNR/SSIM/LPIPS of videos or of a run's predictions, with the protocol recorded.",
    )(
        _interruptible(
            eval_fvd.eval_fvd,
            "finished batches stay in the eval cache (unless --no-cache); run the same command to resume",
        )
    )
    from vpt.commands import quickstart, sample, train

    app.command("train", help="Train a backend (river, seer, ...) on the shared loop; resumes a run.")(
        _interruptible(train.train, TRAINING_ABORTED)
    )
    app.command(
        "sample", help="Predict frames from images, a video or a dataset item with a trained or published model."
    )(_interruptible(sample.sample, NOTHING_WRITTEN))
    app.command(
        "quickstart",
        help="Built-in data -> autoencoder -> RIVER -> scored predictions and a report, on a CPU in minutes.",
    )(_interruptible(quickstart.quickstart, RESUMES))
    from vpt.commands import save_latents, train_ae

    app.command(
        "train-ae",
        help="Train an autoencoder (VQGAN, RIVER VQVAE, KL-VAE, Latte VAE) on the shared loop; resumes a run.",
    )(_interruptible(train_ae.train_ae, TRAINING_ABORTED))
    app.command(
        "save-latents",
        help="Encode every video of every split with an autoencoder into latent HDF5 (same indexing, resumable).",
    )(
        _interruptible(
            save_latents.save_latents, "finished videos and shards are kept; run the same command to continue"
        )
    )


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and a non-zero exit code, not a traceback."""
    from rich.markup import escape

    from vpt.console import console, owning_process

    try:
        with owning_process():
            app(args=argv, prog_name="vpt")  # typer/click report usage errors themselves (exit 2)
    except VptError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print(
            "[bold red]interrupted[/]: finished checkpoints and outputs are kept; run the same command to resume"
        )
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        console.print(
            f"[bold red]error:[/] {escape(_STORAGE_ERRORS[exc.errno])}{escape(where)}; finished outputs are "
            "kept, fix this and run the same command to continue",
            highlight=False,
        )
        sys.exit(1)
