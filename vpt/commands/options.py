"""Options shared by several commands, declared once."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Optional

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
FreshOption = Annotated[
    bool,
    typer.Option("--fresh", help="Start the run over instead of resuming it (needs --force when it has checkpoints)."),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Allow --fresh to delete an existing run.")]


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
        help="Enlarge frames (nearest neighbour, a whole factor) to at least this many pixels high and label each video (truth, prediction); 0: the model's own pixels, unlabelled.",
    ),
]
