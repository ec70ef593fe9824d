"""Build autoencoders by name and load them from anything a user is likely to have.

`load_autoencoder(path)` accepts
- a `vpt train-ae` run directory (config.yaml + checkpoints/; EMA weights when the run kept them),
- a diffusers `AutoencoderKL` folder (config.json + weights), or a pipeline folder with a `vae/` inside,
- RIVER's `vqvae.ckpt` (a taming-transformers Lightning checkpoint: `["state_dict"]`, `loss.*` ignored),
  RIVER's `vqvae.pth` (`["model"]`, the "ours" VQVAE) and RIVER's `model.pth` (its `ae.*` part),
- a bare state dict (`.pth`/`.pt`/`.bin`/`.safetensors`) of a taming VQGAN, RIVER VQVAE or
  VideoGeneration-PyTorch VAE (`vae_autoencoder_ckpt.pth`),
- MOSO's VQ-VAE checkpoint (`{'state': ..., 'steps': ...}`; its discriminator and LPIPS copies are dropped).
The architecture of a bare checkpoint is read off its tensor shapes; `preset` names the taming
configuration to check it against (f8_small / f8 / f16), `arch` supplies what shapes cannot tell
(the Latte VAE's GroupNorm groups and attention heads).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
from pathlib import Path
from typing import Any

import torch

from vpt.errors import ConfigError, UsageError, VptError
from vpt.weights import read_weights, strip_module_prefix

#: The registry: type name -> "module:Class". Adding an autoencoder is one module (a subclass of
#: base.Autoencoder that declares its presets and recognises its own checkpoints) and one line here.
AUTOENCODERS: dict[str, str] = {
    "vqgan": "vpt.models.autoencoders.vqgan:VQGAN",
    "river-vqvae": "vpt.models.autoencoders.river_vqvae:RiverVQVAE",
    "kl-vae": "vpt.models.autoencoders.kl:KLVAE",
    "latte-vae": "vpt.models.autoencoders.latte_vae:LatteVAE",
    "pvdm": "vpt.models.autoencoders.pvdm:PVDMAutoencoder",
    "moso": "vpt.models.autoencoders.moso:MosoAutoencoder",
}

_DOWNLOAD_HINTS = {
    "vqvae.ckpt": "RIVER's taming VQGAN: download vqvae.ckpt from the Hugging Face repo cvg-unibe/river_bair_64 "
    "(or river_bair_256 / river_kth_64)",
    "vqvae.pth": "RIVER's CLEVRER VQVAE: download vqvae.pth from the Hugging Face repo cvg-unibe/river_clevrer_128",
    "model.pth": "a RIVER model: download model.pth from the Hugging Face repo cvg-unibe/river_<dataset>",
    "model_last.pth": "PVDM's autoencoder: the model_last.pth its first stage writes (a bare state dict)",
    "MoCoVQVAE_wCD_shareCB_iter250000.pth": "MOSO's VQ-VAE: the checkpoint its training script (train_dist.py) writes",
    "vae_autoencoder_ckpt.pth": "the VideoGeneration-PyTorch VAE: train it upstream (tools/train_vae.py) or use `vpt train-ae`",
}


def _import(name: str) -> type:
    module_name, class_name = AUTOENCODERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def autoencoder_classes() -> list[type]:
    return [_import(name) for name in AUTOENCODERS]


def autoencoder_class(name: str) -> type:
    if name in AUTOENCODERS:
        return _import(name)
    aliases = {alias: cls for cls in autoencoder_classes() for alias in cls.aliases}
    if name in aliases:
        return aliases[name]
    close = difflib.get_close_matches(name, [*AUTOENCODERS, *aliases], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"autoencoder.type: unknown autoencoder '{name}'{hint}; available: {', '.join(sorted(AUTOENCODERS))}"
    )


def resolve_arch(name: str, arch: dict[str, Any], *, source: str = "autoencoder.arch"):
    """`arch` (optionally with `preset: <name>`, whose values the other keys override) -> the type's Config."""
    from vpt.config import validate

    cls = autoencoder_class(name)
    arch = dict(arch or {})
    preset = arch.pop("preset", None)
    if preset is not None:
        table = cls.presets
        if preset not in table:
            raise ConfigError(
                f"{source}.preset: unknown preset '{preset}' for {cls.type}; available: {', '.join(table) or 'none'}"
            )
        arch = {**table[preset], **arch}
    return validate(cls.Config, arch, source=source, prefix="autoencoder.arch.")


def build_autoencoder(name: str, arch: dict[str, Any] | None = None, *, source: str = "autoencoder.arch"):
    """A randomly initialised autoencoder of type `name` with architecture `arch`."""
    return autoencoder_class(name)(resolve_arch(name, arch or {}, source=source))


# --- loading --------------------------------------------------------------------------------------


def load_autoencoder(
    path: str | Path, *, preset: str | None = None, arch: dict[str, Any] | None = None, ema: bool = True
):
    """The autoencoder stored at `path`, in eval mode, with `.provenance` (source, format, sha256)."""
    path = Path(path)
    if not path.exists():
        hint = _DOWNLOAD_HINTS.get(
            path.name,
            "a `vpt train-ae` run directory, a diffusers AutoencoderKL folder "
            "(e.g. stabilityai/sd-vae-ft-ema downloaded there), or a taming/RIVER/"
            "VideoGeneration-PyTorch checkpoint file",
        )
        raise VptError(f"autoencoder weights not found: {path} — expected {hint}; put it at that path")
    if path.is_dir():
        model, provenance = _load_directory(path, ema=ema)
    else:
        model, provenance = _load_file(path, preset=preset, arch=arch)
    model.provenance = provenance
    return model.eval().requires_grad_(False)


def _load_directory(path: Path, *, ema: bool):
    from vpt.runs import Run

    run = Run(path)
    if run.config_path.is_file():
        raw = run.read_config()
        if "autoencoder" not in raw:
            raise UsageError(
                f"{path} is a vpt run but not an autoencoder run (config.yaml has no 'autoencoder' section)"
            )
        return _load_run(run, raw["autoencoder"], ema=ema)
    for folder in (path, path / "vae"):
        config = folder / "config.json"
        if config.is_file() and '"AutoencoderKL"' in config.read_text():
            from vpt.models.autoencoders.kl import KLVAE

            weights = sorted(folder.glob("diffusion_pytorch_model*.safetensors")) or sorted(
                folder.glob("diffusion_pytorch_model*.bin")
            )
            if not weights:
                raise VptError(
                    f"{folder}: config.json but no diffusion_pytorch_model.safetensors/.bin; download the weights there"
                )
            model = KLVAE.from_diffusers(folder)
            return model, {"source": str(folder.resolve()), "format": "diffusers", "sha256": _sha256_files(weights)}
    raise UsageError(
        f"{path}: not an autoencoder directory (expected a `vpt train-ae` run with config.yaml, "
        "or a diffusers AutoencoderKL folder with config.json)"
    )


def _load_run(run, section: dict, *, ema: bool):
    name = section.get("type", "")
    model = build_autoencoder(name, section.get("arch", {}), source=str(run.config_path))
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise UsageError(f"{run.root} has no finished checkpoint yet (train it with `vpt train-ae --run {run.root}`)")
    weights = run.load_weights(ema=ema, checkpoint=checkpoint)
    state = {k.removeprefix("autoencoder."): v for k, v in weights.items() if k.startswith("autoencoder.")}
    _load_strict(model, state, run.root)
    files = [checkpoint / "model.safetensors"] + (
        [checkpoint / "ema.safetensors"] if ema and (checkpoint / "ema.safetensors").exists() else []
    )
    return model, {
        "source": str(run.root.resolve()),
        "format": "vpt-run",
        "checkpoint": checkpoint.name,
        "ema": len(files) > 1,
        "sha256": _sha256_files(files),
    }


def _load_file(path: Path, *, preset: str | None, arch: dict[str, Any] | None):
    # lenient: taming/Lightning .ckpt files also hold callback and hparams objects next to the weights
    state, container = _unwrap(read_weights(path, lenient=True), path)
    model = _from_state(state, preset=preset, arch=arch, where=path)
    return model, {"source": str(path.resolve()), "format": container, "sha256": _sha256_files([path])}


def autoencoder_from_upstream_state(
    state: dict[str, torch.Tensor],
    *,
    preset: str | None = None,
    arch: dict[str, Any] | None = None,
    where: str = "autoencoder state dict",
):
    """An autoencoder from upstream weights already in memory (e.g. the `ae.*` part of RIVER's model.pth)."""
    state, _ = _unwrap(dict(state), where)
    return _from_state(state, preset=preset, arch=arch, where=where).eval().requires_grad_(False)


def _from_state(state: dict[str, torch.Tensor], *, preset: str | None, arch: dict[str, Any] | None, where):
    cls = _recognize(state, where)
    name, inferred = cls.type, cls.arch_from_state(state)
    if preset is not None:
        table = cls.presets
        if preset not in table:
            raise UsageError(f"--preset {preset}: unknown for {name}; available: {', '.join(table) or 'none'}")
        expected = {**table[preset], **(arch or {})}
        clash = sorted(k for k, v in inferred.items() if k in expected and expected[k] != v)
        if clash:
            raise VptError(
                f"{where}: the weights do not match preset {preset} "
                f"({', '.join(f'{k}={inferred[k]} vs {expected[k]}' for k in clash[:3])})"
            )
        arch_values = {**inferred, **expected}
    else:
        arch_values = {**inferred, **(arch or {})}
    model = cls(resolve_arch(name, arch_values, source=str(where)))
    _load_strict(model, state, where)
    return model


def _load_strict(model, state: dict[str, torch.Tensor], where) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [
            f"{label} {keys[:3]}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise VptError(f"{where}: the weights do not fit a {model.type} ({'; '.join(parts)})")
    model.load_state_dict({k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()})


# --- reading checkpoint files ---------------------------------------------------------------------


def _unwrap(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The autoencoder's own state dict inside whatever container the file is."""
    if not isinstance(raw, dict):
        raise VptError(f"{path}: expected a state dict or a checkpoint dict, found {type(raw).__name__}")
    container = "state-dict"
    if isinstance(raw.get("state_dict"), dict):
        raw, container = raw["state_dict"], "lightning"  # taming / RIVER vqvae.ckpt
    elif isinstance(raw.get("model"), dict):
        raw, container = raw["model"], "river"  # RIVER vqvae.pth / model.pth
    elif isinstance(raw.get("state"), dict):
        raw, container = raw["state"], "moso"  # MOSO's train_dist.py checkpoints
    state = strip_module_prefix({k: v for k, v in raw.items() if isinstance(v, torch.Tensor)})
    if any(k.startswith("ae.") for k in state):  # RIVER model.pth: regressor + autoencoder
        state = {k.removeprefix("ae."): v for k, v in state.items() if k.startswith("ae.")}
    if any(k.startswith("backbone.") for k in state):  # RIVER wraps "ours" in a SequenceConverter
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    # taming keeps the discriminator and LPIPS under loss.*, MOSO under _discriminator.* and perceptual_loss.*;
    # they are not part of the autoencoder
    return {
        k: v for k, v in state.items() if not k.startswith(("loss.", "_discriminator.", "perceptual_loss."))
    }, container


def _recognize(state: dict[str, torch.Tensor], path: Path) -> type:
    """The autoencoder type whose upstream names the state dict carries."""
    for cls in autoencoder_classes():
        if cls.recognizes_state(state):
            return cls
    if any(k.startswith("encoder.down_blocks.") for k in state):
        raise VptError(f"{path}: a diffusers AutoencoderKL state dict; pass its folder (config.json + weights) instead")
    if any(k.startswith("autoencoder.") for k in state):
        raise VptError(f"{path}: weights from a vpt run; pass the run directory (it holds the architecture)")
    raise VptError(
        f"{path}: not a known autoencoder checkpoint (no taming VQGAN, RIVER VQVAE, PVDM, MOSO or "
        f"VideoGeneration-PyTorch VAE keys; first keys: {list(state)[:3]})"
    )


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
