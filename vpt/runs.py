"""Run directories: start or resume (with the resolved config), atomic checkpoints, reading weights, the metrics log.

    runs/<name>/
      config.yaml        the fully resolved config
      checkpoints/       step_000500/ ... each written to a temp dir, fsynced, then renamed;
                         `latest` (and `best`) name a finished one and move only after the rename
      metrics.jsonl      one JSON object per logged step
      samples/           what periodic sampling wrote

A kill -9 at any instant leaves either the old `latest` or the new one, never a half checkpoint.
The process that opens a run for training holds `runs/<name>/.vpt.lock` while it lives, so a second
command on the same run is refused instead of interleaving checkpoints and metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from vpt.config import config_to_dict, load_config, yaml_problem
from vpt.console import is_main_process, warn
from vpt.errors import UsageError
from vpt.fsutil import LOCK_FILE, DirectoryLock, atomic_write_text, fsync_dir, read_json_object, replace_dir
from vpt.weights import read_weights

STEP_DIR = re.compile(r"^step_(\d{6,})$")


class Run:
    """A run directory. Only the main process writes shared files; every process may read them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock: DirectoryLock | None = None

    # --- layout -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    # --- create / resume --------------------------------------------------------------------------
    @classmethod
    def open(
        cls, root: str | Path, *, fresh: bool = False, force: bool = False, is_main: bool = True, lock: bool = True
    ) -> Run:
        """A new directory is created; an existing run is resumed; `fresh` wipes it (needs `force`).

        The main process takes the run's lock (`lock`) and holds it until `release()` or its end;
        another process that opens the same run meanwhile is refused with one line.
        """
        run = cls(root)
        if run.root.exists() and not run.root.is_dir():
            raise UsageError(f"--run {run.root} exists and is not a directory")
        if is_main and lock and is_main_process():  # under `accelerate launch` rank 0 holds it for all ranks
            run._lock = DirectoryLock(run.root, "the run").acquire()
        if fresh and run.exists():
            if not force:
                run.release()
                raise UsageError(
                    f"--fresh would delete the existing run {run.root} "
                    f"(checkpoint step {run.latest_step()}); add --force to confirm"
                )
            if is_main:
                run._wipe()
        if is_main:
            run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            run.samples_dir.mkdir(parents=True, exist_ok=True)
            run.clean_partial()
            # Records a killed process logged after its last checkpoint would be logged again: drop them on
            # every start, also when no checkpoint was written yet (step 0).
            run.truncate_metrics(after_step=run.latest_step())
        return run

    def release(self) -> None:
        """Let other processes open this run (also happens when this object or the process goes)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # interpreter shutdown: the process's end releases the lock anyway
            pass

    def _wipe(self) -> None:
        """Delete everything in the run but its lock file, which must stay the one this process holds."""
        for entry in self.root.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def exists(self) -> bool:
        return self.config_path.exists() or self.latest_checkpoint() is not None

    def clean_partial(self) -> None:
        """Remove checkpoint directories a crash left half written."""
        if self.checkpoints_dir.is_dir():
            for entry in self.checkpoints_dir.iterdir():
                if entry.name.startswith(".") and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)

    # --- config -----------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        if not self.config_path.is_file():
            raise UsageError(f"{self.root} is not a vpt run (no config.yaml)")
        try:
            config = yaml.safe_load(self.config_path.read_text()) or {}
        except yaml.YAMLError as exc:  # also a `!!python/...` tag, which safe_load refuses to build
            raise UsageError(f"{self.config_path}: not a vpt config ({yaml_problem(exc)})") from None
        if not isinstance(config, dict):
            raise UsageError(f"{self.config_path}: not a vpt config (expected a mapping of sections)")
        return config

    # --- checkpoints ------------------------------------------------------------------------------
    def step_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:06d}"

    def finished_checkpoints(self) -> list[Path]:
        """Checkpoint directories that were completely written, oldest first."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [
            p for p in self.checkpoints_dir.iterdir() if p.is_dir() and not p.is_symlink() and STEP_DIR.match(p.name)
        ]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `latest` names; if that pointer is missing or stale, the newest finished one."""
        target = self._pointer("latest")
        if target is not None:
            return target
        finished = self.finished_checkpoints()
        return finished[-1] if finished else None

    def best_checkpoint(self) -> Path | None:
        return self._pointer("best")

    def _pointer(self, name: str) -> Path | None:
        """The checkpoint that checkpoints/`name` names, or None when it names none that exists.

        vpt writes only `step_NNNNNN` there; anything else (`../../elsewhere/step_000002`, an absolute
        path, a symlinked folder) would load weights from outside the run and is refused in one line."""
        pointer = self.checkpoints_dir / name
        if not pointer.is_file():
            return None
        try:
            text = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"{pointer}: unreadable ({exc.__class__.__name__}); delete it to use the newest checkpoint"
            ) from None
        target = self.checkpoints_dir / text
        if not STEP_DIR.match(text) or target.is_symlink():
            raise UsageError(
                f"{pointer} names {text[:100]!r}, not a step_NNNNNN folder inside {self.checkpoints_dir}; "
                "delete it to use the newest checkpoint"
            )
        return target if target.is_dir() else None

    def latest_step(self) -> int:
        latest = self.latest_checkpoint()
        return checkpoint_step(latest) if latest else 0

    def checkpoint_at(self, step: int) -> Path:
        """The finished checkpoint of training step `step`; one line naming the steps there are when it
        has none. Only a real folder inside checkpoints/ counts: a symlinked one is refused."""
        if self.step_dir(step).is_symlink():
            raise UsageError(f"{self.step_dir(step)} is a symlink; vpt reads a run's weights only from inside it")
        finished = self.finished_checkpoints()
        for path in finished:
            if checkpoint_step(path) == step:
                return path
        available = ", ".join(str(checkpoint_step(p)) for p in finished) or "none yet"
        raise UsageError(f"{self.root} has no checkpoint of step {step} (available steps: {available})")

    @staticmethod
    def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
        """checkpoint/trainer_state.json with its fields checked: step (int >= 0), world_size (int >= 1),
        sharded (bool), best (number or null); a damaged or hand-edited file is one line."""
        path = checkpoint / "trainer_state.json"
        record = read_json_object(path, "trainer state")
        checks = {
            "step": lambda v: type(v) is int and v >= 0,
            "world_size": lambda v: type(v) is int and v >= 1,
            "sharded": lambda v: isinstance(v, bool),
            "best": lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        }
        for key, ok in checks.items():
            if (key in record or key == "step") and not ok(record.get(key)):
                raise UsageError(
                    f"{path}: damaged trainer state ({key}={record.get(key)!r}); "
                    "delete this checkpoint folder to resume from the one before"
                )
        return record

    def pending_dir(self, step: int) -> Path:
        """Where every process writes its part of checkpoint `step` before it is committed."""
        return self.checkpoints_dir / f".pending_step_{step:06d}"

    def commit_checkpoint(self, step: int, *, keep_last: int, is_best: bool = False) -> Path:
        """Rename the pending directory into place, then move `latest` (and `best`), then prune."""
        final = self.step_dir(step)
        replace_dir(self.pending_dir(step), final)
        atomic_write_text(self.checkpoints_dir / "latest", final.name + "\n")
        if is_best:
            atomic_write_text(self.checkpoints_dir / "best", final.name + "\n")
        self.prune(keep_last)
        return final

    def prune(self, keep_last: int) -> None:
        """Keep the newest `keep_last` checkpoints plus the ones `latest` and `best` name."""
        finished = self.finished_checkpoints()
        keep = set(finished[-keep_last:]) if keep_last > 0 else set()
        keep |= {p for p in (self.latest_checkpoint(), self.best_checkpoint()) if p is not None}
        for path in finished:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        fsync_dir(self.checkpoints_dir)

    def load_weights(self, *, ema: bool = True, checkpoint: Path | None = None) -> dict[str, torch.Tensor]:
        """The weights to use for inference (of `checkpoint`, default the latest): the EMA where the run
        kept one, else the raw model weights."""
        path = checkpoint or self.latest_checkpoint()
        if path is None:
            raise UsageError(f"{self.root} has no finished checkpoint yet")
        weights = read_weights(path / "model.safetensors")
        if ema and (path / "ema.safetensors").exists():
            weights.update(read_weights(path / "ema.safetensors"))
        return weights

    # --- metrics ----------------------------------------------------------------------------------
    def log_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate_metrics(self, after_step: int) -> None:
        """On a start or resume, drop records logged after the checkpoint: the run logs them again."""
        if not self.metrics_path.is_file():
            return
        kept = "".join(json.dumps(r) + "\n" for r in self.read_metrics() if r.get("step", 0) <= after_step)
        if kept != self.metrics_path.read_text():  # also drops a line cut short, which the next record would extend
            atomic_write_text(self.metrics_path, kept)


def checkpoint_step(checkpoint: Path) -> int:
    """The training step of a checkpoints/step_NNNNNN folder."""
    return int(STEP_DIR.match(checkpoint.name).group(1))


def split_step_folder(path: str | Path) -> tuple[Path, int | None]:
    """A path that may name a run or one of its checkpoint folders (`runs/x/checkpoints/step_000500`):
    (the run directory, the step the path names or None)."""
    path = Path(path)
    absolute = Path(os.path.abspath(path))  # `..` resolved by name, symlinks left as they are
    match = STEP_DIR.match(absolute.name)
    if match and absolute.parent.name == "checkpoints":
        return absolute.parent.parent, int(match.group(1))
    return path, None


def newest_run(parent: str | Path = "runs") -> Path | None:
    """The most recently modified run directory under `parent` (used when `--run` is omitted)."""
    parent = Path(parent)
    if not parent.is_dir():
        return None
    runs = [p for p in parent.rglob("config.yaml") if (p.parent / "checkpoints").is_dir()]
    if not runs:
        return None
    return max(runs, key=lambda p: p.stat().st_mtime).parent


def start_run(
    schema: type,
    *,
    run_dir: Path,
    config_file: Path | None,
    overrides: list[str],
    max_steps: int | None = None,
    log_every: int | None = None,
    fresh: bool = False,
    force: bool = False,
    defaults: dict | None = None,
    complete: Callable[[Any], None] | None = None,
) -> tuple[Run, Any]:
    """Open (create / resume / restart) a run directory and resolve its config.

    A new run takes defaults <- `config_file` <- `--set` overrides. A resumed run (one with a finished
    checkpoint) keeps its own config.yaml (where a `--config` differs, that is reported and ignored) and
    applies only the overrides, so `--max-steps` extends a finished run. A run without a checkpoint is
    new: a `--config` replaces what a failed start left. `complete(cfg)` fills values the config derives
    (e.g. the autoencoder recorded with cached latents) and may refuse it; then the resolved config is
    written into the run, once.
    """
    overrides = list(overrides)
    if max_steps is not None:
        overrides.append(f"train.max_steps={max_steps}")
    if log_every is not None:
        overrides.append(f"train.log_every={log_every}")
    run = Run.open(run_dir, fresh=fresh, force=force, is_main=is_main_process())
    resumed = run.config_path.exists() and run.latest_checkpoint() is not None
    if resumed:
        cfg = load_config(schema, run.config_path, overrides)
        if config_file is not None:  # both sides with the command line's settings: those are no difference
            requested = config_to_dict(load_config(schema, config_file, overrides, defaults=defaults))
            changed = _changed_keys(config_to_dict(cfg), requested)
            if changed:
                warn(
                    f"{run.root} resumes with its own config.yaml; {config_file} differs in "
                    f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} (use --set to change a value)"
                )
    elif config_file is None and run.config_path.exists():  # the same start again, after one that stopped early
        cfg = load_config(schema, run.config_path, overrides)
    else:
        if config_file is None and defaults is None:
            raise UsageError(f"--config is required to start the new run {run_dir}")
        cfg = load_config(schema, config_file, overrides, defaults=defaults)
    if complete is not None:
        complete(cfg)
    if is_main_process():
        run.write_config(config_to_dict(cfg))
    return run, cfg


def _changed_keys(stored: Any, requested: Any, prefix: str = "") -> list[str]:
    """Keys whose requested value differs from the stored one; a value the request leaves unset (None)
    was filled when the run started, and is no difference."""
    if isinstance(stored, dict) and isinstance(requested, dict):
        keys = sorted(set(stored) | set(requested))
        return [k for key in keys for k in _changed_keys(stored.get(key), requested.get(key), f"{prefix}{key}.")]
    return [] if requested is None or stored == requested else [prefix.rstrip(".")]
