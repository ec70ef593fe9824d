"""Fréchet Video Distance and Kernel Video Distance on I3D logits, with the published protocols as presets.

Four implementations report "FVD" and disagree (docs/upstream-differences.md). A preset fixes everything that
moves the number apart from the protocol itself:

    preset      resize to 224x224                     BN eps  covariance  matrix sqrt       reproduces
    tf          TF1 bilinear stretch (legacy corners)  1e-3    N-1         symmetric (eigh)  google-research FVD / tf-gan
    stylegan-v  bilinear stretch (half-pixel)          1e-3    N           scipy sqrtm       StyleGAN-V fvd2048_*
    videogpt    shorter side 224 + centre crop         1e-5    N-1         symmetric (eigh)  VideoGPT / TATS / PVDM
    cd-fvd      bilinear stretch (half-pixel)          1e-5    N           scipy sqrtm       cd-fvd (I3D backbone)

Statistics are float64 running sums (sum and sum of outer products), updated batch by batch, so memory
does not grow with the number of videos beyond the 400 floats per clip that KVD needs.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from vpt.errors import UsageError
from vpt.metrics.eval_cache import BatchStore, split_plan
from vpt.metrics.i3d import INPUT_SIZE, MIN_FRAMES, Detector

ResizeMode = Literal["tf-bilinear", "bilinear", "short-side-crop"]


@dataclass(frozen=True)
class FvdPreset:
    name: str
    resize: ResizeMode
    bn_eps: float
    covariance: Literal["unbiased", "population"]  # N-1 or N normaliser
    sqrt: Literal["eigh", "sqrtm"]  # how Tr((S_r S_f)^1/2) is computed
    reproduces: str
    kvd_subsets: int = 0  # the preset's KVD convention: 0 = all clips at once, N = mean over N random subsets
    kvd_subset_size: int = 1000


PRESETS: dict[str, FvdPreset] = {
    "tf": FvdPreset(
        "tf", "tf-bilinear", 1e-3, "unbiased", "eigh", "google-research frechet_video_distance (TF-Hub I3D, tf-gan)"
    ),
    "stylegan-v": FvdPreset(
        "stylegan-v",
        "bilinear",
        1e-3,
        "population",
        "sqrtm",
        "StyleGAN-V src/metrics/frechet_video_distance.py",
        kvd_subsets=100,
        kvd_subset_size=1000,
    ),  # its KID code: 100 subsets of <= 1000
    "videogpt": FvdPreset(
        "videogpt", "short-side-crop", 1e-5, "unbiased", "eigh", "VideoGPT videogpt/fvd (also TATS, PVDM)"
    ),
    "cd-fvd": FvdPreset("cd-fvd", "bilinear", 1e-5, "population", "sqrtm", "cd-fvd 0.1.1, model='i3d'"),
}


def get_preset(name: str, *, covariance: str | None = None) -> FvdPreset:
    if name not in PRESETS:
        raise UsageError(f"unknown FVD preset '{name}'; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if covariance is not None and covariance != preset.covariance:
        if covariance not in ("unbiased", "population"):
            raise UsageError(f"--cov-norm must be 'unbiased' (N-1) or 'population' (N), got '{covariance}'")
        preset = FvdPreset(**{**asdict(preset), "covariance": covariance})
    return preset


# --- preprocessing ----------------------------------------------------------------------------------


def _tf_legacy_bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) weights of TF1 `resize_bilinear` (align_corners=False, no half-pixel
    centres): output i samples input position i * size_in / size_out."""
    source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    low = source.floor().long().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = source - low
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    matrix[torch.arange(size_out), low] += 1 - frac
    matrix[torch.arange(size_out), high] += frac
    return matrix


def resize_frames(frames: torch.Tensor, mode: ResizeMode, size: int = INPUT_SIZE) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size) with the preset's resize policy."""
    height, width = frames.shape[-2:]
    if mode == "tf-bilinear":
        if (height, width) == (size, size):
            return frames
        rows = _tf_legacy_bilinear_matrix(height, size).to(frames)  # (size, H)
        cols = _tf_legacy_bilinear_matrix(width, size).to(frames)  # (size, W)
        return rows @ frames @ cols.T  # (N, C, size, size)
    if mode == "bilinear":
        if (height, width) == (size, size):
            return frames
        return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    # short-side-crop: shorter side to `size` (the other rounded up), then the centre square
    scale = size / min(height, width)
    target = (size, math.ceil(width * scale)) if height < width else (math.ceil(height * scale), size)
    if target != (height, width):
        frames = F.interpolate(frames, size=target, mode="bilinear", align_corners=False)
    top, left = (frames.shape[-2] - size) // 2, (frames.shape[-1] - size) // 2
    return frames[..., top : top + size, left : left + size]


def preprocess(videos: torch.Tensor, mode: ResizeMode) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, 224, 224) float32 in [-1, 1], as each upstream does it."""
    batch = videos.shape[0]
    frames = rearrange(videos, "b t h w c -> (b t) c h w").float()  # 0..255
    if mode == "short-side-crop":  # VideoGPT scales to [0, 1] before resizing
        frames = (resize_frames(frames / 255.0, mode) - 0.5) * 2.0
    else:  # TF and cd-fvd resize 0..255 values, then scale
        frames = resize_frames(frames, mode) * (2.0 / 255.0) - 1.0
    return rearrange(frames, "(b t) c h w -> b c t h w", b=batch)


# --- statistics -------------------------------------------------------------------------------------


class FeatureStats:
    """Running float64 sum and sum of outer products of feature vectors: O(d^2) memory for any count."""

    def __init__(self, dim: int = 400):
        self.count = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float64)  # (n, d)
        self.count += len(features)
        self.total += features.sum(axis=0)
        self.outer += features.T @ features

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def covariance(self, normaliser: Literal["unbiased", "population"]) -> np.ndarray:
        """(sum x x^T - N mu mu^T) / (N - 1) or / N."""
        if self.count < 2:
            raise UsageError(f"FVD needs at least 2 clips per set, got {self.count}")
        mean = self.mean()
        scatter = self.outer - self.count * np.outer(mean, mean)
        return scatter / (self.count - 1 if normaliser == "unbiased" else self.count)


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray, method: Literal["eigh", "sqrtm"]) -> float:
    """Tr((A B)^1/2). 'eigh' = tf-gan's Tr((sqrt(A) B sqrt(A))^1/2) with symmetric square roots;
    'sqrtm' = real part of scipy.linalg.sqrtm(A B) as StyleGAN-V computes it."""
    if method == "sqrtm":
        import scipy.linalg

        with warnings.catch_warnings():  # singular covariances (fewer clips than 400) are expected
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            return float(np.trace(scipy.linalg.sqrtm(cov_b @ cov_a)).real)
    values, vectors = np.linalg.eigh(cov_a)
    sqrt_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = sqrt_a @ cov_b @ sqrt_a
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum())


def frechet_distance(
    mean_a: np.ndarray,
    cov_a: np.ndarray,
    mean_b: np.ndarray,
    cov_b: np.ndarray,
    sqrt: Literal["eigh", "sqrtm"] = "sqrtm",
) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    mean_term = float(np.sum((mean_a - mean_b) ** 2))
    return mean_term + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * _trace_sqrt_product(cov_a, cov_b, sqrt)


def fvd_from_stats(real: FeatureStats, fake: FeatureStats, preset: FvdPreset) -> float:
    return frechet_distance(
        real.mean(), real.covariance(preset.covariance), fake.mean(), fake.covariance(preset.covariance), preset.sqrt
    )


KVD_BLOCK = 2048  # rows per kernel block: peak memory ~ 2 x 2048^2 float64 = 64 MB whatever the clip count


def _polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, sklearn's polynomial_kernel defaults as TATS/Seer use them."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _kernel_sum(a: np.ndarray, b: np.ndarray, *, symmetric: bool = False, block: int = KVD_BLOCK) -> float:
    """Sum of k(a_i, b_j) over all pairs, one (block x block) piece of the kernel matrix at a time.

    `symmetric` (a is b): only blocks on or above the diagonal are computed, the others counted twice."""
    total = 0.0
    for i in range(0, len(a), block):
        for j in range(i if symmetric else 0, len(b), block):
            piece = float(_polynomial_kernel(a[i : i + block], b[j : j + block]).sum())
            total += piece if not symmetric or i == j else 2.0 * piece
    return total


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, block: int = KVD_BLOCK) -> float:
    m, n, dim = len(x), len(y), x.shape[1]
    diagonal_x = float((((x * x).sum(1) / dim + 1.0) ** 3).sum())  # k(x_i, x_i), left out of the unbiased sums
    diagonal_y = float((((y * y).sum(1) / dim + 1.0) ** 3).sum())
    within_x = (_kernel_sum(x, x, symmetric=True, block=block) - diagonal_x) / (m * (m - 1))
    within_y = (_kernel_sum(y, y, symmetric=True, block=block) - diagonal_y) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * _kernel_sum(x, y, block=block) / (m * n))


def kernel_distance(
    real: np.ndarray, fake: np.ndarray, *, subsets: int = 0, subset_size: int = 1000, seed: int = 0
) -> float:
    """KVD: unbiased MMD^2 with the cubic polynomial kernel. `subsets=0`: on all clips at once (kernel
    sums in blocks, so memory stays flat for any count); otherwise the mean over `subsets` random subsets
    of `subset_size` (StyleGAN-V's KID variant). Reported unscaled (StyleGAN-V multiplies KID by 1000)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) < 2 or len(fake) < 2:
        raise UsageError("KVD needs at least 2 clips per set")
    if not subsets:
        return _mmd2_unbiased(real, fake)
    rng = np.random.default_rng(seed)
    size = min(len(real), len(fake), subset_size)
    values = [
        _mmd2_unbiased(
            real[rng.choice(len(real), size, replace=False)], fake[rng.choice(len(fake), size, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values))


# --- feature extraction -----------------------------------------------------------------------------


class ClipSet(Protocol):
    """Indexable uint8 clips (T, H, W, 3); decoding happens in __getitem__ (and in loader workers)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def batch_plan(num_items: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """The batches process `rank` computes: batch b holds items [b*bs, (b+1)*bs) and goes to rank
    b % world. Batch contents do not depend on `world`, so every clip's features are computed in the
    same batch whatever the number of processes, and gathering in batch order restores the input order."""
    batches = [list(range(start, min(start + batch_size, num_items))) for start in range(0, num_items, batch_size)]
    return [batch for b, batch in enumerate(batches) if b % world == rank]


def gather_in_order(pieces: list[tuple[int, Any]], accelerator=None) -> list[Any]:
    """(first item index, payload) pieces of every process -> all payloads in input order, on every process."""
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        pieces = gather_object(pieces)
    return [payload for _, payload in sorted(pieces, key=lambda piece: piece[0])]


class ClipBatches(torch.utils.data.Dataset):
    """The batches of one process's plan, decoded (in DataLoader workers when there are any).

    Item: (first item index, uint8 (B, T, H, W, 3) tensor - or a list of (T, H, W, 3) tensors when the
    clips differ in size -, seconds spent decoding)."""

    def __init__(self, clips: ClipSet, plan: list[list[int]]):
        self.clips, self.plan = clips, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int):
        started = time.perf_counter()
        clips = [torch.from_numpy(np.ascontiguousarray(self.clips[i])) for i in self.plan[b]]
        batch = torch.stack(clips) if len({clip.shape for clip in clips}) == 1 else clips
        return self.plan[b][0], batch, time.perf_counter() - started


def batch_loader(clips: ClipSet, plan: list[list[int]], *, workers: int, device: torch.device):
    return torch.utils.data.DataLoader(
        ClipBatches(clips, plan),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
    )


@dataclass
class ExtractionTimes:
    """Where feature extraction spent its wall time (seconds), for the benchmark and the protocol."""

    wall: float = 0.0
    decode: float = 0.0  # reading clips (inside loader workers when there are any)
    preprocess: float = 0.0  # uint8 -> resized [-1, 1]
    detector: float = 0.0  # the I3D forward
    clips: int = 0


def detector_device(detector: Detector) -> torch.device:
    return next(iter(detector.model.parameters()), torch.empty(0)).device


def detector_features(
    detector: Detector,
    videos: torch.Tensor | list[torch.Tensor],
    preset: FvdPreset,
    times: ExtractionTimes | None = None,
) -> np.ndarray:
    """uint8 clips (B, T, H, W, 3) (or a list of differently sized ones) -> (B, 400) float32 logits."""
    times = times if times is not None else ExtractionTimes()
    device = detector_device(detector)
    tick = time.perf_counter()
    if isinstance(videos, list):  # clips of different sizes: each is resized on its own
        inputs = torch.cat([preprocess(v.to(device, non_blocking=True)[None], preset.resize) for v in videos])
    else:
        inputs = preprocess(videos.to(device, non_blocking=True), preset.resize)  # (B, 3, T, 224, 224)
    _synchronize(device)
    times.preprocess += time.perf_counter() - tick
    if inputs.shape[2] < MIN_FRAMES:
        raise UsageError(
            f"FVD needs clips of at least {MIN_FRAMES} frames (I3D's last pool needs two time steps "
            f"after three stride-2 reductions); these clips have {inputs.shape[2]}"
        )
    tick = time.perf_counter()
    with torch.no_grad(), _exact_float32(device):
        features = detector.model(inputs).float().cpu().numpy()  # (B, 400); .cpu() waits for the GPU
    times.detector += time.perf_counter() - tick
    times.clips += len(features)
    return features


def extract_features(
    detector: Detector,
    clips: ClipSet,
    preset: FvdPreset,
    *,
    batch_size: int = 16,
    workers: int = 0,
    accelerator=None,
    progress=None,
    store: BatchStore | None = None,
) -> tuple[np.ndarray, ExtractionTimes]:
    """I3D logits (N, 400) float32 of every clip, in input order, whatever the number of processes.

    Under accelerate every process computes its share of batches (`batch_plan`) and the pieces are
    gathered to all processes. `progress(n)` is called with the number of clips finished (all ranks).
    With a `vpt.metrics.eval_cache.BatchStore`, batches it holds are loaded and the others saved to it.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    done, todo = split_plan(store, batch_plan(len(clips), batch_size, rank, world))
    pieces = [(first, arrays["features"]) for first, arrays in done]
    times = ExtractionTimes()
    if progress is not None and pieces:
        progress(sum(len(features) for _, features in pieces) * world)
    started = time.perf_counter()
    for first, videos, decode_seconds in batch_loader(clips, todo, workers=workers, device=detector_device(detector)):
        times.decode += decode_seconds
        features = detector_features(detector, videos, preset, times)
        if store is not None:
            store.save(int(first), {"features": features})
        pieces.append((int(first), features))
        if progress is not None:
            progress(len(features) * world)
    ordered = gather_in_order(pieces, accelerator)
    times.wall = time.perf_counter() - started
    return (np.concatenate(ordered) if ordered else np.zeros((0, 400), np.float32)), times


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _exact_float32(device: torch.device):
    """FVD is defined in float32: TF32 matmuls/convs stay off on CUDA during the extraction."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def stats_of(features: np.ndarray, batch_size: int = 256) -> FeatureStats:
    """Accumulate features into running statistics in input order (same order => same bits)."""
    stats = FeatureStats(dim=features.shape[1] if features.ndim == 2 else 400)
    for start in range(0, len(features), batch_size):
        stats.update(features[start : start + batch_size])
    return stats


def preset_protocol(preset: FvdPreset) -> dict:
    """The preset's fields as recorded in metrics.json (resize policy, epsilon, normaliser, sqrt)."""
    return {
        "preset": preset.name,
        "reproduces": preset.reproduces,
        "resize": preset.resize,
        "resolution": INPUT_SIZE,
        "bn_eps": preset.bn_eps,
        "covariance": preset.covariance,
        "matrix_sqrt": preset.sqrt,
        "statistics": "float64 running sums",
    }
