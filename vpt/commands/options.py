"""Options shared by several commands, declared once."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

ConfigOption = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (configs/<backend>/<name>.yaml). Required for a new run; a resumed run uses its own config.yaml.",
    ),
]
RunOption = Annotated[
    Path,
    typer.Option("--run", help="Run directory: created when new, resumed from its latest checkpoint when it exists."),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Override a config value, e.g. --set train.lr=1e-4 (repeatable; values are typed: ints, floats, bools, lists).",
    ),
]
MaxStepsOption = Annotated[
    Optional[int], typer.Option("--max-steps", help="Train until this step (same as --set train.max_steps=N).", min=1)
]
LogEveryOption = Annotated[
    Optional[int],
    typer.Option("--log-every", help="Log to metrics.jsonl every N steps (same as --set train.log_every=N).", min=1),
]


def flag(names: str, help: str, **options: Any) -> Any:
    """A boolean option as a `--x/--no-x` pair, shown without a `<bool>` value (it takes none)."""
    return typer.Option(names, help=help, metavar="", **options)


FreshOption = Annotated[
    bool,
    flag("--fresh/--no-fresh", "Start the run over instead of resuming it (needs --force when it has checkpoints)."),
]
ForceOption = Annotated[bool, flag("--force/--no-force", "Allow --fresh to delete an existing run.")]


ThreadsOption = Annotated[
    int,
    typer.Option(
        "--threads",
        help="CPU threads for torch. 0: torch's default (one per core), or a fair share of the cores when the "
        "machine is already busy (load well above the core count). On a busy machine fewer is often much faster.",
        min=0,
        rich_help_panel="Resources",
    ),
]
BUSY_LOAD = 1.5  # load average per core above which torch's one-thread-per-core default oversubscribes


def fair_share_threads(load: float, cores: int) -> int | None:
    """Threads to use when the 1-minute `load` on `cores` cores is well above them (None: not busy):
    this process's share, cores x cores / load, at least one (2 cores at load 6: 1 thread)."""
    if load <= BUSY_LOAD * cores:
        return None
    return max(1, int(cores * cores / load))


def apply_threads(threads: int) -> None:
    """`--threads`: set torch's intra-op threads; 0 keeps torch's default unless the machine is busy,
    where it takes a fair share of the cores and says so in one line."""
    import os

    import torch

    from vpt.console import info

    if threads:
        torch.set_num_threads(threads)
        return
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no load average or affinity (Windows, macOS)
        return
    share = fair_share_threads(load, cores)
    if share is not None and share < torch.get_num_threads():
        torch.set_num_threads(share)
        info(
            f"[dim]busy machine (load {load:.1f} on {cores} cores): torch uses {share} thread"
            f"{'s' if share > 1 else ''}; --threads N to choose[/]"
        )


def next_step(command: str) -> None:
    """The one dim line a command ends with on success: what to run next."""
    from rich.markup import escape

    from vpt.console import info

    info(f"[dim]next: {escape(command)}[/]")


def path_setting(key: str, path: Path) -> str:
    """A `--set` override giving `key` the absolute `path`, quoted so YAML reads it back as that exact string."""
    return f"{key}={json.dumps(str(path.resolve()))}"


class Precision(str, enum.Enum):
    """Numeric mode of inference (`--precision`): listed by `--help` and shell completion."""

    fp32 = "fp32"
    bf16 = "bf16"


class Resize(str, enum.Enum):
    """How frames reach SIZE x SIZE (`--resize`)."""

    squash = "squash"  # stretch, as RIVER does
    crop = "crop"  # short side to SIZE, centre crop


class Layout(str, enum.Enum):
    vpt = "vpt"
    river = "river"


class Compression(str, enum.Enum):
    lzf = "lzf"
    gzip = "gzip"
    none = "none"


class FrameFormat(str, enum.Enum):
    png = "png"
    jpg = "jpg"


class LatentDtype(str, enum.Enum):
    float32 = "float32"
    float16 = "float16"


class FvdPresetName(str, enum.Enum):
    tf = "tf"
    stylegan_v = "stylegan-v"
    videogpt = "videogpt"
    cd_fvd = "cd-fvd"


class ClipOffset(str, enum.Enum):
    start = "start"
    random = "random"


class PsnrReduction(str, enum.Enum):
    frame = "frame"
    video = "video"


class FvdPooling(str, enum.Enum):
    pooled = "pooled"
    per_sample = "per-sample"


class LpipsNet(str, enum.Enum):
    alex = "alex"
    vgg = "vgg"


VIEW_HEIGHT = 256  # least frame height of pictures made for viewing (a 32 px model is shown 8x)
ViewHeightOption = Annotated[
    int,
    typer.Option(
        "--view-height",
        min=0,
        rich_help_panel="Output",
        help="Enlarge frames (nearest neighbour, a whole factor) to at least this many pixels high and label each video (truth, prediction); 0: the model's own pixels, unlabelled.",
    ),
]
