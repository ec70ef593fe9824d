"""What `vpt eval-fvd` computes, apart from the command line: clips cut from video sources, FVD/KVD
between two sets of videos, and a backend's predictions scored against the truth (best of N samples).

Work is split over accelerate processes in fixed batches (`vpt.metrics.fvd.batch_plan`) and gathered in
input order, and every random choice is seeded per clip / per batch, so 1 and N processes give the same
numbers. With an `EvalCache`, finished batches are kept on disk and a rerun loads them instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange

from vpt.errors import UsageError
from vpt.metrics.eval_cache import BatchStore, EvalCache, split_plan
from vpt.metrics.frames import BestOfN, gray_uint8, mse_per_frame, ssim, to_unit
from vpt.metrics.fvd import (
    ExtractionTimes,
    FvdPreset,
    batch_loader,
    batch_plan,
    detector_features,
    extract_features,
    fvd_from_stats,
    gather_in_order,
    kernel_distance,
    stats_of,
)
from vpt.metrics.i3d import Detector
from vpt.models.lpips import LPIPS
from vpt.precision import inference_autocast

ClipOffset = Literal["start", "random"]


# --- clips ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """How one clip is cut from each video."""

    frames: int = 16
    stride: int = 1  # take every `stride`-th frame
    offset: ClipOffset = "start"  # first frame: 0, or uniform over the valid starts (seeded per video)
    seed: int = 0
    image_size: int | None = None  # resize to S x S before scoring (None: stored size)
    resize: Literal["squash", "crop"] = "squash"

    @property
    def span(self) -> int:
        return self.stride * (self.frames - 1) + 1


class SourceClips:
    """One clip per video of a `vpt.data` source (HDF5, video files, frame folders), indexable.

    Videos shorter than the clip span are left out and counted (`skipped`), as StyleGAN-V's
    `discard_short_videos` does; `max_videos` keeps the first usable ones in source order.
    """

    def __init__(self, source, spec: ClipSpec, *, max_videos: int | None = None):
        if getattr(source, "kind", "frames") != "frames":
            raise UsageError("eval-fvd scores frames; this HDF5 holds latents (decode them first)")
        self.source, self.spec = source, spec
        self.indices: list[int] = []
        self.starts: list[int] = []
        self.skipped = 0
        for index in range(len(source)):
            if max_videos is not None and len(self.indices) >= max_videos:
                break
            length = source.num_frames(index)
            if length < spec.span:
                self.skipped += 1
                continue
            self.indices.append(index)
            self.starts.append(self._start(index, length))

    def _start(self, index: int, length: int) -> int:
        if self.spec.offset == "start":
            return 0
        return int(np.random.default_rng([self.spec.seed, index]).integers(0, length - self.spec.span + 1))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> np.ndarray:
        """uint8 (T, H, W, 3)."""
        from vpt.data.video import resize_frames

        frame_numbers = self.starts[k] + np.arange(self.spec.frames) * self.spec.stride
        frames = self.source.read(self.indices[k], frame_numbers)
        return resize_frames(frames, self.spec.image_size, self.spec.resize)

    def name(self, k: int) -> str:
        return self.source.name(self.indices[k]) or str(self.indices[k])

    def text(self, k: int) -> str | None:
        return self.source.text(self.indices[k]) if self.source.has_text else None


def open_clips(path, spec: ClipSpec, *, split: str = "test", max_videos: int | None = None) -> SourceClips:
    """Clips from a folder of videos / frame folders, one video file, or HDF5 shards (a root with split
    folders, a split folder, or one shard)."""
    from pathlib import Path

    from vpt.data.datasets import open_source
    from vpt.data.sources import EntrySource
    from vpt.data.video import VIDEO_EXTENSIONS

    path = Path(path)
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        source = EntrySource([path.name], [path], ["video"])
    else:
        source = open_source(path, split)
    clips = SourceClips(source, spec, max_videos=max_videos)
    if len(clips) == 0:
        raise UsageError(
            f"{path}: no video has the {spec.span} frames a {spec.frames}-frame clip with stride "
            f"{spec.stride} needs ({clips.skipped} too short)"
        )
    return clips


# --- frame metrics ----------------------------------------------------------------------------------


@dataclass
class FrameScorer:
    """PSNR / SSIM / LPIPS of uint8 frames against the truth, per frame."""

    lpips: LPIPS | None = None
    gray_ssim: bool = False  # MCVD: SSIM on PIL-style luma instead of RGB
    lpips_chunk: int = 64

    def __call__(self, pred: torch.Tensor, truth: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 (B, T, 3, H, W) x2 -> {"psnr": MSE per frame, "ssim", "lpips"} each (B, T)."""
        batch = pred.shape[0]
        pred_frames = rearrange(pred, "b t c h w -> (b t) c h w")
        truth_frames = rearrange(truth, "b t c h w -> (b t) c h w")
        scores = {"psnr": mse_per_frame(to_unit(pred_frames), to_unit(truth_frames)).cpu().numpy()}
        if self.gray_ssim:
            scores["ssim"] = ssim(to_unit(gray_uint8(pred_frames)), to_unit(gray_uint8(truth_frames)))
        else:
            scores["ssim"] = ssim(to_unit(pred_frames), to_unit(truth_frames))
        if self.lpips is not None:
            scores["lpips"] = self._lpips(pred_frames, truth_frames)
        return {name: values.reshape(batch, -1) for name, values in scores.items()}

    @torch.no_grad()
    def _lpips(self, pred: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
        device = self.lpips.shift.device
        distances = []
        for start in range(0, len(pred), self.lpips_chunk):
            a = pred[start : start + self.lpips_chunk].to(device).float() / 127.5 - 1.0  # (n, 3, H, W) in [-1, 1]
            b = truth[start : start + self.lpips_chunk].to(device).float() / 127.5 - 1.0
            distances.append(self.lpips(a, b).double().cpu().numpy())
        return np.concatenate(distances)


# --- FVD / KVD --------------------------------------------------------------------------------------


@dataclass
class FvdSettings:
    detector: Detector
    preset: FvdPreset
    batch_size: int = 16
    kvd: bool = True
    kvd_subsets: int = 0  # 0: all clips at once; else StyleGAN-V's average over random subsets
    kvd_subset_size: int = 1000
    seed: int = 0  # KVD subset draws

    def kvd_variant(self) -> str:
        return "full" if not self.kvd_subsets else f"subsets={self.kvd_subsets}x{self.kvd_subset_size}"


MEANINGFUL_FVD_CLIPS = 256  # the smallest published protocol (BAIR / KTH test sets); StyleGAN-V uses 2048


def few_clips_warning(real: int, fake: int, features: int) -> str | None:
    """Why an FVD of `real` vs `fake` clips means little, or None when both sets are large enough."""
    if min(real, fake) >= MEANINGFUL_FVD_CLIPS:
        return None
    return (
        f"FVD/KVD rest on {real} real and {fake} generated clips: with fewer clips than the detector's {features} "
        "features the covariances are rank-deficient, and the score mostly reflects the clip count; compare it only "
        f"with scores on as many clips, and score at least {MEANINGFUL_FVD_CLIPS} (BAIR/KTH test sets) or 2048 "
        "(StyleGAN-V) for a number that means something"
    )


def _distances(real: np.ndarray, fake: np.ndarray, settings: FvdSettings) -> dict[str, float]:
    values = {"fvd": fvd_from_stats(stats_of(real), stats_of(fake), settings.preset)}
    if settings.kvd:
        values["kvd"] = kernel_distance(
            real, fake, subsets=settings.kvd_subsets, subset_size=settings.kvd_subset_size, seed=settings.seed
        )
    return values


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)  # fvd, kvd, psnr, ssim, lpips
    details: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    times: ExtractionTimes = field(default_factory=ExtractionTimes)
    warnings: list[str] = field(default_factory=list)  # scores that rest on too few samples to mean much
    # with K > 1 sampling seeds (`evaluate_repeats`): metrics hold the means over the repeats, and
    std: dict[str, float] = field(default_factory=dict)  # metric -> sample std (ddof=1) over the repeats
    per_repeat: list[dict] = field(default_factory=list)  # {"seed", every metric, "details"} per repeat


def _add_frame_metrics(result: Evaluation, best: BestOfN) -> None:
    summaries = best.summary()
    for metric, summary in summaries.items():
        result.metrics[metric] = summary.pop("value")
        result.details[metric] = summary
    if any(summary["ci95"] is None for summary in summaries.values()):
        result.warnings.append(
            f"{'/'.join(name.upper() for name in summaries)} rest on one test sequence: "
            "one value has no spread, so there is no 95% confidence interval (ci95 is null); score more sequences"
        )


def _add_fvd(result: Evaluation, real: np.ndarray, fake: np.ndarray, settings: FvdSettings) -> dict[str, float]:
    """FVD/KVD of real (S, D) vs fake (S', D) features, with a warning when the sets are too small."""
    warning = few_clips_warning(len(real), len(fake), real.shape[1])
    if warning is not None and warning not in result.warnings:
        result.warnings.append(warning)
    return _distances(real, fake, settings)


def _add_times(total: ExtractionTimes, part: ExtractionTimes) -> None:
    for name in ("wall", "decode", "preprocess", "detector", "clips"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


def evaluate_videos(
    real: SourceClips,
    fake: SourceClips,
    *,
    fvd: FvdSettings | None,
    scorer: FrameScorer | None,
    psnr_reduction: Literal["frame", "video"] = "frame",
    workers: int = 0,
    accelerator=None,
    progress=None,
    cache: EvalCache | None = None,
) -> Evaluation:
    """FVD/KVD between two sets of clips; with `scorer`, also frame metrics of clip pairs (same order).
    With `cache`, the real features go to `cache.real` and the fake ones to `cache.batches`."""
    result = Evaluation(
        counts={
            "real": len(real),
            "fake": len(fake),
            "real_skipped_short": real.skipped,
            "fake_skipped_short": fake.skipped,
        }
    )
    if fvd is not None:
        features = []
        for clips, store in ((real, cache and cache.real), (fake, cache and cache.batches)):
            values, times = extract_features(
                fvd.detector,
                clips,
                fvd.preset,
                batch_size=fvd.batch_size,
                workers=workers,
                accelerator=accelerator,
                progress=progress,
                store=store,
            )
            features.append(values)
            _add_times(result.times, times)
        result.metrics.update(_add_fvd(result, *features, fvd))
    if scorer is not None:
        if len(real) != len(fake):
            raise UsageError(f"--paired needs as many fake as real videos (got {len(fake)} and {len(real)})")
        best = BestOfN(psnr_reduction)
        for scores in _paired_scores(real, fake, scorer, fvd.batch_size if fvd else 16, accelerator, progress):
            for metric, values in scores.items():
                best.add(metric, values[:, None, :])  # one "sample" per pair
        _add_frame_metrics(result, best)
    return result


class _Pairs:
    def __init__(self, real: SourceClips, fake: SourceClips):
        self.real, self.fake = real, fake

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, k: int) -> np.ndarray:
        real, fake = self.real[k], self.fake[k]
        if real.shape != fake.shape:
            raise UsageError(
                f"{self.real.name(k)} and {self.fake.name(k)} differ in shape ({real.shape} vs {fake.shape})"
            )
        return np.stack([real, fake])  # (2, T, H, W, 3)


def _paired_scores(real, fake, scorer: FrameScorer, batch_size: int, accelerator, progress):
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else torch.device("cpu")
    pieces = []
    for first, pairs, _ in batch_loader(
        _Pairs(real, fake), batch_plan(len(real), batch_size, rank, world), workers=0, device=device
    ):
        if isinstance(pairs, list):
            raise UsageError("--paired needs all videos at one size")
        pairs = rearrange(pairs.to(device), "b two t h w c -> two b t c h w")
        pieces.append((int(first), scorer(pairs[1], pairs[0])))
        if progress is not None:
            progress(len(pairs[0]) * world)
    yield from gather_in_order(pieces, accelerator)


# --- predictions of a backend -----------------------------------------------------------------------


@dataclass
class PredictionProtocol:
    """The stochastic video-prediction protocol (SVG -> SRVP -> MCVD -> RIVER)."""

    context_frames: int = 1
    predicted_frames: int = 15
    samples: int = 1  # predictions per test sequence; frame metrics keep the best one
    context_in_fvd: bool = True  # FVD clips = context + future (MCVD, Seer) or the future only
    fvd_pooling: Literal["pooled", "per-sample"] = "pooled"  # all N*S fakes vs S reals, or mean over the N
    psnr_reduction: Literal["frame", "video"] = "frame"
    steps: int | None = None  # sampler steps passed to `predict`
    seed: int = 0
    batch_size: int = 16
    precision: Literal["fp32", "bf16"] = "fp32"  # numeric mode of `predict` (bf16: autocast)

    def record(self) -> dict:
        return {
            "context_frames": self.context_frames,
            "predicted_frames": self.predicted_frames,
            "samples_per_sequence": self.samples,
            "context_in_fvd_clips": self.context_in_fvd,
            "fvd_pooling": self.fvd_pooling,
            "psnr_reduction": self.psnr_reduction,
            "sampler_steps": self.steps,
            "sampling_seed": self.seed,
            "precision": self.precision,
            "generated_frames": "quantised to uint8 ((x+1)*127.5, rounded) before scoring",
        }


def sample_seed(seed: int, first_index: int, sample: int) -> int:
    """Seed of the generator for sample `sample` of the batch starting at `first_index`."""
    return int(np.random.SeedSequence([seed, first_index, sample]).generate_state(1, dtype=np.uint64)[0] >> 1)


def quantise(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8, rounding as `vpt.data.video.to_uint8_frames` does when videos are written."""
    return ((frames.float() + 1.0) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def evaluate_predictions(
    backend,
    clips: SourceClips,
    protocol: PredictionProtocol,
    *,
    fvd: FvdSettings | None,
    scorer: FrameScorer | None,
    device: torch.device,
    workers: int = 0,
    accelerator=None,
    progress=None,
    cache: EvalCache | None = None,
    real_features: dict[int, np.ndarray] | None = None,
) -> Evaluation:
    """Predict `predicted_frames` from the first `context_frames` of every clip, `samples` times, and
    score the predictions (frame metrics: best of N; FVD/KVD: see `fvd_pooling`). With no context the
    backend generates, and `scorer` is None: generated clips have no ground truth to be compared with
    frame by frame, only the real set's statistics (FVD/KVD).

    With `cache`, every finished batch is saved to `cache.batches` (and its real features to `cache.real`)
    before the next one starts, and batches found there are loaded instead of predicted. `real_features`
    (first clip index of a batch -> its real clips' features) is read before the cache and filled with
    the features computed here, so evaluations of the same clips under other seeds compute them once."""
    p = protocol
    if clips.spec.frames != p.context_frames + p.predicted_frames:
        raise ValueError("clips must hold context + predicted frames")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    result = Evaluation(
        counts={
            "sequences": len(clips),
            "skipped_short": clips.skipped,
            "real_clips": len(clips),
            "fake_clips": len(clips) * p.samples,
        }
    )
    pieces, todo = split_plan(cache and cache.batches, batch_plan(len(clips), p.batch_size, rank, world))
    if progress is not None and pieces:
        progress(sum(len(next(iter(arrays.values()))) for _, arrays in pieces) * world)  # every array is (B, ...)
    real_store = cache.real if cache is not None and fvd is not None else None
    started = time.perf_counter()
    for first, videos, decode_seconds in batch_loader(clips, todo, workers=workers, device=device):
        if isinstance(videos, list):
            raise UsageError("the test videos differ in size; set --image-size so the backend gets one size")
        first, batch = int(first), list(range(int(first), int(first) + len(videos)))
        result.times.decode += decode_seconds
        prompts = [clips.text(k) or "" for k in batch] if backend.takes_text else None
        real = real_features.get(first) if real_features is not None else None
        real = _stored_features(real_store, batch) if real is None else real
        payload = _predict_batch(backend, videos.to(device), prompts, first, p, fvd, scorer, result.times, real)
        if real_store is not None and real is None:
            real_store.save(first, {"features": payload["real"]})
        if real_features is not None and fvd is not None:
            real_features[first] = payload["real"]
        if cache is not None:
            cache.batches.save(first, payload)
        pieces.append((first, payload))
        if progress is not None:
            progress(len(videos) * world)
    merged = gather_in_order(pieces, accelerator)
    result.times.wall = time.perf_counter() - started
    payload = {key: np.concatenate([piece[key] for piece in merged]) for key in merged[0]}
    best = BestOfN(p.psnr_reduction)
    for metric in ("psnr", "ssim", "lpips"):
        if metric in payload:
            best.add(metric, payload[metric])  # (S, N, T_pred)
    _add_frame_metrics(result, best)
    if fvd is not None:
        real, fake = payload["real"], payload["fake"]  # (S, 400), (S, N, 400)
        if p.fvd_pooling == "pooled":
            result.metrics.update(_add_fvd(result, real, rearrange(fake, "s n d -> (s n) d"), fvd))
        else:
            per_sample = [_add_fvd(result, real, fake[:, k], fvd) for k in range(p.samples)]
            for name in per_sample[0]:
                values = [d[name] for d in per_sample]
                result.metrics[name] = float(np.mean(values))
                result.details[f"{name}_per_sample"] = values
    return result


def evaluate_repeats(
    backend,
    clips: SourceClips,
    protocol: PredictionProtocol,
    *,
    fvd: FvdSettings | None,
    caches: list[EvalCache | None],
    **options,
) -> Evaluation:
    """`evaluate_predictions` once per entry of `caches` (K repeats): repeat r samples, and draws its KVD
    subsets, with seed `protocol.seed + r`, so repeat 0 is the single evaluation under that seed. The real
    clips are the same in every repeat and their features are computed once. K = 1 gives that single
    evaluation unchanged; K > 1 gives each metric's mean, its sample std (ddof=1) and every repeat's values."""
    real_features: dict[int, np.ndarray] = {}  # first clip index of a batch -> real features, shared by repeats
    seeds = [protocol.seed + r for r in range(len(caches))]
    results = [
        evaluate_predictions(
            backend,
            clips,
            replace(protocol, seed=seed),
            fvd=replace(fvd, seed=seed) if fvd is not None else None,
            cache=cache,
            real_features=real_features,
            **options,
        )
        for seed, cache in zip(seeds, caches)
    ]
    return results[0] if len(results) == 1 else combine_repeats(results, seeds)


def combine_repeats(results: list[Evaluation], seeds: list[int]) -> Evaluation:
    """Evaluations of the same clips under sampling seeds `seeds` (at least 2) -> the mean of every metric,
    its sample standard deviation (ddof=1) and each repeat's metrics and details; times add up, warnings
    are kept once."""
    combined = Evaluation(counts=results[0].counts)
    for name in results[0].metrics:
        values = np.array([result.metrics[name] for result in results])  # (K,)
        combined.metrics[name] = float(values.mean())
        combined.std[name] = float(values.std(ddof=1))
    for seed, result in zip(seeds, results):
        combined.per_repeat.append({"seed": seed, **result.metrics, "details": result.details})
        _add_times(combined.times, result.times)
        combined.warnings += [warning for warning in result.warnings if warning not in combined.warnings]
    return combined


def _stored_features(store: BatchStore | None, batch: list[int]) -> np.ndarray | None:
    arrays = store.load(batch) if store is not None else None
    return None if arrays is None else arrays["features"]


def _predict_batch(
    backend,
    truth: torch.Tensor,
    prompts,
    first: int,
    p: PredictionProtocol,
    fvd: FvdSettings | None,
    scorer: FrameScorer | None,
    times: ExtractionTimes,
    real: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One batch of test clips -> per-frame scores (B, N, T_pred) and I3D features of real/fake clips
    (`real`: the real clips' features when they are already known)."""
    truth = rearrange(truth, "b t h w c -> b t c h w")  # uint8
    context_u8, future_u8 = truth[:, : p.context_frames], truth[:, p.context_frames :]
    context = context_u8.float() / 127.5 - 1.0  # (B, T_ctx, 3, H, W) in [-1, 1]
    out: dict[str, list] = {}
    if fvd is not None:
        if real is None:
            real_clip = truth if p.context_in_fvd else future_u8
            real = detector_features(fvd.detector, rearrange(real_clip, "b t c h w -> b t h w c"), fvd.preset, times)
        out["real"] = real
    for predicted_u8 in _samples(backend, context, prompts, first, p):
        for metric, values in (scorer(predicted_u8, future_u8) if scorer is not None else {}).items():
            out.setdefault(metric, []).append(values)  # (B, T_pred)
        if fvd is not None:
            fake_clip = torch.cat([context_u8, predicted_u8], dim=1) if p.context_in_fvd else predicted_u8
            out.setdefault("fake", []).append(
                detector_features(fvd.detector, rearrange(fake_clip, "b t c h w -> b t h w c"), fvd.preset, times)
            )
    return {key: (value if key == "real" else np.stack(value, axis=1)) for key, value in out.items()}


def _samples(backend, context: torch.Tensor, prompts, first: int, p: PredictionProtocol):
    """Yield the `p.samples` predictions of one batch of contexts (B, T_ctx, 3, H, W) in [-1, 1] (the batch
    starting at clip `first`), each uint8 (B, T_pred, 3, H, W), every one from its own seeded generator."""
    height, width = context.shape[-2:]
    for k in range(p.samples):
        generator = torch.Generator(device=context.device).manual_seed(sample_seed(p.seed, first, k))
        with inference_autocast(context.device, p.precision):
            predicted = backend.predict(context, p.predicted_frames, prompt=prompts, steps=p.steps, generator=generator)
        predicted = predicted.float()
        expected = (len(context), p.predicted_frames)
        if tuple(predicted.shape[:2]) != expected or tuple(predicted.shape[-2:]) != (height, width):
            raise UsageError(f"the backend returned {tuple(predicted.shape)}, expected {(*expected, 3, height, width)}")
        yield quantise(predicted.expand(-1, -1, 3, -1, -1) if predicted.shape[2] == 1 else predicted)


@torch.no_grad()
def predict_examples(backend, clips: SourceClips, protocol: PredictionProtocol, count: int, device: torch.device):
    """Yield (truth or None, [context + prediction per sample]) of the first `count` clips, uint8 (T, H, W, 3)
    each: predicted again in the batches and with the seeds `evaluate_predictions` used, so they are the clips
    it scored. A generated clip (no context) has no truth."""
    p = protocol
    wanted = min(count, len(clips))
    plan = [batch for batch in batch_plan(len(clips), p.batch_size, 0, 1) if batch[0] < wanted]
    for first, videos, _ in batch_loader(clips, plan, workers=0, device=device):
        truth = rearrange(videos.to(device), "b t h w c -> b t c h w")  # uint8
        first, batch = int(first), range(int(first), int(first) + len(videos))
        prompts = [clips.text(k) or "" for k in batch] if backend.takes_text else None
        context_u8 = truth[:, : p.context_frames]
        samples = [
            torch.cat([context_u8, predicted], dim=1)
            for predicted in _samples(backend, context_u8.float() / 127.5 - 1.0, prompts, first, p)
        ]  # each (B, T, 3, H, W)
        for i, k in enumerate(batch):
            if k < wanted:
                yield (_as_frames(truth[i]) if p.context_frames else None), [_as_frames(s[i]) for s in samples]


def _as_frames(clip: torch.Tensor) -> np.ndarray:
    """uint8 (T, 3, H, W) -> (T, H, W, 3) on the CPU, the layout pictures are drawn in."""
    return rearrange(clip, "t c h w -> t h w c").cpu().numpy()
