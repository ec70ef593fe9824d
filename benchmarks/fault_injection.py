"""Fault injection on the real `vpt` commands, each run as its own process on tiny built-in data.

Categories (counts are printed as a table and written to OUT/fault_injection.json):

- kill: kill -9 of the main process at a seeded random moment, uniform over the command's measured
  uninterrupted duration; then the same command again, whose output must equal an uninterrupted
  reference run byte for byte (see IGNORED for what is not compared). Also counted: worker processes
  alive 1 s after the kill.
- ctrl-c: one SIGINT during training: exit code 130, a checkpoint, and the resumed run equal to the reference.
- concurrency: a second identical command while the first holds the output: it refuses in one line and
  the first finishes with the reference's output.
- crafted: pickles whose unpickling creates a marker file (torch zip, legacy torch and plain pickle, and
  .npz/.npy object arrays) placed where each reader looks; counts readers reached and code executed.
- bad input: broken or hostile inputs and user mistakes: one-line error (or a documented success) vs
  traceback; finished outputs hashed before/after.

Every case snapshots the whole work folder (and runs with an empty working directory inside it): a file
created, changed or removed outside the case's named output or run counts as a write outside.

    python benchmarks/fault_injection.py --out /tmp/fi [--quick] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the tiny TorchScript I3D the eval tests use
FIXTURE_AE = REPO / "tests" / "fixtures" / "neuralsde" / "shapes_ae"  # a committed tiny KL-VAE run (32 px -> 4x8x8)
CONFIGS = REPO / "configs"

# What differs between two correct runs and is therefore not compared byte for byte.
IGNORED = {
    "files": [".vpt.lock (holds the pid of the last process that held the folder)"],
    # x264 (threads=1) now and then writes a few different bytes for the same frames, decoding to the same
    # pixels (make-data shapes, val/00002.mp4 of 60 videos, 1 in 4 runs even without vpt's help)
    "compared_as_decoded_frames": ["*.mp4"],
    "json_keys": {
        "metrics.jsonl": ["steps_per_s"],  # wall-clock throughput of each logged step
        # eval-fvd: wall/decode/detector seconds; the cache record names the cache folder (beside --out, so
        # it differs between two output folders) and how many batches were computed vs reused after a kill
        "metrics.json": ["timing", "protocol.cache"],
    },
}

RIVER = """backend: river
model: {latent_channels: 4, inner_dim: 32, depth: 1, mid_depth: 1, heads: 2, dropout: 0.1, context_frames: 1, steps: 2}
data: {frames: 4}
train: {max_steps: 6, batch_size: 2, log_every: 1, checkpoint_every: 2, keep_last: 2, sample_every: 0, val_every: 0}
"""
NEURALSDE = """backend: neuralsde
model: {stage: f, latent_channels: 4, inner_dim: 32, depth: 1, mid_depth: 1, heads: 2, sampler: euler, steps: 2}
data: {frames: 6}
train: {max_steps: 6, batch_size: 2, log_every: 1, checkpoint_every: 2, keep_last: 2, sample_every: 0, val_every: 0}
"""
LATTE = """backend: latte
model: {latent_channels: 4, num_frames: 4, patch_size: 2, num_layers: 2, hidden_size: 32, num_heads: 2, head_dim: 16,
        timestep_emb_dim: 32, sampler: ddim, steps: 2}
data: {frames: 4}
train: {max_steps: 6, batch_size: 2, log_every: 1, checkpoint_every: 2, keep_last: 2, sample_every: 0, val_every: 0}
"""
TRAIN_TINY = ["--set", "train.checkpoint_every=2", "--set", "train.log_every=1", "--set", "train.val_every=0"]
TRAIN_TINY += ["--set", "train.sample_every=0", "--set", "train.batch_size=2"]
VQGAN_TINY = ["--set", "autoencoder.arch.ch=8", "--set", "autoencoder.arch.ch_mult=[1,2]"]
VQGAN_TINY += ["--set", "autoencoder.arch.resolution=32", "--set", "autoencoder.arch.n_embed=32"]
VQGAN_TINY += ["--set", "autoencoder.arch.norm_groups=4", "--set", "loss.disc_start=0"]
SEER_TINY = ["--set", "model.frames=3", "--set", "data.frames=3", "--set", "data.image_size=16"]
SEER_TINY += ["--set", "model.unet.block_out_channels=[32,32,64]", "--set", "model.sampler.steps=2"]


# --- processes and files ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.text

    @property
    def one_line_error(self) -> bool:
        """Failed with exactly one `error:` line and no traceback."""
        errors = [line for line in self.err.splitlines() if line.startswith("error:")]
        return self.code != 0 and not self.traceback and len(errors) == 1

    def error_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else f"(exit {self.code}, nothing on stderr)"


class Vpt:
    """Starts `python -m vpt ...` from an empty working directory with this checkout first on the path."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "VPT_BF16": "0",  # fp32 everywhere: the same numbers on any CPU
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }

    def start(self, args: list) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "vpt", *map(str, args)],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: workers can be found after the main one dies
        )

    def run(self, args: list, timeout: float = 600) -> Outcome:
        began = time.monotonic()
        process = self.start(args)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            out, err = process.communicate()
            err += "\n(fault_injection: timed out)"
        return Outcome(process.returncode, out, err, time.monotonic() - began)


def _session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (the group a command started with start_new_session), as `ps` lists them."""
    listing = subprocess.run(["ps", "-s", str(sid), "-o", "pid=,stat="], capture_output=True, text=True).stdout
    return [int(pid) for pid, state in (line.split() for line in listing.splitlines()) if state[0] not in "ZX"]


def _kill_group(pid: int) -> None:
    for member in _session_members(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root (not followed through links) with what would change if it were written."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            kind = "l" if path.is_symlink() else "d" if name in dirs else "f"
            state[str(path.relative_to(root))] = (kind, info.st_size, info.st_mtime_ns, info.st_ino, info.st_mode)
    return state


def _outside_writes(before: dict, after: dict, allowed: list[str]) -> list[str]:
    def inside(rel: str) -> bool:
        return any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in allowed)

    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # a folder's mtime changes when an allowed child appears in it; only its contents count
    return sorted(k for k in changed if not inside(k) and not (k in before and k in after and before[k][0] == "d"))


def _tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of the bytes compared (IGNORED applied); folders included so layout counts."""
    digest = {}
    if not root.exists():
        return digest
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name == ".vpt.lock":
            continue
        if path.is_symlink():
            digest[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            digest[rel] = "dir"
        else:
            digest[rel] = hashlib.sha256(_comparable_bytes(path)).hexdigest()
    return digest


def _comparable_bytes(path: Path) -> bytes:
    if path.suffix == ".mp4":
        from vpt.data.video import read_video

        return read_video(path).tobytes()
    keys = IGNORED["json_keys"].get(path.name)
    if not keys:
        return path.read_bytes()
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return "\n".join(json.dumps({k: v for k, v in r.items() if k not in keys}) for r in rows).encode()
    record = json.loads(path.read_text())
    for key in keys:  # dotted: a key inside nested objects
        *parents, last = key.split(".")
        inner = record
        for parent in parents:
            inner = inner.get(parent, {}) if isinstance(inner, dict) else {}
        if isinstance(inner, dict):
            inner.pop(last, None)
    return json.dumps(record).encode()


def _differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


# --- hostile files ----------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates `marker` (Path.touch): the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_payload(path: Path, marker: Path, fmt: str, wrap: Callable[[object], object] = lambda p: {"w": p}) -> Path:
    """A file that runs the payload when loaded: torch zip, legacy torch, plain pickle, npz/npy object array."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    obj = wrap(Payload(marker))
    if fmt in ("zip", "legacy"):
        buffer = io.BytesIO()  # torch's zip writer takes its record name from the file name: ".metadata" fails
        torch.save(obj, buffer, _use_new_zipfile_serialization=fmt == "zip")
        path.write_bytes(buffer.getvalue())
    elif fmt == "pickle":
        path.write_bytes(pickle.dumps(obj))
    elif fmt == "npy":
        with open(path, "wb") as handle:
            np.save(handle, np.array([Payload(marker), 1], dtype=object), allow_pickle=True)
    elif fmt == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, features=np.array([Payload(marker), 1], dtype=object))
    else:
        raise ValueError(fmt)
    return path


def payload_is_live(path: Path, marker: Path, fmt: str) -> bool:
    """Proof that the crafted file really runs code when loaded without safeguards (in a throwaway process)."""
    loader = {
        "zip": "import torch; torch.load(p, weights_only=False)",
        "legacy": "import torch; torch.load(p, weights_only=False)",
        "pickle": "import pickle; pickle.load(open(p, 'rb'))",
        "npy": "import numpy; numpy.load(p, allow_pickle=True)",
        "npz": "import numpy; [numpy.load(p, allow_pickle=True)[k] for k in numpy.load(p, allow_pickle=True)]",
    }[fmt]
    subprocess.run([sys.executable, "-c", f"import sys; p = sys.argv[1]; {loader}", str(path)], capture_output=True)
    live = marker.exists()
    if live:
        marker.unlink()
    return live


# --- the pass ---------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, category: str, key: str, count: int = 1) -> None:
        self.rows.setdefault(category, {})
        self.rows[category][key] = self.rows[category].get(key, 0) + count

    def fail(self, category: str, what: str) -> None:
        self.failures.append(f"[{category}] {what}")
        print(f"  FAIL [{category}] {what}", flush=True)


class Pass:
    def __init__(self, root: Path, quick: bool, seed: int):
        self.root, self.quick, self.rng = root, quick, random.Random(seed)
        self.cwd = root / "cwd"
        self.data = root / "data"
        self.refs = root / "refs"
        self.work = root / "work"
        for folder in (self.cwd, self.data, self.refs, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        self.vpt = Vpt(self.cwd)
        self.tally = Tally()
        self.case_number = 0

    # helpers -------------------------------------------------------------------------------------------------

    def fresh(self, name: str) -> Path:
        self.case_number += 1
        path = self.work / f"{self.case_number:03d}-{name}"
        return path

    def must(self, args: list) -> Outcome:
        outcome = self.vpt.run(args)
        if outcome.code != 0:
            raise SystemExit(f"setup command failed: vpt {' '.join(map(str, args))}\n{outcome.text[-3000:]}")
        return outcome

    def guarded(self, category: str, allowed: list[Path], action: Callable[[], None]) -> None:
        """Run `action`; count writes outside `allowed` (paths under the work root) and what it left in cwd."""
        before = _snapshot(self.root)
        action()
        rel = [str(p.relative_to(self.root)) for p in allowed]
        outside = _outside_writes(before, _snapshot(self.root), rel)
        self.tally.add(category, "writes outside output", len(outside))
        if outside:
            self.tally.fail(category, f"wrote outside {rel}: {outside[:5]}")

    # setup ---------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        from metrics_helpers import write_tiny_detector

        d = self.data
        began = time.monotonic()
        self.must(["make-data", "shapes", "--out", d / "shapes", "--num-videos", 10, "--frames", 32, "--size", 32])
        self.must(["convert-h5", "--data-dir", d / "shapes", "--out-dir", d / "h5", "--image-size", 32, "--workers", 1])
        self.must(["save-latents", "--ae", FIXTURE_AE, "--data", d / "h5", "--out", d / "lat", "--workers", 0])
        for name, config, extra in [
            ("ae_pvdm", "pvdm_shapes", ["--set", "autoencoder.arch.channels=16", "--set", "autoencoder.arch.depth=1"]),
            ("ae_moso", "moso_shapes", []),
        ]:
            self.must(
                ["train-ae", "--config", CONFIGS / "ae" / f"{config}.yaml", "--data", d / "h5", "--run", d / name]
                + extra
                + ["--set", "train.batch_size=2", "--set", "train.val_every=0", "--max-steps", 2]
            )
            self.must(["save-latents", "--ae", d / name, "--data", d / "h5", "--out", d / f"lat_{name[3:]}"])
        for name, text in (("river", RIVER), ("neuralsde", NEURALSDE), ("latte", LATTE)):
            (d / f"{name}.yaml").write_text(text)
        write_tiny_detector(d / "i3d_torchscript.pt")
        self.sentinel = d / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "precious.txt").write_text("precious\n")
        print(f"setup: {time.monotonic() - began:.0f} s", flush=True)

    def commands(self) -> dict[str, Callable[[Path], list]]:
        """Kill targets: name -> argv for a given output path (each finishes in seconds)."""
        d = self.data

        def train(backend: str, data: Path, config: Path, *extra: str) -> Callable[[Path], list]:
            return lambda out: ["train", backend, "--config", config, "--data", data, "--run", out, *extra]

        return {
            "extract-frames": lambda out: [
                "extract-frames",
                "--video-dir",
                d / "shapes",
                "--out-dir",
                out,
                "--workers",
                2,
            ],
            "convert-h5": lambda out: [
                "convert-h5",
                "--data-dir",
                d / "shapes",
                "--out-dir",
                out,
                "--image-size",
                32,
                "--workers",
                2,
                "--videos-per-shard",
                2,
            ],  # fmt: skip
            "save-latents": lambda out: [
                "save-latents",
                "--ae",
                FIXTURE_AE,
                "--data",
                d / "h5",
                "--out",
                out,
                "--workers",
                2,
                "--batch-size",
                16,
            ],  # fmt: skip
            "train-ae": lambda out: [
                "train-ae",
                "--config",
                CONFIGS / "ae" / "shapes.yaml",
                "--data",
                d / "h5",
                "--run",
                out,
                "--max-steps",
                6,
                *VQGAN_TINY,
                *TRAIN_TINY,
            ],  # fmt: skip
            "train river": train("river", d / "lat", d / "river.yaml"),
            "train neuralsde": train("neuralsde", d / "lat", d / "neuralsde.yaml"),
            "train latte": train("latte", d / "lat", d / "latte.yaml"),
            "train seer": train(
                "seer", d / "shapes", CONFIGS / "seer" / "tiny.yaml", "--max-steps", "4", *SEER_TINY, *TRAIN_TINY
            ),
            "train pvdm": train(
                "pvdm",
                d / "lat_pvdm",
                CONFIGS / "pvdm" / "shapes.yaml",
                "--max-steps",
                "4",
                *TRAIN_TINY,
                "--set",
                "model.steps=2",
                "--set",
                "train.ema_every=1",
            ),  # fmt: skip
            "train rsvp": train(
                "rsvp",
                d / "lat_moso",
                CONFIGS / "pvdm" / "rsvp_m_shapes.yaml",
                "--max-steps",
                "4",
                *TRAIN_TINY,
                "--set",
                "data.frames=1",
                "--set",
                "model.steps=2",
            ),  # fmt: skip
            "eval-fvd": lambda out: [
                "eval-fvd",
                "--run",
                self.refs / "train river",
                "--data",
                d / "h5",
                "--split",
                "train",
                "--max-videos",
                3,
                "--pred-frames",
                8,
                "--batch-size",
                1,
                "--i3d",
                d / "i3d_torchscript.pt",
                "--out",
                out / "metrics.json",
            ],  # fmt: skip
        }

    def references(self) -> dict[str, tuple[Path, float]]:
        refs = {}
        for name, argv in self.commands().items():
            out = self.refs / name
            outcome = self.must(argv(out))
            refs[name] = (out, outcome.seconds)
            print(f"reference {name}: {outcome.seconds:.1f} s", flush=True)
        return refs

    # kill -9 --------------------------------------------------------------------------------------------------

    def kills(self, refs: dict[str, tuple[Path, float]], per_command: int) -> None:
        for name, argv in self.commands().items():
            reference, seconds = refs[name]
            expected = _tree_digest(reference)
            for _ in range(per_command):
                out = self.fresh(f"kill-{name.replace(' ', '-')}")
                delay = self.rng.uniform(0, seconds)
                self.guarded("kill -9", [out], lambda: self._kill_and_rerun(name, argv(out), out, delay, expected))

    def _kill_and_rerun(self, name: str, args: list, out: Path, delay: float, expected: dict) -> None:
        process = self.vpt.start(args)
        time.sleep(delay)
        finished_first = process.poll() is not None
        if not finished_first:
            os.kill(process.pid, signal.SIGKILL)
        process.communicate()
        deadline = time.monotonic() + 1.0
        while _session_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = _session_members(process.pid)
        self.tally.add("kill -9", "kills")
        self.tally.add("kill -9", "finished before the kill", int(finished_first))
        self.tally.add("kill -9", "workers alive 1 s after", len(survivors))
        if survivors:
            self.tally.fail("kill -9", f"{name}: {len(survivors)} worker(s) outlived the kill by 1 s")
            _kill_group(process.pid)
        again = self.vpt.run(args)
        if again.code != 0 or again.traceback:
            self.tally.add("kill -9", "rerun failed")
            self.tally.fail("kill -9", f"{name} killed at {delay:.2f} s: rerun exit {again.code}: {again.error_line()}")
            return
        different = _differences(expected, _tree_digest(out))
        self.tally.add("kill -9", "resumed identical" if not different else "resumed different")
        if different:
            self.tally.fail("kill -9", f"{name} killed at {delay:.2f} s: differs from reference in {different[:6]}")

    # Ctrl-C ---------------------------------------------------------------------------------------------------

    def ctrl_c(self, refs: dict[str, tuple[Path, float]]) -> None:
        for name in ("train river", "train-ae"):
            argv = self.commands()[name]
            expected = _tree_digest(refs[name][0])
            out = self.fresh(f"ctrl-c-{name.replace(' ', '-')}")
            self.guarded("ctrl-c", [out], lambda: self._interrupt(name, argv(out), out, expected))

    def _interrupt(self, name: str, args: list, out: Path, expected: dict) -> None:
        process = self.vpt.start(args)
        metrics = out / "metrics.jsonl"
        while process.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            time.sleep(0.01)  # interrupt inside the training loop, after its first logged step
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate()
        outcome = Outcome(process.returncode, stdout, stderr, 0)
        checkpoints = sorted((out / "checkpoints").glob("step_*"))
        self.tally.add("ctrl-c", "interrupts")
        ok_exit = outcome.code == 130 and not outcome.traceback
        self.tally.add("ctrl-c", "exit 130 without traceback", int(ok_exit))
        self.tally.add("ctrl-c", "checkpoint kept", int(bool(checkpoints)))
        if not ok_exit or not checkpoints:
            self.tally.fail("ctrl-c", f"{name}: exit {outcome.code}, checkpoints {[p.name for p in checkpoints]}")
        again = self.vpt.run(args)
        different = _differences(expected, _tree_digest(out)) if again.code == 0 else ["(rerun failed)"]
        self.tally.add("ctrl-c", "resumed identical" if not different else "resumed different")
        if different:
            self.tally.fail("ctrl-c", f"{name}: resumed run differs in {different[:6]} {again.error_line()}")

    # concurrency ----------------------------------------------------------------------------------------------

    def concurrency(self, refs: dict[str, tuple[Path, float]]) -> None:
        d = self.data
        targets = dict(self.commands())
        make_data = ["make-data", "shapes", "--num-videos", 60, "--frames", 16, "--size", 32, "--workers", 1]
        targets["make-data"] = lambda out: [*make_data, "--out", out]
        refs = dict(refs)
        refs["make-data"] = (self.refs / "make-data", 0.0)
        self.must(targets["make-data"](self.refs / "make-data"))
        if self.quick:
            targets = {k: v for k, v in targets.items() if not k.startswith("train ") or k == "train river"}
        for name, argv in targets.items():
            out = self.fresh(f"twice-{name.replace(' ', '-')}")
            lock_at = out / "metrics.json" if name == "eval-fvd" else out
            self.guarded("concurrency", [out], lambda: self._twice(name, argv(out), out, lock_at, refs[name][0]))
        del d

    def _twice(self, name: str, args: list, out: Path, lock_at: Path, reference: Path) -> None:
        first = self.vpt.start(args)
        lock = (lock_at.parent if lock_at.suffix else lock_at) / ".vpt.lock"
        while first.poll() is None and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.01)
        second = self.vpt.run(args)
        overlapped = first.poll() is None
        stdout, stderr = first.communicate()
        first_outcome = Outcome(first.returncode, stdout, stderr, 0)
        self.tally.add("concurrency", "pairs")
        if not overlapped:
            self.tally.add("concurrency", "first ended before the second checked (not counted)")
            return
        refused = second.one_line_error and "another vpt process" in second.err
        intact = first_outcome.code == 0 and not _differences(_tree_digest(reference), _tree_digest(out))
        self.tally.add("concurrency", "second refused in one line", int(refused))
        self.tally.add("concurrency", "first finished intact", int(intact))
        if not refused or not intact:
            self.tally.fail(
                "concurrency",
                f"{name}: second exit {second.code} '{second.error_line()}'; first exit {first_outcome.code}",
            )

    # crafted files --------------------------------------------------------------------------------------------

    def crafted(self, refs: dict[str, tuple[Path, float]]) -> None:
        d = self.data
        formats = ["zip", "legacy", "pickle"]
        river_ref, ae_ref, eval_ref = refs["train river"][0], refs["train-ae"][0], refs["eval-fvd"][0]
        state = lambda w: {"state_dict": w}  # noqa: E731  (Lightning-style checkpoint)

        def copy_run(source: Path, out: Path) -> Path:
            shutil.copytree(source, out, symlinks=True)
            return out

        cases: list[tuple[str, list[str], Callable]] = []

        def case(name: str, fmts: list[str]):
            def register(build):
                cases.append((name, fmts, build))
                return build

            return register

        # Each builder gets (work folder, marker, format) and returns (argv, crafted file, allowed outputs).
        @case("sample --checkpoint", formats)
        def _(w, m, f):
            bad = write_payload(w / "model.pth", m, f)
            return ["sample", "--checkpoint", bad, "--backend", "river", "--out", w / "p.png"], bad, [w]

        @case("eval-fvd --checkpoint", formats)
        def _(w, m, f):
            bad = write_payload(w / "model.pth", m, f)
            argv = ["eval-fvd", "--checkpoint", bad, "--backend", "river", "--data", d / "h5", "--out", w / "m.json"]
            return argv, bad, [w]

        @case("save-latents --ae vqvae.ckpt", formats)
        def _(w, m, f):
            bad = write_payload(w / "vqvae.ckpt", m, f, state)
            return ["save-latents", "--ae", bad, "--data", d / "h5", "--out", w / "lat"], bad, [w]

        @case("save-latents --ae model_last.pth (PVDM)", formats)
        def _(w, m, f):
            bad = write_payload(w / "model_last.pth", m, f)
            return ["save-latents", "--ae", bad, "--data", d / "h5", "--out", w / "lat"], bad, [w]

        @case("train-ae --init-from", formats)
        def _(w, m, f):
            bad = write_payload(w / "vqvae.pth", m, f, state)
            argv = self.commands()["train-ae"](w / "run") + ["--init-from", bad]
            return argv, bad, [w]

        @case("train --ae", formats)
        def _(w, m, f):
            bad = write_payload(w / "vqvae.ckpt", m, f, state)
            return self.commands()["train river"](w / "run") + ["--ae", bad], bad, [w]

        @case("run checkpoint rng_state_0.pt (resume)", formats)
        def _(w, m, f):
            run = copy_run(river_ref, w / "run")
            bad = write_payload(run / "checkpoints" / "step_000006" / "rng_state_0.pt", m, f, lambda p: [p])
            return self.commands()["train river"](run) + ["--max-steps", "8"], bad, [w]

        @case("run checkpoint optimizer.bin (resume)", formats)
        def _(w, m, f):
            run = copy_run(river_ref, w / "run")
            bad = write_payload(run / "checkpoints" / "step_000006" / "training_state" / "optimizer.bin", m, f)
            return self.commands()["train river"](run) + ["--max-steps", "8"], bad, [w]

        @case("run checkpoint trainer_state.json (resume)", formats)
        def _(w, m, f):
            run = copy_run(river_ref, w / "run")
            bad = write_payload(run / "checkpoints" / "step_000006" / "trainer_state.json", m, f)
            return self.commands()["train river"](run) + ["--max-steps", "8"], bad, [w]

        @case("DCP .metadata (resume)", formats)
        def _(w, m, f):
            run = copy_run(river_ref, w / "run")
            folder = run / "checkpoints" / "step_000006" / "training_state" / "pytorch_model_fsdp_0"
            bad = write_payload(folder / ".metadata", m, f)
            return self.commands()["train river"](run) + ["--max-steps", "8"], bad, [w]

        @case("autoencoder run checkpoint (save-latents)", formats)
        def _(w, m, f):
            run = copy_run(ae_ref, w / "ae")
            bad = write_payload(run / "checkpoints" / "step_000006" / "model.safetensors", m, f)
            return ["save-latents", "--ae", run, "--data", d / "h5", "--out", w / "lat"], bad, [w]

        @case("diffusers AutoencoderKL folder .bin", formats)
        def _(w, m, f):
            folder = w / "vae"
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(
                json.dumps(
                    {
                        "_class_name": "AutoencoderKL",
                        "block_out_channels": [8],
                        "latent_channels": 4,
                        "down_block_types": ["DownEncoderBlock2D"],
                        "up_block_types": ["UpDecoderBlock2D"],
                        "norm_num_groups": 8,
                        "layers_per_block": 1,
                    }
                )  # fmt: skip
            )
            bad = write_payload(folder / "diffusion_pytorch_model.bin", m, f)
            return ["save-latents", "--ae", folder, "--data", d / "h5", "--out", w / "lat"], bad, [w]

        @case("Seer Stable Diffusion folder .bin", formats)
        def _(w, m, f):
            sd = w / "sd"
            for part in ("vae", "unet", "text_encoder"):
                write_payload(sd / part / "diffusion_pytorch_model.bin", m, f)
            (sd / "tokenizer").mkdir()
            bad = sd / "vae" / "diffusion_pytorch_model.bin"
            argv = self.commands()["train seer"](w / "run")
            return argv + ["--set", "model.vae=pretrained", "--set", f"model.pretrained={sd}"], bad, [w]

        @case("eval cache .npz with an object array", ["npz"])
        def _(w, m, f):
            out = copy_run(eval_ref, w / "eval")
            (out / "metrics.json").unlink()
            batch = sorted(out.glob(".vpt-eval-cache/run-*/batch-00000000.npz"))[0]  # what a rerun reads first
            write_payload(batch, m, f)
            argv = self.commands()["eval-fvd"](out)
            return argv, batch, [w]

        @case("save-latents partial .npy with an object array", ["npy"])
        def _(w, m, f):
            out = copy_run(refs["save-latents"][0], w / "lat")
            (out / "train" / "shard_0001.hdf5").unlink()
            bad = write_payload(out / ".partial" / "train" / "shard_0001" / "0.npy", m, f)
            return self.commands()["save-latents"](out), bad, [w]

        @case("latent shards: latents.json from another encoder, object .npy", ["npy"])
        def _(w, m, f):
            out = copy_run(refs["save-latents"][0], w / "lat")
            bad = write_payload(out / "train" / "shard_0001.hdf5", m, f)
            return self.commands()["train river"](w / "run")[:-4] + ["--data", out, "--run", w / "run"], bad, [w]

        for number, (name, fmts, build) in enumerate(cases):
            # the quick pass takes one format per reader, in turn, so every format still meets several readers
            for fmt in [fmts[number % len(fmts)]] if self.quick else fmts:
                work = self.fresh("crafted")
                work.mkdir()
                marker = self.root / "MARKER-code-ran"
                argv, bad, allowed = build(work, marker, fmt)
                live_copy = work / f"live-check.{fmt}"
                shutil.copyfile(bad, live_copy)
                live = payload_is_live(live_copy, marker, fmt)
                live_copy.unlink()
                holder = {}
                self.guarded("crafted", allowed, lambda: holder.update(outcome=self.vpt.run(argv)))
                outcome = holder["outcome"]
                ran = marker.exists()
                if ran:
                    marker.unlink()
                reached = bad.name in outcome.err or str(bad) in outcome.err
                self.tally.add("crafted", "files")
                self.tally.add("crafted", "payload live (proved by an unguarded load)", int(live))
                self.tally.add("crafted", "reader reached (error names the file)", int(reached))
                self.tally.add("crafted", "code executed", int(ran))
                self.tally.add("crafted", "tracebacks", int(outcome.traceback))
                self.tally.add("crafted", "clean one-line refusal", int(outcome.one_line_error))
                self.tally.add("crafted", "succeeded without reading it", int(outcome.code == 0))
                if ran or outcome.traceback or not (outcome.one_line_error or outcome.code == 0) or not live:
                    self.tally.fail("crafted", f"{name} ({fmt}): live={live} ran={ran} '{outcome.error_line()}'")
                elif not reached:
                    print(f"  note: {name} ({fmt}) refused before the reader: {outcome.error_line()}", flush=True)

    # bad input -------------------------------------------------------------------------------------------------

    def bad_input(self, refs: dict[str, tuple[Path, float]]) -> None:
        d = self.data
        commands = self.commands()
        river_ref, h5_ref, frames_ref = refs["train river"][0], refs["convert-h5"][0], refs["extract-frames"][0]

        def copy(source: Path, out: Path) -> Path:
            shutil.copytree(source, out, symlinks=True)
            return out

        def videos_with(w: Path, name: str, data: bytes) -> Path:
            videos = copy(d / "shapes", w / "videos")
            (videos / "train" / name).write_bytes(data)
            return videos

        first_video = sorted((d / "shapes" / "train").glob("*.mp4"))[0]
        cases: list[tuple[str, Callable[[Path], tuple[list, list[Path], list[Path]]]]] = []

        def case(name: str):
            def register(build):
                cases.append((name, build))
                return build

            return register

        # Each builder returns (argv, allowed outputs, finished outputs that must not change).
        @case("extract-frames: corrupt video")
        def _(w):
            videos = videos_with(w, "zz_corrupt.mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
            return ["extract-frames", "--video-dir", videos, "--out-dir", w / "out", "--workers", 1], [w], []

        @case("extract-frames: truncated video")
        def _(w):
            videos = videos_with(w, "zz_cut.mp4", first_video.read_bytes()[: first_video.stat().st_size // 2])
            return ["extract-frames", "--video-dir", videos, "--out-dir", w / "out", "--workers", 1], [w], []

        @case("convert-h5: truncated video into a finished output")
        def _(w):
            out = copy(h5_ref, w / "h5")
            videos = videos_with(w, "zz_cut.mp4", first_video.read_bytes()[:4000])
            argv = ["convert-h5", "--data-dir", videos, "--out-dir", out, "--image-size", 32, "--workers", 1]
            return argv + ["--videos-per-shard", 2], [w], [out / "train" / "shard_0001.hdf5"]

        @case("convert-h5: truncated PNG frame")
        def _(w):
            frames = copy(frames_ref, w / "frames")
            png = sorted((frames / "train").rglob("00003.png"))[0]
            png.write_bytes(png.read_bytes()[:60])
            return ["convert-h5", "--data-dir", frames, "--out-dir", w / "h5", "--image-size", 32], [w], []

        @case("convert-h5: frame of another size in a folder")
        def _(w):
            from PIL import Image

            frames = copy(frames_ref, w / "frames")
            png = sorted((frames / "train").rglob("00003.png"))[0]
            Image.new("RGB", (20, 12)).save(png)
            return ["convert-h5", "--data-dir", frames, "--out-dir", w / "h5", "--image-size", 0], [w], []

        @case("save-latents: truncated HDF5 shard")
        def _(w):
            h5 = copy(d / "h5", w / "h5")
            shard = h5 / "train" / "shard_0001.hdf5"
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
            return ["save-latents", "--ae", FIXTURE_AE, "--data", h5, "--out", w / "lat", "--workers", 0], [w], []

        @case("train: truncated latent shard")
        def _(w):
            lat = copy(d / "lat", w / "lat")
            shard = lat / "train" / "shard_0001.hdf5"
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
            return ["train", "river", "--config", d / "river.yaml", "--data", lat, "--run", w / "run"], [w], []

        @case("train: HDF5 missing its frames dataset (missing keys)")
        def _(w):
            import h5py

            lat = copy(d / "lat", w / "lat")
            with h5py.File(lat / "train" / "shard_0001.hdf5", "a") as handle:
                for key in list(handle.keys())[:1]:
                    del handle[key]
            return ["train", "river", "--config", d / "river.yaml", "--data", lat, "--run", w / "run"], [w], []

        @case("train: latents of the wrong channel count (wrong shapes)")
        def _(w):
            (w / "c.yaml").write_text(RIVER.replace("latent_channels: 4", "latent_channels: 8"))
            return ["train", "river", "--config", w / "c.yaml", "--data", d / "lat", "--run", w / "run"], [w], []

        @case("train: frames data to a latent backend's config (wrong shapes)")
        def _(w):
            return ["train", "river", "--config", d / "river.yaml", "--data", d / "h5", "--run", w / "run"], [w], []

        @case("train: unknown config key")
        def _(w):
            (w / "c.yaml").write_text(RIVER + "trian: {max_steps: 3}\n")
            return ["train", "river", "--config", w / "c.yaml", "--data", d / "lat", "--run", w / "run"], [w], []

        @case("train: unknown --set key on a finished run")
        def _(w):
            run = copy(river_ref, w / "run")
            return commands["train river"](run) + ["--set", "model.bogus=1"], [w], [run / "checkpoints"]

        @case("train: missing config file")
        def _(w):
            return ["train", "river", "--config", w / "nope.yaml", "--data", d / "lat", "--run", w / "run"], [w], []

        @case("train: YAML that is not a mapping")
        def _(w):
            (w / "c.yaml").write_text("- a\n- b\n")
            return ["train", "river", "--config", w / "c.yaml", "--data", d / "lat", "--run", w / "run"], [w], []

        @case("train: YAML with a python tag")
        def _(w):
            (w / "c.yaml").write_text(f"backend: !!python/object/apply:os.system ['touch {self.root}/MARKER-yaml']\n")
            return ["train", "river", "--config", w / "c.yaml", "--data", d / "lat", "--run", w / "run"], [w], []

        @case("train: missing data")
        def _(w):
            return ["train", "river", "--config", d / "river.yaml", "--data", w / "nope", "--run", w / "run"], [w], []

        @case("train: --run is a file")
        def _(w):
            (w / "run").write_text("a file")
            return commands["train river"](w / "run"), [], [w / "run"]

        @case("train: run checkpoint with model.safetensors truncated")
        def _(w):
            run = copy(river_ref, w / "run")
            weights = run / "checkpoints" / "step_000006" / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
            return commands["train river"](run) + ["--max-steps", "8"], [w], [run / "checkpoints" / "step_000004"]

        @case("train: run's latest names a missing step")
        def _(w):
            run = copy(river_ref, w / "run")
            (run / "checkpoints" / "latest").write_text("step_000099\n")
            return commands["train river"](run) + ["--max-steps", "8"], [w], [run / "checkpoints" / "step_000006"]

        @case("train: run's latest is a symlink outside the run")
        def _(w):
            run = copy(river_ref, w / "run")
            (run / "checkpoints" / "latest").unlink()
            (run / "checkpoints" / "latest").symlink_to(self.sentinel / "precious.txt")
            return commands["train river"](run) + ["--max-steps", "8"], [w], [run / "checkpoints" / "step_000006"]

        @case("train: run's config.yaml is a symlink outside the run")
        def _(w):
            run = copy(river_ref, w / "run")
            (run / "config.yaml").unlink()
            (run / "config.yaml").symlink_to(self.sentinel / "precious.txt")
            return commands["train river"](run) + ["--max-steps", "8"], [w], [run / "checkpoints"]

        @case("train: run's metrics.jsonl is a symlink outside the run")
        def _(w):
            run = copy(river_ref, w / "run")
            (run / "metrics.jsonl").unlink()
            (run / "metrics.jsonl").symlink_to(self.sentinel / "precious.txt")
            return commands["train river"](run) + ["--max-steps", "8"], [w], [run / "checkpoints" / "step_000006"]

        @case("train: read-only run folder")
        def _(w):
            run = copy(river_ref, w / "run")
            for path in [run, *run.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            return commands["train river"](run) + ["--max-steps", "8"], [w], [run / "checkpoints"]

        @case("convert-h5: read-only output folder")
        def _(w):
            out = w / "h5"
            out.mkdir()
            out.chmod(0o555)
            return ["convert-h5", "--data-dir", d / "shapes", "--out-dir", out, "--image-size", 32], [w], []

        @case("extract-frames: an unfinished video folder is a symlink outside")
        def _(w):
            out = w / "out"
            (out / "train").mkdir(parents=True)
            (out / "train" / first_video.stem).symlink_to(self.sentinel)
            return ["extract-frames", "--video-dir", d / "shapes", "--out-dir", out, "--workers", 1], [w], []

        @case("save-latents: output's latents.json is a symlink outside")
        def _(w):
            out = w / "lat"
            out.mkdir()
            (out / "latents.json").symlink_to(self.sentinel / "precious.txt")
            return ["save-latents", "--ae", FIXTURE_AE, "--data", d / "h5", "--out", out, "--workers", 0], [w], []

        @case("convert-h5: shard path is a symlink outside")
        def _(w):
            out = w / "h5"
            (out / "train").mkdir(parents=True)
            (out / "train" / "shard_0001.hdf5").symlink_to(self.sentinel / "precious.txt")
            return ["convert-h5", "--data-dir", d / "shapes", "--out-dir", out, "--image-size", 32], [w], []

        @case("eval-fvd: --out is a symlink outside")
        def _(w):
            w.mkdir(exist_ok=True)
            (w / "m.json").symlink_to(self.sentinel / "precious.txt")
            return commands["eval-fvd"](w)[:-1] + [w / "m.json"], [w], []

        @case("sample: --image is truncated")
        def _(w):
            png = sorted((frames_ref / "train").rglob("00000.png"))[0]
            cut = w / "cut.png"
            cut.write_bytes(png.read_bytes()[:50])
            return ["sample", "--run", river_ref, "--image", cut, "--out", w / "p.png"], [w], []

        @case("sample: --video is not a video")
        def _(w):
            (w / "v.mp4").write_bytes(b"RIFF" + os.urandom(500))
            return ["sample", "--run", river_ref, "--video", w / "v.mp4", "--out", w / "p.png"], [w], []

        @case("sample: --option unknown")
        def _(w):
            return ["sample", "--run", river_ref, "--video", first_video, "--option", "bogus=1",
                    "--out", w / "p.png"], [w], []  # fmt: skip

        @case("sample: --out with an unknown extension")
        def _(w):
            return ["sample", "--run", river_ref, "--video", first_video, "--out", w / "p.xyz"], [w], []

        @case("sample: --run missing")
        def _(w):
            return ["sample", "--run", w / "nope", "--video", first_video, "--out", w / "p.png"], [w], []

        @case("eval-fvd --paired: --fake holds fewer videos than --real")
        def _(w):
            return ["eval-fvd", "--real", d / "shapes" / "train", "--fake", d / "shapes" / "val", "--frames", 9,
                    "--i3d", d / "i3d_torchscript.pt", "--out", w / "m.json", "--no-fvd", "--paired"], [w], []  # fmt: skip

        @case("eval-fvd: --i3d is not a detector")
        def _(w):
            (w / "i3d.pt").write_bytes(b"garbage" * 100)
            return ["eval-fvd", "--real", d / "shapes", "--fake", d / "shapes", "--frames", 9,
                    "--i3d", w / "i3d.pt", "--out", w / "m.json"], [w], []  # fmt: skip

        @case("save-latents: --ae is a random file")
        def _(w):
            (w / "ae.ckpt").write_bytes(os.urandom(2000))
            return ["save-latents", "--ae", w / "ae.ckpt", "--data", d / "h5", "--out", w / "lat"], [w], []

        @case("save-latents: --data holds latents, not frames")
        def _(w):
            return ["save-latents", "--ae", FIXTURE_AE, "--data", d / "lat", "--out", w / "lat"], [w], []

        @case("make-data: --out is an existing file")
        def _(w):
            (w / "f").write_text("keep")
            return ["make-data", "shapes", "--out", w / "f", "--num-videos", 2], [], [w / "f"]

        @case("extract-frames: --video-dir missing")
        def _(w):
            return ["extract-frames", "--video-dir", w / "nope", "--out-dir", w / "out"], [w], []

        @case("convert-h5: tampered .vpt-convert.json on a finished output")
        def _(w):
            out = copy(h5_ref, w / "h5")
            (out / ".vpt-convert.json").write_text('{"settings": 5, "shards": []}')
            argv = commands["convert-h5"](out)
            return argv, [w], [out / "train"]

        @case("save-latents: tampered latents.json on a finished output")
        def _(w):
            out = copy(refs["save-latents"][0], w / "lat")
            (out / "latents.json").write_text('{"shards": "x"}')
            return commands["save-latents"](out), [w], [out / "train"]

        @case("train: tampered trainer_state.json on resume")
        def _(w):
            run = copy(river_ref, w / "run")
            (run / "checkpoints" / "step_000006" / "trainer_state.json").write_text('{"step": "six"}')
            return commands["train river"](run) + ["--max-steps", "8"], [w], [run / "checkpoints" / "step_000004"]

        @case("train: --set train.lr=-1")
        def _(w):
            return commands["train river"](w / "run") + ["--set", "train.lr=-1"], [w], []

        @case("train: --set with no '='")
        def _(w):
            return commands["train river"](w / "run") + ["--set", "train.lr"], [w], []

        @case("train: unknown backend")
        def _(w):
            return ["train", "bogus", "--config", d / "river.yaml", "--data", d / "lat", "--run", w / "run"], [w], []

        for name, build in cases:
            if "read-only" in name and os.geteuid() == 0:
                self.tally.add("bad input", "skipped: read-only cases as root (root ignores permissions)")
                continue
            work = self.fresh("bad")
            work.mkdir()
            argv, allowed, finished = build(work)
            before = {str(p): _tree_digest(p) if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in finished if p.exists()}  # fmt: skip
            sentinel_before = _tree_digest(self.sentinel)
            holder = {}
            self.guarded("bad input", allowed, lambda: holder.update(outcome=self.vpt.run(argv)))
            outcome = holder["outcome"]
            after = {str(p): _tree_digest(p) if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in finished if p.exists()}  # fmt: skip
            lost = sorted(k for k in before if before[k] != after.get(k))
            if _tree_digest(self.sentinel) != sentinel_before:
                lost.append(str(self.sentinel))
            self.tally.add("bad input", "cases")
            self.tally.add("bad input", "clean one-line error", int(outcome.one_line_error))
            self.tally.add("bad input", "succeeded", int(outcome.code == 0))
            self.tally.add("bad input", "tracebacks", int(outcome.traceback))
            self.tally.add("bad input", "finished outputs lost or changed", len(lost))
            marker = self.root / "MARKER-yaml"
            self.tally.add("bad input", "code executed", int(marker.exists()))
            print(f"  {name}: exit {outcome.code}: {outcome.error_line()[:150]}", flush=True)
            if outcome.traceback or lost or marker.exists() or (outcome.code != 0 and not outcome.one_line_error):
                self.tally.fail("bad input", f"{name}: exit {outcome.code} lost={lost} '{outcome.error_line()}'")
                if outcome.traceback:
                    print(outcome.err[-2500:], flush=True)
            if outcome.code == 0:
                print(f"  note: {name} succeeded (check it is a documented success)", flush=True)
            for path in [work, *work.rglob("*")]:  # undo the read-only cases so the folder can be removed
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder (emptied first) and JSON summary")
    parser.add_argument("--quick", action="store_true", help="fewer kills and formats: ~10 minutes on 2 cores")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--kills", type=int, default=None, help="kills per command (default: 1 quick, 4 full)")
    parser.add_argument(
        "--only", nargs="*", default=None, help="categories to run: kill ctrl-c concurrency crafted bad"
    )
    args = parser.parse_args()
    from common import machine

    root = args.out.resolve() / "work-root"
    shutil.rmtree(root, ignore_errors=True)
    began = time.monotonic()
    fault = Pass(root, args.quick, args.seed)
    only = set(args.only or ["kill", "ctrl-c", "concurrency", "crafted", "bad"])
    fault.setup()
    refs = fault.references()
    kills = args.kills if args.kills is not None else (1 if args.quick else 4)
    timings = {}
    for name, step in [
        ("kill", lambda: fault.kills(refs, kills)),
        ("ctrl-c", lambda: fault.ctrl_c(refs)),
        ("concurrency", lambda: fault.concurrency(refs)),
        ("crafted", lambda: fault.crafted(refs)),
        ("bad", lambda: fault.bad_input(refs)),
    ]:
        if name in only:
            start = time.monotonic()
            print(f"== {name}", flush=True)
            step()
            timings[name] = round(time.monotonic() - start, 1)
    seconds = time.monotonic() - began
    summary = {
        "machine": f"{machine()}; {os.cpu_count()} CPUs visible; commands with OMP_NUM_THREADS=1",
        "mode": "quick" if args.quick else "full",
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "seconds_per_category": timings,
        "ignored_in_comparisons": IGNORED,
        "counts": fault.tally.rows,
        "failures": fault.tally.failures,
    }
    (args.out / "fault_injection.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{summary['machine']}; {summary['mode']} pass, {seconds / 60:.1f} min")
    print(f"{'category':<12} {'count':>6}  what")
    for category, counts in fault.tally.rows.items():
        for key, value in counts.items():
            print(f"{category:<12} {value:>6}  {key}")
    print(f"{len(fault.tally.failures)} failure(s)")
    for failure in fault.tally.failures:
        print(" ", failure)


if __name__ == "__main__":
    main()
