"""The progress bar in log files (plain periodic lines where stderr is not a terminal), slow rates as
s/it, and `vpt sample`'s bar counting solver steps."""

from __future__ import annotations

import re

import torch

from vpt.progress import ProgressBar, SolverStepBar, format_rate, listening_to_solver_steps


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_below_one_per_second_read_as_seconds_per_unit():
    assert format_rate(5, 2) == "2.50 it/s"
    assert format_rate(1, 4.2) == "4.20 s/it"  # not "0.24 it/s", let alone "0.00 it/s"
    assert format_rate(1, 1148, "frames") == "1,148 s/frame"
    assert format_rate(12_000, 20, "frames") == "600 frames/s"
    assert format_rate(0, 3) == "- it/s"


def test_plain_lines_in_a_log_file_at_the_interval(capsys):
    """Under pytest stderr is not a terminal: the bar prints its first line, one per 30 s of the
    (controlled) clock with the count, the caller's fields, the rate and the time left, and the last."""
    clock = FakeClock()
    with ProgressBar("train", 100, fields={"loss": "loss -"}, interval=30, clock=clock) as bar:
        for step in range(1, 101):
            clock.now += 2.5  # 2.5 s per step: 12 steps per line
            bar.update(completed=step, loss=f"loss {1 / step:.4f}")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "train 0/100  loss -  - it/s  ETA -"
    assert lines[1] == "train 12/100  loss 0.0833  2.50 s/it  ETA 3:40"
    counts = [int(re.match(r"train (\d+)/100", line).group(1)) for line in lines]
    assert counts == [0, 12, 24, 36, 48, 60, 72, 84, 96, 100]  # every 30 s, then the last
    assert lines[-1] == "train 100/100  loss 0.0100  2.50 s/it  ETA 0:00"


def test_plain_lines_of_a_resumed_run_and_an_elapsed_time(capsys):
    """A bar resumed at 40 rates only this session's work; `eta=False` shows the elapsed time."""
    clock = FakeClock()
    with ProgressBar("train", 50, completed=40, unit="steps", eta=False, interval=10, clock=clock) as bar:
        clock.now += 20
        bar.advance(10)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["train 40/50 steps  - steps/s  elapsed 0:00", "train 50/50 steps  2.00 s/step  elapsed 0:20"]


def test_interval_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("VPT_PROGRESS_INTERVAL", "0")
    clock = FakeClock()
    with ProgressBar("convert-h5", 3, unit="videos", clock=clock) as bar:
        for _ in range(3):
            clock.now += 1
            bar.advance(1)
    counts = [line.split()[1] for line in capsys.readouterr().err.splitlines()]
    assert counts == ["0/3", "1/3", "2/3", "3/3"]  # the end adds no repeat of the last line


def test_disabled_bar_prints_nothing(capsys):
    with ProgressBar("eval-fvd", 2, enabled=False, interval=0) as bar:
        bar.advance(2)
    assert capsys.readouterr().err == ""


def _counts(err: str) -> list[tuple[int, int | None]]:
    """(steps done, total or None) of the plain `sample` lines, a repeat (a line for finished frames) once."""
    found = re.findall(r"^sample (\d+)(?:/(\d+))? steps", err, flags=re.M)
    counts = [(int(done), int(total) if total else None) for done, total in found]
    return [count for i, count in enumerate(counts) if i == 0 or count != counts[i - 1]]


def _predict_with_bar(model, predict, frames: int) -> SolverStepBar:
    """`predict()` under the bar `vpt sample` shows, printing a line on every change."""
    bar = SolverStepBar("sample", frames, interval=0)
    with (
        bar,
        model.reporting_frames(bar.frames_done, started=bar.frames_started),
        listening_to_solver_steps(bar.solver_step),
    ):
        predict()
    return bar


def test_sample_bar_advances_per_denoising_step_of_one_seer_window(capsys):
    """Seer predicts its whole window in one solve: the bar still moves on every DDIM step, with the
    total known from the first one (it used to sit at 0/N frames until the end)."""
    from test_seer_backend import open_text_path, toy_config

    from vpt.models.seer import Seer
    from vpt.models.seer.schedule import sampling_scheduler

    model = open_text_path(Seer(toy_config())).eval()
    cfg = model.cfg
    steps = len(sampling_scheduler(3, cfg.sampler.schedule, cfg.prediction_type).timesteps)
    context = torch.zeros(2, 1, 3, 16, 16)  # one window: frames - context_frames = 2 frames per sample
    bar = _predict_with_bar(
        model, lambda: model.predict(context, 2, prompt=["a", "b"], steps=3, generator=torch.Generator()), 4
    )
    counts = _counts(capsys.readouterr().err)
    assert counts[0] == (0, None)  # before the first step the total is unknown
    assert counts[1:] == [(k, steps) for k in range(1, steps + 1)]
    assert bar.frames_finished == 4 and bar.fields["frames"] == "4/4 frames"


def test_sample_bar_counts_every_ode_step_of_a_river_rollout(capsys):
    """RIVER solves one frame at a time: steps per frame x frames is the total from the first step on."""
    from test_river import _tiny_river

    model = _tiny_river("ln")
    context = torch.randn(2, 2, 4, 16, 16)  # (B, n, c, h, w) latents
    generator = torch.Generator().manual_seed(0)
    bar = _predict_with_bar(
        model, lambda: model.rollout(context, 3, steps=2, sampler="euler", generator=generator), 2 * 3
    )
    counts = _counts(capsys.readouterr().err)
    assert counts[1:] == [(k, 6) for k in range(1, 7)]  # 2 Euler steps x 3 frames, each step a line
    assert bar.completed == 6 and bar.frames_finished == 6
