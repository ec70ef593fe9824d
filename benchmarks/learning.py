"""What every backend learns on the built-in shapes data, in one table: each trains for real at a stated
budget and is scored with its task's metric next to its task's baseline.

    python benchmarks/learning.py --work runs/learning                     # every backend, full budgets
    python benchmarks/learning.py --work runs/learning --only seer pvdm    # a subset
    OMP_NUM_THREADS=1 python benchmarks/learning.py --smoke --work /tmp/l  # every code path at toy budgets
    python benchmarks/learning.py --work runs/learning --repeats 5         # scores over sampling seeds 0-4

Rows (full budgets in FULL below; each backend's training also stops at its share of --budget-minutes):

- river: `vpt quickstart` (64 px, its configs' fixed step counts), its metrics.json: 2 -> 14 frames of
  the test clips, position error / object kept / PSNR against copying the last context frame.
- neuralsde-em2, neuralsde-adaptive: NeuralSDE f + d + g (configs/neuralsde/shapes_*.yaml, 2 context
  frames) on the quickstart autoencoder's latents; one training, sampled with 2 Euler-Maruyama steps per
  frame and with the adaptive solver; scored as river.
- seer: the tiny Seer of benchmarks/seer_instructions.py; "moves left"/"moves right" and "up"/"down" from
  the same first frame and noise, one pair per seed: a pair counts when both clips move as asked.
- latte-class: configs/latte/shapes.yaml on the quickstart autoencoder's latents, class = the caption's
  motion word; scored as benchmarks/latte_classes.py scores it (pairs of generated clips per seed).
- latte-uncond: the same model without classes on 16-frame clips; FVD (I3D of vpt's metrics) of generated
  vs test clips, next to FVD of training clips vs test clips (the data's own distance) and of noise.
- pvdm: PVDM autoencoder + configs/pvdm/shapes.yaml; the next 16-frame clip from the previous one,
  against copying the previous clip; with the autoencoder's reconstruction of the true clip as its ceiling.
- rsvp: benchmarks/shapes_compare.py's MOSO autoencoder + RSVP-M (wall-clock budget), frames 8-15 from
  0-7, against copying frames 0-7; object kept is whether it keeps its colour, shape IoU its shape.

Writes WORK/learning.json (every score, the budget planned and used, the machine) and WORK/learning.md
(the table). A backend that fails is recorded with its error and the next runs; the exit code is then 1.
Runs in WORK are reused: a second call only scores what is trained (or continues what was cut short).

--repeats K (default 1) samples the rollout rows (river, neuralsde-*, pvdm, rsvp) and latte-uncond K times,
repeat r under sampling seed r, and scores each repeat; training runs once, so only sampling and scoring
cost K times as much. K = 1 is the single sampling under seed 0. Each score of such a row is then the mean
over the repeats (a `<metric>_clip_std` the mean of the repeats' spreads over clips), `<metric>_repeat_std`
its sample standard deviation over the repeats (ddof=1; absent when K = 1, as there is no spread to
estimate), and the row's `per_repeat` lists every repeat's seed and scores (K > 1 only). learning.json and
each sampled row record `repeats`; the direction rows (seer, latte-class) already count pairs over their
own sampling seeds (16 at full budgets), ignore --repeats and record `repeats: null`. Baselines are not
sampled: scored once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import latte_classes  # noqa: E402
import seer_instructions  # noqa: E402
import shapes_compare  # noqa: E402
from common import machine, make_shapes_h5, rollout_scores, run_vpt, shapes_test_clips  # noqa: E402

BACKENDS = (
    "river",
    "neuralsde-em2",
    "neuralsde-adaptive",
    "seer",
    "latte-class",
    "latte-uncond",
    "pvdm",
    "rsvp",
)
# Training budgets: fixed step counts (None: the config's), chosen from the figures in benchmarks/README.md
# to fit 20 minutes of 2 cores per backend, evaluation included; --budget-minutes caps them by wall clock.
FULL = {
    "quickstart": {"videos": 500, "ae_steps": None, "river_steps": None},  # shared by river and the Lattes
    "neuralsde": {"steps": 2500},  # per network (f, d, g), on the quickstart's data and autoencoder
    "seer": {"videos": 400, "steps": 1250, "seeds": 16},
    "latte": {"steps": None, "seeds": 16, "fvd_clips": 50},
    "pvdm": {"videos": 200, "ae_steps": None, "steps": 1500},
    "rsvp": {"videos": 200, "minutes": 14.5, "ae_share": 0.3},
}
SMOKE = {
    "quickstart": {"videos": 20, "ae_steps": 2, "river_steps": 2},
    "neuralsde": {"steps": 2},
    "seer": {"videos": 20, "steps": 2, "seeds": 2},
    "latte": {"steps": 2, "seeds": 2, "fvd_clips": 3},
    "pvdm": {"videos": 20, "ae_steps": 2, "steps": 2},
    "rsvp": {"videos": 20, "minutes": 0.1, "ae_share": 0.3},
}
TRAIN_SHARE = 0.9  # of --budget-minutes: the training stages' wall-clock cap, the rest for evaluation
SEED = 123  # first sampling seed of the direction tests
GUIDANCE = 3.0  # Latte's classifier-free guidance (latte_classes.py's default)
ROLLOUT_CRITERION = "lower position error and higher PSNR than the baseline"
WALL_CLOCK_STEPS = 1_000_000  # the step count of shapes_compare.budget's wall-clock runs


def overrides(*settings: str) -> list[str]:
    return [item for setting in settings for item in ("--set", setting)]


def stage_record(run_dir: Path) -> dict:
    """Steps reached against planned, and the minutes metrics.jsonl logged, of one training run."""
    from vpt.runs import Run

    step, minutes = shapes_compare.logged(run_dir)
    planned = int(Run(run_dir).read_config()["train"]["max_steps"])
    wall_clock = planned >= WALL_CLOCK_STEPS  # shapes_compare.budget: the minutes decide, not the steps
    return {"steps": step, "planned_steps": None if wall_clock else planned, "minutes": minutes}


def row(backend: str, budget: str, used: dict, metric: str, model: dict, baseline: dict, **fields) -> dict:
    return {
        "backend": backend,
        "budget": budget,
        "used": used,
        "metric": metric,
        "model": model,
        "baseline": baseline,
    } | fields


def sampling_generators(repeats: int) -> list[torch.Generator]:
    """One generator per repeat: repeat r samples under seed r, so repeat 0 is the sampling of --repeats 1."""
    return [torch.Generator().manual_seed(seed) for seed in range(repeats)]


def over_repeats(per_repeat: list[dict[str, float]]) -> dict[str, float]:
    """Each score's mean over the repeats (a `<metric>_clip_std` too: the mean of the repeats' spreads over
    clips) and, with more than one repeat, `<metric>_repeat_std` beside each metric: the sample standard
    deviation (ddof=1) of its repeats' values. One repeat gives its scores unchanged and no `_repeat_std`."""
    means = {name: float(np.mean([scores[name] for scores in per_repeat])) for name in per_repeat[0]}
    if len(per_repeat) > 1:
        metrics = [name for name in per_repeat[0] if not name.endswith("_clip_std")]
        means |= {
            f"{name}_repeat_std": float(np.std([scores[name] for scores in per_repeat], ddof=1)) for name in metrics
        }
    return means


def repeat_fields(per_repeat: list[dict[str, float]]) -> dict:
    """A sampled row's `repeats` and, with more than one, `per_repeat`: each repeat's seed and scores."""
    fields: dict = {"repeats": len(per_repeat)}
    if len(per_repeat) > 1:
        fields["per_repeat"] = [{"seed": seed, **scores} for seed, scores in enumerate(per_repeat)]
    return fields


def beats_rollout_baseline(model: dict[str, float], baseline: dict[str, float]) -> bool:
    """ROLLOUT_CRITERION, on the scores' means over the repeats."""
    return bool(model["position_error"] < baseline["position_error"] and model["psnr"] > baseline["psnr"])


def rollout_row(backend, budget, used, predictions, baseline_frames, truth, records, num_context, baseline_name):
    """A row of position error / object kept / PSNR / shape IoU, mean ± std over clips, against a baseline;
    `predictions` holds one prediction of the test clips per repeat (repeat r sampled under seed r)."""
    per_repeat = [rollout_scores(predicted, truth, records, num_context) for predicted in predictions]
    model, baseline = over_repeats(per_repeat), rollout_scores(baseline_frames, truth, records, num_context)
    return row(
        backend,
        budget,
        used,
        f"{num_context} -> {truth.shape[1]} frames of {len(truth)} test clips",
        model,
        baseline,
        baseline_name=baseline_name,
        criterion=ROLLOUT_CRITERION,
        beats_baseline=beats_rollout_baseline(model, baseline),
        **repeat_fields(per_repeat),
    )


# --- the quickstart's data and autoencoder: river, latte-class, latte-uncond -----------------------------


def quickstart_autoencoder(work: Path, budget: dict, cap: float) -> tuple[Path, Path, Path]:
    """(frames h5, autoencoder run, latents) of `vpt quickstart --out WORK/quickstart`, made by its own stages."""
    from vpt.commands import quickstart

    out = work / "quickstart"
    h5 = quickstart._make_data(out / "data", budget["videos"])
    ae_run, latents = out / "runs" / "ae", out / "data" / "latents"
    if not quickstart._latents_started(latents):
        quickstart._train_autoencoder(out, h5, budget["ae_steps"], cap, 0)
    quickstart._save_latents(ae_run, h5, latents)
    return h5, ae_run, latents


def run_river(work: Path, budgets: dict, cap: float, repeats: int) -> list[dict]:
    """The quickstart's own evaluation (its metrics.json, sampling seed 0) is repeat 0; repeat r > 0 samples
    its RIVER run again under seed r and scores it the same way."""
    from vpt.commands import quickstart

    budget, out = budgets["quickstart"], work / "quickstart"
    steps = [("--ae-steps", budget["ae_steps"]), ("--river-steps", budget["river_steps"])]
    args = ["quickstart", "--out", str(out), "--num-videos", str(budget["videos"]), "--minutes", str(cap / TRAIN_SHARE)]
    run_vpt(args + [str(item) for option, value in steps if value for item in (option, value)])
    metrics = json.loads((out / "metrics.json").read_text())
    names = ("position_error", "psnr", "ssim")

    def row_scores(scores: dict) -> dict[str, float]:  # the row's part of one quickstart evaluation
        spreads = {f"{name}_clip_std": scores[f"{name}_clip_std"] for name in names}
        return {name: scores[name] for name in names} | spreads | {"object_kept": scores["object_kept"]}

    h5, river_run = quickstart._make_data(out / "data", budget["videos"]), Path(metrics["river_run"])
    resampled = [
        quickstart._score_rollout(river_run, h5, metrics["context_frames"], seed)[0] for seed in range(1, repeats)
    ]
    per_repeat = [row_scores(scores) for scores in [metrics, *resampled]]
    model, baseline = over_repeats(per_repeat), {name: metrics[f"baseline_{name}"] for name in names}
    return [
        row(
            "river",
            f"vpt quickstart: {budget['videos']} videos of 64 px, autoencoder {budget['ae_steps'] or 'its config'}"
            f" and RIVER {budget['river_steps'] or 'its config'} steps",
            {"ae": stage_record(out / "runs" / "ae"), "river": stage_record(out / "runs" / "river")},
            f"{metrics['context_frames']} -> {metrics['predicted_frames']} frames of {metrics['test_clips']} test clips",
            model,
            baseline,
            baseline_name="copy the last context frame",
            criterion=ROLLOUT_CRITERION,
            beats_baseline=beats_rollout_baseline(model, baseline),
            cut_short=metrics["truncated_by_minutes"],
            **repeat_fields(per_repeat),
        )
    ]


# --- NeuralSDE ------------------------------------------------------------------------------------------


def run_neuralsde(work: Path, budgets: dict, cap: float, samplers: list[str], repeats: int) -> list[dict]:
    from vpt.commands.options import path_setting
    from vpt.models.backend import Backend

    budget, out, context = budgets["neuralsde"], work / "neuralsde", 2
    started = time.perf_counter()
    h5, ae_run, latents = quickstart_autoencoder(work, budgets["quickstart"], cap * 0.35)
    per_network = (cap - (time.perf_counter() - started) / 60) / 3  # the autoencoder is shared with river's row
    networks = ("f", "d", "g")
    for network in networks:  # g starts from the trained f and d
        run = out / network
        if shapes_compare.trained(run) and stage_record(run)["steps"] >= budget["steps"]:
            continue
        settings = [
            f"model.context_frames={context}",
            f"train.max_steps={budget['steps']}",
            "train.sample_every=0",
            "train.val_every=0",
            f"train.max_minutes={per_network}",
        ]
        if network == "g":
            settings += [path_setting("model.f_run", out / "f"), path_setting("model.d_run", out / "d")]
        config = ROOT / "configs" / "neuralsde" / f"shapes_{network}.yaml"
        args = ["train", "neuralsde", "--config", str(config), "--data", str(latents), "--ae", str(ae_run)]
        run_vpt(args + ["--run", str(run), *overrides(*settings)])
    used = {name: stage_record(out / name) for name in networks}
    video, records = shapes_test_clips(h5, frames=16)  # (N, 16, 3, 64, 64)
    truth = video[:, context:]
    model = Backend.from_run(out / "g")
    options = {"em2": {"sampler": "euler", "steps": 2}, "adaptive": {"sampler": "adaptive"}}
    rows = []
    for sampler in samplers:
        predictions, evaluations = [], []  # per repeat: (N, 14, 3, 64, 64), drift evaluations per frame
        for generator in sampling_generators(repeats):
            predictions.append(
                model.predict(video[:, :context], truth.shape[1], generator=generator, **options[sampler])
            )
            evaluations.append(model.sampling_stats["drift_evaluations_per_frame"])
        rows.append(
            rollout_row(
                f"neuralsde-{sampler}",
                f"configs/neuralsde/shapes_*.yaml on the quickstart autoencoder's latents, 2 context frames, "
                f"{budget['steps']} steps per network f, d, g",
                used | {"drift_evaluations_per_frame": float(np.mean(evaluations))},  # mean over the repeats
                predictions,
                video[:, context - 1 : context].expand_as(truth),
                truth,
                records,
                context,
                "copy the last context frame",
            )
        )
    return rows


# --- direction following: Seer (captions) and Latte (class labels) ------------------------------------------


def direction_row(backend: str, budget: str, used: dict, hits: dict[str, int], seeds: int) -> dict:
    target = math.ceil(0.75 * seeds)  # the 12 of 16
    return row(
        backend,
        budget,
        used,
        f"pairs (of {seeds} seeds) whose two clips both move as asked",
        hits,
        {name: seeds / 4 for name in hits},  # each clip a coin flip, a pair needs both
        baseline_name="chance",
        criterion=f">= {target}/{seeds} in each pair",
        beats_baseline=all(value >= target for value in hits.values()),
        repeats=None,  # not applicable: the count is over `seeds` sampling seeds already, whatever --repeats says
    )


def run_seer(work: Path, budgets: dict, cap: float) -> list[dict]:
    budget, data, run = budgets["seer"], work / "seer" / "shapes", work / "seer" / "run"
    if not (data / "captions.json").is_file():
        size = str(seer_instructions.SOURCE_SIZE)
        run_vpt(["make-data", "shapes", "--out", str(data), "--num-videos", str(budget["videos"]), "--size", size])
    settings = [*seer_instructions.OVERRIDES, f"train.max_minutes={cap}"]
    args = ["train", "seer", "--config", str(seer_instructions.TINY), "--data", str(data), "--run", str(run)]
    run_vpt(args + ["--max-steps", str(budget["steps"]), *overrides(*settings)])
    pairs = {"left/right": ("left", "right", 0), "up/down": ("up", "down", 1)}
    hits = {
        name: int(seer_instructions.evaluate(run, budget["seeds"], SEED, pair=pair)[0]) for name, pair in pairs.items()
    }
    budget_text = (
        f"{budget['videos']} videos, 16 px, 1 + 3 frames, {budget['steps']} steps (configs/seer/tiny.yaml shrunk)"
    )
    return [direction_row("seer", budget_text, {"seer": stage_record(run)}, hits, budget["seeds"])]


def train_latte(run: Path, latents: Path, ae_run: Path, steps: int | None, cap: float, *settings: str) -> None:
    from vpt.commands.options import path_setting

    config = ROOT / "configs" / "latte" / "shapes.yaml"
    quiet = ["train.sample_every=0", "train.val_every=0", f"train.max_minutes={cap}"]
    args = ["train", "latte", "--config", str(config), "--data", str(latents), "--run", str(run)]
    args += ["--max-steps", str(steps)] if steps else []
    run_vpt(args + overrides(path_setting("model.autoencoder", ae_run), *quiet, *settings))


def run_latte_class(work: Path, budgets: dict, cap: float) -> list[dict]:
    budget, run = budgets["latte"], work / "latte-class"
    _, ae_run, latents = quickstart_autoencoder(work, budgets["quickstart"], cap * 0.35)
    train_latte(run, latents, ae_run, budget["steps"], cap)
    results = latte_classes.evaluate(run, budget["seeds"], SEED, GUIDANCE, size=64, frames=8)
    hits = {"left/right": results["horizontal"][0], "up/down": results["vertical"][0]}
    used = {"latte": stage_record(run)}
    budget_text = (
        f"configs/latte/shapes.yaml on the quickstart autoencoder's latents (64 px, 8 frames), guidance {GUIDANCE:g}"
    )
    return [direction_row("latte-class", budget_text, used, hits, budget["seeds"])]


# --- unconditional Latte: FVD ------------------------------------------------------------------------------


def run_latte_uncond(work: Path, budgets: dict, cap: float, repeats: int) -> list[dict]:
    import fvd
    from einops import rearrange

    from vpt.metrics.evaluate import few_clips_warning, quantise
    from vpt.metrics.fvd import detector_features, fvd_from_stats, get_preset, stats_of
    from vpt.models.backend import Backend

    budget, run, frames = budgets["latte"], work / "latte-uncond", 16  # I3D needs >= 9 frames
    h5, ae_run, latents = quickstart_autoencoder(work, budgets["quickstart"], cap * 0.35)
    train_latte(
        run,
        latents,
        ae_run,
        budget["steps"],
        cap,
        "model.class_words=[]",
        f"model.num_frames={frames}",
        f"data.frames={frames}",
    )
    count = budget["fvd_clips"]
    test, _ = shapes_test_clips(h5, frames=frames, count=count)  # (N, 16, 3, 64, 64)
    training, _ = shapes_test_clips(h5, frames=frames, count=len(test), split="train")
    model = Backend.from_run(run)
    generated = [  # per repeat, as many clips as test clips: (N, 16, 3, 64, 64)
        torch.cat(
            [
                model.predict(test[:0].new_zeros(len(chunk), 0, *test.shape[2:]), frames, generator=generator)
                for chunk in test.split(16)
            ]
        )
        for generator in sampling_generators(repeats)
    ]
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    preset = get_preset("stylegan-v")
    detector, detector_name = fvd.detector_for(torch.device("cpu"), preset, None)

    def features(clips: torch.Tensor) -> np.ndarray:  # (N, T, 3, H, W) in [-1, 1] -> (N, 400)
        uint8 = rearrange(quantise(clips), "n t c h w -> n t h w c")
        return np.concatenate([detector_features(detector, part, preset) for part in uint8.split(8)])

    real = stats_of(features(test))

    def fvd_to_test(clips: torch.Tensor) -> float:
        return fvd_from_stats(real, stats_of(features(clips)), preset)

    per_repeat = [{"fvd": fvd_to_test(clips)} for clips in generated]
    model_scores = over_repeats(per_repeat)
    baseline = {"fvd_training_clips": fvd_to_test(training), "fvd_noise": fvd_to_test(noise)}
    notes = [f"detector: {detector_name}; preset stylegan-v; every set {len(test)} clips of {frames} frames at 64 px"]
    warning = few_clips_warning(len(test), len(test), 400)
    notes += [warning] if warning else []
    return [
        row(
            "latte-uncond",
            f"configs/latte/shapes.yaml without classes, {frames}-frame clips, on the quickstart autoencoder's latents",
            {"latte": stage_record(run)},
            "FVD to the test clips (lower: closer)",
            model_scores,
            baseline,
            baseline_name="training clips (the data's own distance) and uniform noise",
            criterion="FVD below noise's",
            beats_baseline=bool(model_scores["fvd"] < baseline["fvd_noise"]),
            notes=notes,
            **repeat_fields(per_repeat),
        )
    ]


# --- next clip from the previous one: PVDM and RSVP-M --------------------------------------------------------


def run_pvdm(work: Path, budgets: dict, cap: float, repeats: int) -> list[dict]:
    from vpt.commands.options import path_setting
    from vpt.commands.save_latents import encode_dataset
    from vpt.models.backend import Backend
    from vpt.models.pvdm import PVDM

    budget, root, clip = budgets["pvdm"], work / "pvdm", 16
    h5 = make_shapes_h5(root / "data", budget["videos"], frames=2 * clip, size=32)
    ae_run, latents, run = root / "ae", root / "latents", root / "pvdm"
    ae_steps = [f"train.max_steps={budget['ae_steps']}"] if budget["ae_steps"] else []
    if not (latents / "manifest.json").is_file():
        shapes_compare.train_ae(
            ae_run, h5, ROOT / "configs/ae/pvdm_shapes.yaml", [*ae_steps, f"train.max_minutes={cap * 0.3}"]
        )
        encode_dataset(ae_run, h5, latents)
    settings = [path_setting("data.path", latents), path_setting("model.autoencoder", ae_run)]
    settings += [
        "train.sample_every=0",
        "train.val_every=0",
        f"train.max_steps={budget['steps']}",
        f"train.max_minutes={cap * 0.7}",
    ]
    if not shapes_compare.trained(run) or stage_record(run)["steps"] < budget["steps"]:
        shapes_compare.train(PVDM, run, ROOT / "configs/pvdm/shapes.yaml", settings)
    video, records = shapes_test_clips(h5, frames=2 * clip)  # (N, 32, 3, 32, 32)
    model = Backend.from_run(run)
    context, truth = video[:, :clip], video[:, clip:]
    predictions = [model.predict(context, clip, generator=g) for g in sampling_generators(repeats)]  # (N, 16, ...)
    result = rollout_row(
        "pvdm",
        f"{budget['videos']} videos of 32 frames at 32 px; autoencoder configs/ae/pvdm_shapes.yaml, {budget['steps']} PVDM steps",
        {"ae": stage_record(ae_run), "pvdm": stage_record(run)},
        predictions,
        context,
        truth,
        records,
        clip,
        "copy the previous clip",
    )
    ceiling = rollout_scores(model.decode(model.encode(truth)), truth, records, clip)
    result["notes"] = [
        f"the autoencoder's reconstruction of the true next clip (the ceiling): PSNR {ceiling['psnr']:.2f} dB, "
        f"position error {ceiling['position_error']:.2f} px, object kept {ceiling['object_kept']:.0%}"
    ]
    return [result]


def run_rsvp(work: Path, budgets: dict, cap: float, repeats: int) -> list[dict]:
    from vpt.models.backend import Backend

    budget, root, given = budgets["rsvp"], work / "rsvp", 8
    h5 = make_shapes_h5(root / "data", budget["videos"], frames=shapes_compare.FRAMES, size=shapes_compare.SIZE)
    run = root / "run" / "rsvp"
    minutes = min(budget["minutes"], cap)
    if not shapes_compare.trained(run):
        shapes_compare.train_rsvp(root / "run", h5, minutes, budget["ae_share"], given_frames=given)
    video, records = shapes_test_clips(h5, frames=shapes_compare.FRAMES)  # (N, 16, 3, 32, 32)
    model = Backend.from_run(run)
    context, truth = video[:, :given], video[:, given:]
    predictions = [model.predict(context, truth.shape[1], generator=g) for g in sampling_generators(repeats)]
    result = rollout_row(
        "rsvp",
        f"{budget['videos']} videos of 16 frames at 32 px, {minutes:g} min wall clock: MOSO autoencoder "
        f"{budget['ae_share']:.0%}, token caching and RSVP-M the rest",
        {"ae": stage_record(root / "run" / "moso"), "rsvp": stage_record(run)},
        predictions,
        context,
        truth,
        records,
        given,
        "copy the previous clip (frames 0-7 as 8-15)",
    )
    result["notes"] = rsvp_ceilings(model, video, records, given)
    return [result]


def rsvp_ceilings(model, video: torch.Tensor, records: list[dict], given: int) -> list[str]:
    """What the MOSO autoencoder allows, scored on the predicted frames: its reconstruction of the true
    clip, and the true clip's motion decoded with the scene and object tokens of the clip `predict`
    tokenises (the given frames, copies of the last one after them)."""
    completed = torch.cat([video[:, :given], video[:, given - 1 : given].expand_as(video[:, given:])], dim=1)
    x, _, tokens = model.embed(video)
    _, _, completed_tokens = model.embed(completed)
    truth = video[:, given:]
    ceilings = {
        "the autoencoder's reconstruction of the true clip": model.decode_motion(x, tokens)[:, given:],
        "the true motion with the scene and object tokens of the clip predict completes": model.decode_motion(
            x, completed_tokens
        )[:, given:],
    }
    notes = []
    for name, frames in ceilings.items():
        scores = rollout_scores(frames, truth, records, given)
        notes.append(
            f"{name} (a ceiling): PSNR {scores['psnr']:.2f} dB, position error {scores['position_error']:.2f} px, "
            f"object kept {scores['object_kept']:.0%}"
        )
    return notes


# --- the table ----------------------------------------------------------------------------------------------


SPREADS = {"_clip_std": "clips", "_repeat_std": "repeats"}  # the spreads a score may have, and their labels


def _cell(values: dict, labelled: bool) -> str:
    """'position_error 10.70 ± 5.10; psnr ...': every score, with its spread over clips and over repeats where
    there is one; `labelled` names each spread ('10.70 ± 5.10 (clips) ± 0.31 (repeats)')."""
    parts = []
    for name, value in values.items():
        if name.endswith(tuple(SPREADS)):
            continue
        shown = str(value) if isinstance(value, int) else f"{value:.2f}"  # counts as counts
        for suffix, label in SPREADS.items():
            if f"{name}{suffix}" in values:
                shown += f" ± {values[name + suffix]:.2f}" + (f" ({label})" if labelled else "")
        parts.append(f"{name} {shown}")
    return "; ".join(parts)


def _used(used: dict) -> str:
    stages = [
        f"{name} {u['steps']}{'/' + str(u['planned_steps']) if u['planned_steps'] else ''} steps, {u['minutes']:.1f} min"
        for name, u in used.items()
        if isinstance(u, dict)
    ]
    return "; ".join(stages)


def table(rows: list[dict], repeats: int) -> str:
    model = "model (± std over clips)"
    if repeats > 1:
        model = f"model (mean over {repeats} sampling seeds; ± std over clips (clips); ± std over the seeds (repeats))"
    lines = [
        f"| backend | budget | used | metric | {model} | baseline | criterion | beats baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | | | | error: {r['error']} | | | no |")
            continue
        lines.append(
            f"| {r['backend']} | {r['budget']} | {_used(r['used'])} | {r['metric']} | {_cell(r['model'], repeats > 1)} | "
            f"{r['baseline_name']}: {_cell(r['baseline'], repeats > 1)} | {r['criterion']} | "
            f"{'yes' if r['beats_baseline'] else 'no'} |"
        )
    notes = [f"- {r['backend']}: {note}" for r in rows for note in r.get("notes", [])]
    return "\n".join(lines + ([""] + notes if notes else []))


def positive_int(text: str) -> int:
    """argparse's type of a count: a whole number >= 1, else argparse's one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/learning"), help="data, runs, learning.json/.md")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BACKENDS,
        default=list(BACKENDS),
        metavar="BACKEND",
        help=f"of {', '.join(BACKENDS)}",
    )
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="per backend; training stops at 90%% of it")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the budgets are for 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="every code path at a toy budget (a few steps and videos)")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        metavar="K",
        help="sample the rollout rows and latte-uncond K times, repeat r under sampling seed r (1: seed 0 alone), and "
        "report each score's mean with its sample std over the repeats; training runs once, sampling and scoring "
        "cost K times as much. The direction rows (seer, latte-class) count over their own seeds and ignore it",
    )
    args = parser.parse_args(argv)

    from vpt.fsutil import atomic_write_text

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.work.mkdir(parents=True, exist_ok=True)
    budgets, cap = (SMOKE if args.smoke else FULL), TRAIN_SHARE * args.budget_minutes
    jobs = {
        "river": lambda: run_river(args.work, budgets, cap, args.repeats),
        "neuralsde": lambda: run_neuralsde(
            args.work, budgets, cap, [b.split("-")[1] for b in args.only if b.startswith("neuralsde")], args.repeats
        ),
        "seer": lambda: run_seer(args.work, budgets, cap),
        "latte-class": lambda: run_latte_class(args.work, budgets, cap),
        "latte-uncond": lambda: run_latte_uncond(args.work, budgets, cap, args.repeats),
        "pvdm": lambda: run_pvdm(args.work, budgets, cap, args.repeats),
        "rsvp": lambda: run_rsvp(args.work, budgets, cap, args.repeats),
    }
    wanted = list(dict.fromkeys("neuralsde" if b.startswith("neuralsde") else b for b in args.only))
    rows = []
    for name in wanted:
        started = time.perf_counter()
        try:
            produced = jobs[name]()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one backend's failure must not cost the others
            traceback.print_exc()
            produced = [
                {"backend": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            ]
        for r in produced:
            r["minutes"] = round((time.perf_counter() - started) / 60, 2)
        rows += produced
        record = {
            "machine": machine(),
            "smoke": args.smoke,
            "budget_minutes": args.budget_minutes,
            "budgets": budgets,
            "repeats": args.repeats,
            "rows": rows,
        }
        atomic_write_text(args.work / "learning.json", json.dumps(record, indent=2) + "\n")
        atomic_write_text(
            args.work / "learning.md",
            f"{machine()}{' (smoke budgets)' if args.smoke else ''}\n\n{table(rows, args.repeats)}\n",
        )
    print((args.work / "learning.md").read_text())
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
