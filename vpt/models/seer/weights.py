"""Loading weights into Seer: a local SD v1.5 folder, an FSText initialisation, released Seer checkpoints.

Every path is checked and every key set compared: a missing file, folder or key is a `VptError`
naming what was tried, never a silently random model (upstream issue #14; upstream sampled with untrained weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vpt.errors import VptError
from vpt.weights import read_state_dict

SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer")
UNET_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)
RELEASED_UNET, RELEASED_FSTEXT = "pytorch_model.bin", "pytorch_model_1.bin"
ROTARY_BUFFER = "rotary_emb.freqs"


def check_sd_folder(path: str | Path) -> Path:
    """A Stable Diffusion folder in diffusers layout with the four parts Seer uses."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise VptError(f"pretrained: Stable Diffusion folder not found: {root}")
    missing = [
        part
        for part in SD_PARTS
        if not (root / part / ("tokenizer_config.json" if part == "tokenizer" else "config.json")).is_file()
    ]
    if missing:
        raise VptError(
            f"pretrained: {root} is not a diffusers Stable Diffusion folder (missing "
            f"{', '.join(f'{m}/' for m in missing)}); expected vae/, unet/, text_encoder/, tokenizer/"
        )
    return root


def load_checked(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, *, may_miss: set[str] = frozenset()
) -> None:
    """Load `state` requiring the exact key set and shapes (except keys in `may_miss`)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state) - set(may_miss))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(wrong)} with other shapes (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} "
            f"vs {tuple(expected[wrong[0]].shape)})"
            if wrong
            else "",
        ]
        raise VptError(f"{source} does not match the model: " + "; ".join(p for p in parts if p))
    module.load_state_dict(state, strict=False, assign=any(t.is_meta for t in expected.values()))


def load_sd_unet(unet: nn.Module, folder: Path) -> None:
    """SD's UNet2DConditionModel weights into the inflated UNet: all spatial keys required, temporal ones new."""
    weights = next(
        (
            folder / "unet" / name
            for name in (*UNET_WEIGHT_FILES, "diffusion_pytorch_model.safetensors.index.json")
            if (folder / "unet" / name).is_file()
        ),
        None,
    )
    if weights is None:
        raise VptError(f"pretrained: no UNet weights in {folder / 'unet'} (looked for {', '.join(UNET_WEIGHT_FILES)})")
    state = {k: v.float() for k, v in read_state_dict(weights).items()}
    temporal = {k for k in unet.state_dict() if ".temporal_attentions." in k}
    load_checked(unet, state, str(weights), may_miss=temporal)


def load_fstext_init(fstext: nn.Module, path: str | Path, *, allow_partial: bool = False) -> None:
    """Upstream's `fstext_init/pytorch_model.bin` (or any FSText state dict); strict unless `allow_partial`,
    which loads as upstream's train.py does (`strict=False`): keys the file lacks keep their initial values,
    keys FSText lacks are dropped, and a shape that disagrees is still an error."""
    state = read_state_dict(Path(path).expanduser())
    state = {k: v for k, v in state.items() if not k.endswith(ROTARY_BUFFER)}  # recomputed, never trained
    expected = fstext.state_dict()
    may_miss = {k for k in expected if k.endswith(ROTARY_BUFFER)}
    if allow_partial:
        state = {k: v for k, v in state.items() if k in expected}
        may_miss |= set(expected) - set(state)
    load_checked(fstext, state, f"fstext_init {path}", may_miss=may_miss)


def load_released(unet: nn.Module, fstext: nn.Module, folder: str | Path) -> None:
    """A released Seer step folder: `pytorch_model.bin` (whole UNet) + `pytorch_model_1.bin` (FSText)."""
    folder = Path(folder).expanduser()
    for name in (RELEASED_UNET, RELEASED_FSTEXT):
        if not (folder / name).is_file():
            raise VptError(
                f"seer_checkpoint: {folder / name} not found (a released step folder holds "
                f"{RELEASED_UNET} and {RELEASED_FSTEXT})"
            )
    for module, name in ((unet, RELEASED_UNET), (fstext, RELEASED_FSTEXT)):
        state = read_state_dict(folder / name)
        _check_rotary(module, state, folder / name)
        state = {k: v for k, v in state.items() if not k.endswith(ROTARY_BUFFER)}
        rotary = {k for k in module.state_dict() if k.endswith(ROTARY_BUFFER)}
        load_checked(module, {k: v.float() for k, v in state.items()}, str(folder / name), may_miss=rotary)


def _check_rotary(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Stored rotary frequencies must equal the recomputed ones (else the file is from another architecture)."""
    own = module.state_dict()
    for key, value in state.items():
        if key.endswith(ROTARY_BUFFER) and key in own and not own[key].is_meta:
            if value.shape != own[key].shape or not torch.allclose(
                value.float(), own[key].float(), rtol=1e-5, atol=1e-7
            ):
                raise VptError(f"{source}: rotary frequencies of {key} differ from Seer's (not a Seer checkpoint?)")


# Released folders and the clip layout (R reference frames, F total) each was trained with.
RELEASED_LAYOUTS = {
    "sthv2bridge_seer": (1, 16),
    "sthv2_seer": (2, 12),
    "bridge_seer": (1, 16),
    "epickitchen_seer": (1, 16),
}


def released_step_folder(path: Path) -> Path | None:
    """`path` itself when it holds the two released files, or its single `learned_sdunet-steps-*` child."""
    if not path.is_dir():
        return None
    if (path / RELEASED_UNET).is_file() and (path / RELEASED_FSTEXT).is_file():
        return path
    steps = sorted(p for p in path.glob("learned_sdunet-steps-*") if (p / RELEASED_UNET).is_file())
    return steps[-1] if steps else None


def released_clip_layout(folder: Path) -> tuple[int, int]:
    """(R, F) from the release's folder name; (1, 16), the general-purpose layout, when no name matches."""
    from vpt.console import warn

    for part in reversed(folder.resolve().parts):
        for name, layout in RELEASED_LAYOUTS.items():  # sthv2bridge before sthv2
            if part.startswith(name):
                return layout
    warn(
        f"{folder}: no released Seer folder name (sthv2_seer, bridge_seer, ...) in the path; "
        "assuming 1 reference + 15 predicted frames"
    )
    return RELEASED_LAYOUTS["bridge_seer"]
