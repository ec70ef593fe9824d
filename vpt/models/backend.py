"""The one surface every backend shares, so trainer, `sample` and `eval-fvd` never branch on names.

A backend's whole contract is this class: what it must implement (abstract), and what it may declare
(class attributes and methods with defaults). The commands read these declarations and nothing else.

Must implement
    Config                       dataclass of the `model:` config section
    loss(batch)                  -> {"loss": scalar, ...}: the training objective
    predict(context, num_frames, *, prompt, steps, generator, **options)
                                 (B, T_ctx, C, H, W) in [-1, 1] -> (B, num_frames, C, H, W) in [-1, 1]

May declare (defaults in brackets)
    takes_text                   [False] `predict` follows a text `prompt`
    takes_class_labels           [False] `predict` takes `class_labels` (class-conditional generation)
    generates_without_context    [False] `predict` accepts an empty context (T_ctx = 0): generation
    uses_autoencoder             [False] the config has `autoencoder` (a frozen AE the backend encodes with)
    needs_captions(cfg)          [why, for takes_text; else None] why training with this model config reads
                                 captions: `vpt train` refuses uncaptioned data before building the model
    frozen_prefixes              [()] state-dict keys read from elsewhere and left out of run checkpoints
    context_frames               [cfg.context_frames] frames its evaluation protocol gives `predict`
    trained_frames               [None] clip length it was trained on, to warn when a request leaves it
    frame_size / resize          [None / "squash"] the frame size it works at and how inputs are resized
                                 to it (a run's `data:` section says it for trained models; a published
                                 checkpoint sets them from what it is known to be trained on)
    default_protocol()           [None] the evaluation protocol of a published checkpoint
    can_show_latents             [False] whether `decode` turns latent clips into frames
    sampling_options()           [predict's extra keyword arguments] backend-specific `--option`s
    sample_record(**options)     [{}] what the sampler really does (written next to each sample)
    compile_sampler()            [error] switch `predict` to a compiled network call (`vpt sample --compile`)
    frames_started(count), frames_done(count)
                                 called by `predict` before and after each solve with the frames (every
                                 sample counts) it produces; the solve's samplers call
                                 `vpt.progress.solver_step` per step, so `vpt sample` counts solver steps
                                 (`reporting_frames(done, started=)` routes the calls)
    recognizes_checkpoint(path), from_checkpoint(path, autoencoder=, preset=)
                                 [False / error] published upstream weights (`vpt sample --checkpoint`)

A run of `vpt train <name>` stores `backend: <name>`, the `model:` section and the `eval:` protocol in
its config.yaml, which is all `Backend.from_run` needs to rebuild the model.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import nn

BASE_PREDICT_ARGS = frozenset({"self", "context", "num_frames", "prompt", "steps", "generator"})


@dataclass
class EvalProtocol:
    """The `eval:` section: how a model is evaluated (what `eval-fvd --run` and `sample --run` use by
    default, print, and record). Unset values follow the model and data sections."""

    context_frames: Optional[int] = None  # None: model.context_frames
    predicted_frames: Optional[int] = None  # None: data.frames - context_frames
    samples: int = 1  # predictions per test video; frame metrics keep the best
    fvd_preset: Literal["tf", "stylegan-v", "videogpt", "cd-fvd"] = "tf"
    clips: Optional[int] = None  # test videos used (None: all)
    image_size: Optional[int] = None  # frames are scored at this size (None: data.image_size)
    context_in_fvd: bool = True  # FVD clips are context + prediction (False: the prediction only)

    def __post_init__(self) -> None:
        for name in ("context_frames", "predicted_frames", "clips", "samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {value}")


class Backend(nn.Module, abc.ABC):
    name: ClassVar[str]
    Config: ClassVar[type]
    takes_text: ClassVar[bool] = False
    takes_class_labels: ClassVar[bool] = False
    generates_without_context: ClassVar[bool] = False
    uses_autoencoder: ClassVar[bool] = False
    frozen_prefixes: tuple[str, ...] = ()
    frame_size: int | None = None
    resize: str = "squash"
    trained_frames: int | None = None  # clip length it was trained on (a run's data.frames), when known

    @abc.abstractmethod
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """The training objective; the value under "loss" is what the optimiser minimises."""

    @abc.abstractmethod
    def predict(
        self,
        context: torch.Tensor,
        num_frames: int,
        *,
        prompt: list[str] | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, T_ctx, C, H, W) context in [-1, 1] -> (B, num_frames, C, H, W) predicted frames."""

    # --- declarations with defaults ------------------------------------------------------------------
    @property
    def context_frames(self) -> int:
        """Frames of context the model's protocol gives `predict` (a backend keeps its config as `self.cfg`)."""
        return self.cfg.context_frames

    @property
    def can_show_latents(self) -> bool:
        """Whether `decode(latents)` gives frames (periodic samples of runs trained on cached latents)."""
        return False

    def default_protocol(self) -> EvalProtocol | None:
        """The evaluation protocol of a published checkpoint (a trained run has its own `eval:` section)."""
        return None

    @classmethod
    def needs_captions(cls, cfg: Any) -> str | None:
        """Why training with model config `cfg` reads each clip's caption (None: it does not). A backend
        that takes text prompts learns them from the captions."""
        return "its text prompts are learnt from the captions" if cls.takes_text else None

    @classmethod
    def sampling_options(cls) -> set[str]:
        """Backend-specific keyword arguments of `predict` (`vpt sample --option NAME=VALUE`)."""
        return set(inspect.signature(cls.predict).parameters) - BASE_PREDICT_ARGS

    def sample_record(self, **options: Any) -> dict[str, Any]:
        """What a sampling call with these options really does, for the record beside each sample."""
        return {}

    def warn_once(self, message: str) -> None:
        """A warning about how the model is used (e.g. outside its trained range), once per model."""
        from vpt.console import warn

        warned = self.__dict__.setdefault("_warned", set())
        if message not in warned:
            warned.add(message)
            warn(message)

    def compile_sampler(self) -> None:
        """Switch `predict` to a torch.compile'd network call (`vpt sample --compile`); backends that offer
        it override this."""
        from vpt.errors import UsageError

        raise UsageError(f"backend '{self.name}' has no compiled sampler; drop --compile")

    def check_request(self, prompt: Any, num_frames: int) -> None:
        """What every `predict` checks first: a prompt only where the backend takes text, and at least
        one frame to predict. One-line errors."""
        from vpt.errors import UsageError

        if prompt is not None and not self.takes_text:
            raise UsageError(f"backend '{self.name}' takes no text prompt")
        if num_frames < 1:
            raise UsageError(f"number of frames to predict must be >= 1, got {num_frames}")

    def frames_started(self, count: int) -> None:
        """`predict` calls this before a solve that produces `count` frames (every sample of a batch counts)."""
        callback = self.__dict__.get("_frames_started_callback")
        if callback is not None:
            callback(count)

    def frames_done(self, count: int) -> None:
        """`predict` calls this as it finishes frames (every sample of a batch counts)."""
        callback = self.__dict__.get("_frames_callback")
        if callback is not None:
            callback(count)

    @contextlib.contextmanager
    def reporting_frames(self, callback: Callable[[int], None], started: Callable[[int], None] | None = None):
        """Within this context, `frames_done(n)` calls `callback(n)` (e.g. to advance a progress bar) and
        `frames_started(n)` calls `started(n)`."""
        self.__dict__["_frames_callback"] = callback
        self.__dict__["_frames_started_callback"] = started
        try:
            yield self
        finally:
            self.__dict__.pop("_frames_callback", None)
            self.__dict__.pop("_frames_started_callback", None)

    @classmethod
    def recognizes_checkpoint(cls, path: Path) -> bool:
        """Whether `path` is a published checkpoint this backend can load (`vpt sample --checkpoint`)."""
        return False

    @classmethod
    def from_checkpoint(cls, path: Path, *, autoencoder: Path | None = None, preset: str | None = None) -> Backend:
        """Build the backend from a published (upstream) checkpoint; backends with a converter override this.

        `preset` names the release where the weights alone cannot tell; the model then declares its
        `frame_size`/`resize` and `default_protocol()`."""
        from vpt.errors import UsageError

        raise UsageError(f"backend '{cls.name}' cannot load published checkpoints; sample from a run with --run")

    @staticmethod
    def from_run(run_dir: str | Path, *, checkpoint: Path | None = None, ema: bool = True) -> Backend:
        """Rebuild the backend a `vpt train` run trained, with its EMA weights when it kept them.

        The run's `data:` section sets the frame size and resize rule the model was trained with."""
        from vpt.config import validate
        from vpt.errors import UsageError
        from vpt.models.registry import get_backend
        from vpt.runs import Run

        run = Run(run_dir)
        raw = run.read_config()
        if "backend" not in raw:
            raise UsageError(f"{run.root} is not a backend run (config.yaml names no backend)")
        backend_cls = get_backend(raw["backend"])
        model_cfg = validate(backend_cls.Config, raw.get("model", {}), source=str(run.config_path), prefix="model.")
        model = backend_cls(model_cfg)
        missing, unexpected = model.load_state_dict(run.load_weights(ema=ema, checkpoint=checkpoint), strict=False)
        if unexpected or [k for k in missing if not k.startswith(model.frozen_prefixes)]:
            raise UsageError(
                f"{run.root}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        data = raw.get("data") or {}
        model.frame_size = data.get("image_size") or model.frame_size
        model.resize = data.get("resize") or model.resize
        model.trained_frames = data.get("frames") or model.trained_frames
        return model.eval()


def run_protocol(raw_config: dict, backend: Backend) -> dict[str, Any]:
    """The evaluation protocol of a run (its `eval:` section, unset values filled from `model:` and
    `data:`), or of a published checkpoint (the backend's default), as plain values."""
    from dataclasses import asdict

    from vpt.config import validate

    if raw_config:  # a run: its own section (runs made before the section existed get the defaults)
        section = validate(EvalProtocol, raw_config.get("eval") or {}, source="config.yaml", prefix="eval.")
    else:  # a published checkpoint
        section = backend.default_protocol() or EvalProtocol()
    protocol = asdict(section)
    data = raw_config.get("data") or {}
    protocol["context_frames"] = protocol["context_frames"] or backend.context_frames
    if protocol["predicted_frames"] is None:
        clip = data.get("frames")
        protocol["predicted_frames"] = clip - protocol["context_frames"] if clip else 15
    protocol["image_size"] = protocol["image_size"] or data.get("image_size") or backend.frame_size
    protocol["resize"] = data.get("resize") or backend.resize
    protocol["frame_skip"] = int(data.get("frame_skip", 0))
    return protocol
