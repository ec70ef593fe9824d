"""Where videos come from: frame folders, video files, splits, captions, and the SSv2 / Bridge / Epic /
UCF-101 / SkyTimelapse trees.

A *source* is anything with `__len__`, `num_frames(i)`, `read(i, frame_indices) -> uint8 (T, H, W, 3)`,
`text(i)`, `name(i)` and `has_text`; `vpt.data.h5.VideoH5` is one, the classes here are the others.
Sources return frames at their stored size; resizing is the dataset's job (one place, one policy).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vpt.console import warn
from vpt.data.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, read_frames, read_image, video_info
from vpt.errors import UsageError

SPLITS = ("train", "val", "test")
SPLIT_DIR_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "valid"), "test": ("test", "testing")}
CAPTION_FILES = ("captions.json", "captions.csv")
_CAPTION_COLUMNS = ("caption", "text", "instruction", "label", "narration", "prompt")


def natural_key(text: str) -> list:
    """Sort key that orders 'img_2' before 'img_10' (frame files are rarely zero-padded upstream)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


# --- discovery ------------------------------------------------------------------------------------


def _is_image(name: str, ext: str | None) -> bool:
    suffix = os.path.splitext(name)[1]
    return suffix == f".{ext}" if ext else suffix.lower() in IMAGE_EXTENSIONS


def frame_files(folder: str | os.PathLike, ext: str | None = None) -> list[Path]:
    """Image files of a frame folder in natural order (`ext` matches case-sensitively, as upstream)."""
    folder = Path(folder)
    names = [
        e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".") and _is_image(e.name, ext)
    ]
    return [folder / n for n in sorted(names, key=natural_key)]


def discover_videos(directory: str | os.PathLike, ext: str | None = None) -> list[tuple[str, Path, str]]:
    """Every video under `directory`: (relative posix name, path, "video" | "frames"), sorted by name.

    A video is either a file with a video extension or a folder holding image files (`ext` to
    restrict them). Hidden entries (temp folders of interrupted runs, captions) are skipped. Symbolic
    links to folders and files are followed (they are only read), except a link back to a folder
    above it, which would loop.
    """
    directory = Path(directory)
    found: list[tuple[str, Path, str]] = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _links_upwards(os.path.join(root, d)))
        rel_root = Path(root).relative_to(directory)
        visible = [f for f in files if not f.startswith(".")]
        if any(_is_image(f, ext) for f in visible):
            found.append((rel_root.as_posix(), Path(root), "frames"))
        for name in visible:
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(((rel_root / name).as_posix(), Path(root) / name, "video"))
    return sorted(found, key=lambda item: natural_key(item[0]))


def _links_upwards(path: str) -> bool:
    """True when `path` is a symbolic link to a folder that holds it (following it would never end)."""
    if not os.path.islink(path):
        return False
    target, parent = os.path.realpath(path), os.path.realpath(os.path.dirname(path))
    if parent == target or parent.startswith(target.rstrip(os.sep) + os.sep):
        warn(f"{path} links to {target}, a folder above it: skipped")
        return True
    return False


def split_dirs(root: str | os.PathLike) -> dict[str, Path]:
    """The train/val/test folders present under `root` (accepting validation/valid/testing)."""
    root = Path(root)
    present = {}
    for split, names in SPLIT_DIR_NAMES.items():
        for name in names:
            if (root / name).is_dir():
                present[split] = root / name
                break
    return present


def parse_splits(text: str | None) -> tuple[float, float, float] | None:
    """'0.9,0.05,0.05' -> fractions of train/val/test (must sum to 1)."""
    if text is None:
        return None
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"--splits {text!r}: expected three numbers like 0.9,0.05,0.05") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise UsageError(f"--splits {text!r}: expected three non-negative fractions for train,val,test summing to 1")
    return parts  # type: ignore[return-value]


def check_split_sizes(counts: dict[str, int], fractions: Sequence[float] | None = None) -> None:
    """Say in one line, before converting, when a split came out empty or much smaller than asked.

    With `fractions` (`--splits`): no train video although a train share was asked is refused (nothing
    could train on the output); a split with fewer than half its expected share is a warning. Without
    (split folders): a missing or empty train split is a warning (a test-only tree is legitimate)."""
    total = sum(counts.values())
    if fractions is None:
        if not counts.get("train"):
            warn(
                f"no train videos ({', '.join(f'{s} {n}' for s, n in counts.items())}): `vpt train` needs a train split"
            )
        return
    asked = ",".join(f"{f:g}" for f in fractions)
    got = ", ".join(f"{split} {counts.get(split, 0)}" for split in SPLITS)
    if fractions[0] > 0 and counts.get("train", 0) == 0:
        raise UsageError(
            f"--splits {asked} put none of the {total} videos into train ({got}; each name's hash picks its "
            "split, so few videos split unevenly): add videos or raise the train share, e.g. --splits 1,0,0"
        )
    small = [s for s, f in zip(SPLITS, fractions) if f > 0 and counts.get(s, 0) < f * total / 2]
    if small:
        warn(f"--splits {asked} on {total} videos gave {got}: {'/'.join(small)} much smaller than asked")


def assign_split(name: str, fractions: Sequence[float]) -> str:
    """Deterministic split of one video from a hash of its relative name.

    A hash (not a shuffle of the list) keeps every video's split fixed when files are added later, so
    re-running a command on a grown folder resumes instead of reshuffling.
    """
    position = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2**64
    total = 0.0
    for split, fraction in zip(SPLITS, fractions):
        total += fraction
        if position < total:
            return split
    return next(s for s, f in zip(reversed(SPLITS), reversed(fractions)) if f > 0)


# --- captions -------------------------------------------------------------------------------------


def _strip_media_ext(key: str) -> str:
    base, suffix = os.path.splitext(key)
    return base if suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS else key


def _read_caption_csv(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    text_col = next((header.index(c) for c in _CAPTION_COLUMNS if c in header), None)
    if text_col is None:  # headerless: key, text
        return {row[0]: row[1] for row in rows if len(row) >= 2}
    key_col = 0 if text_col != 0 else 1
    return {row[key_col]: row[text_col] for row in rows[1:] if len(row) > max(key_col, text_col)}


def ssv2_label(entry: dict) -> str | None:
    """The caption of one Something-Something v2 annotation: its `label` (objects already filled in),
    else the `template` with each `[something]` replaced by the next placeholder."""
    if entry.get("label"):
        return str(entry["label"])
    template = entry.get("template")
    if not template:
        return None
    placeholders = iter(entry.get("placeholders", []))
    return re.sub(r"\[[^\]]*\]", lambda m: next(placeholders, m.group(0)), template)


def load_captions(*directories: str | os.PathLike) -> dict[str, str]:
    """Captions found in `directories` (later ones win): captions.json {name: text}, captions.csv, and
    Something-Something v2 `annotations/*.json` (id -> label). Keys lose their media extension."""
    captions: dict[str, str] = {}
    for directory in directories:
        directory = Path(directory)
        annotations = directory / "annotations"
        if annotations.is_dir():
            for path in sorted(annotations.glob("*.json")):
                for entry in _load_json(path):
                    if isinstance(entry, dict) and "id" in entry and (text := ssv2_label(entry)) is not None:
                        captions[str(entry["id"])] = text
        json_path, csv_path = directory / "captions.json", directory / "captions.csv"
        if json_path.is_file():
            loaded = _load_json(json_path)
            if not isinstance(loaded, dict):
                raise UsageError(f"{json_path}: expected an object mapping file names to captions")
            captions.update({_strip_media_ext(str(k)): str(v) for k, v in loaded.items()})
        if csv_path.is_file():
            captions.update({_strip_media_ext(k): v for k, v in _read_caption_csv(csv_path).items()})
    return captions


def caption_for(captions: dict[str, str], name: str, split: str | None = None) -> str | None:
    """Caption of the video named `name` (relative to the split dir; `split` prefixes it for root-level keys)."""
    if not captions:
        return None
    stem = _strip_media_ext(name)
    for key in ((f"{split}/{stem}" if split else None), stem, stem.rsplit("/", 1)[-1]):
        if key and key in captions:
            return captions[key]
    return None


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None


# --- sources --------------------------------------------------------------------------------------


class EntrySource:
    """Videos given as a list of entries, each a video file or a frame folder (or a range of one).

    Frame lists and video lengths are looked up lazily and cached per process, so building a source
    over hundreds of thousands of videos costs nothing until they are read.
    """

    def __init__(
        self,
        names: list[str],
        paths: list[Path],
        kinds: list[str],
        texts: list[str | None] | None = None,
        *,
        ext: str | None = None,
        frame_ranges: list[tuple[int, int]] | None = None,
        frame_pattern: str | None = None,
    ):
        self.names, self.paths, self.kinds = names, paths, kinds
        self.texts = texts if texts is not None and any(t is not None for t in texts) else None
        self.ext, self.frame_ranges, self.frame_pattern = ext, frame_ranges, frame_pattern
        self._frame_cache: dict[int, list[Path]] = {}
        self._length_cache: dict[int, int] = {}

    kind = "frames"

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_text(self) -> bool:
        return self.texts is not None

    def text(self, index: int) -> str | None:
        return None if self.texts is None else (self.texts[index] or "")

    def name(self, index: int) -> str:
        return self.names[index]

    def _frames(self, index: int) -> list[Path]:
        cached = self._frame_cache.get(index)
        if cached is None:
            if self.frame_ranges is not None:  # frames named by a pattern, first..last inclusive (Epic)
                first, last = self.frame_ranges[index]
                cached = [self.paths[index] / self.frame_pattern.format(k) for k in range(first, last + 1)]
            else:
                cached = frame_files(self.paths[index], self.ext)
            self._frame_cache[index] = cached
        return cached

    def num_frames(self, index: int) -> int:
        if index not in self._length_cache:
            if self.kinds[index] == "video":
                self._length_cache[index] = video_info(self.paths[index])[0]
            else:
                self._length_cache[index] = len(self._frames(index))
        return self._length_cache[index]

    def read(self, index: int, frame_indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        if frame_indices is None:
            frame_indices = np.arange(self.num_frames(index))
        if self.kinds[index] == "video":
            return read_frames(self.paths[index], frame_indices)
        files = self._frames(index)
        if not files:
            raise VideoReadError(f"{self.paths[index]}: no frame images")
        return np.stack([read_image(files[int(i)]) for i in frame_indices])


def folder_source(
    split_dir: str | os.PathLike, *, split: str | None = None, caption_dirs: Sequence[Path] = (), ext: str | None = None
) -> EntrySource:
    """All videos (files or frame folders) under one split directory, with captions when present."""
    split_dir = Path(split_dir)
    found = discover_videos(split_dir, ext)
    if not found:
        raise UsageError(f"{split_dir}: no videos or frame folders found")
    captions = load_captions(*caption_dirs, split_dir)
    texts = [caption_for(captions, name, split) for name, _, _ in found]
    return EntrySource([n for n, _, _ in found], [p for _, p, _ in found], [k for _, _, k in found], texts, ext=ext)


def ssv2_source(root: str | os.PathLike, split: str) -> EntrySource:
    """Something-Something v2: `annotations/{train,validation,test}.json` + frames `rawframes/<id>/`
    (MMAction2 layout) or videos `<id>.webm` (in the root, `videos/` or `20bn-something-something-v2/`)."""
    root = Path(root)
    file_name = {"train": "train.json", "val": "validation.json", "test": "test.json"}.get(split, f"{split}.json")
    annotation = root / "annotations" / file_name
    if not annotation.is_file():
        raise UsageError(f"{annotation}: SSv2 annotation file not found (expected annotations/{file_name})")
    entries = _load_json(annotation)
    names, paths, kinds, texts = [], [], [], []
    video_dirs = [root / "20bn-something-something-v2", root / "videos", root]
    for entry in entries:
        video_id = str(entry["id"])
        folder = root / "rawframes" / video_id
        if folder.is_dir():
            path, kind = folder, "frames"
        else:
            path = next((d / f"{video_id}.webm" for d in video_dirs if (d / f"{video_id}.webm").is_file()), None)
            if path is None:
                raise UsageError(f"SSv2 video {video_id}: neither {folder} nor {video_id}.webm found under {root}")
            kind = "video"
        names.append(video_id)
        paths.append(path)
        kinds.append(kind)
        texts.append(ssv2_label(entry))
    return EntrySource(names, paths, kinds, texts)


def bridge_caption(task: str) -> str:
    """Bridge caption rule (Seer): the task folder name without `_distractors`, `_` and `-` as spaces."""
    return re.sub(r"\s+", " ", task.replace("_distractors", "").replace("_", " ").replace("-", " ")).strip()


def bridge_source(root: str | os.PathLike, split: str) -> EntrySource:
    """BridgeData: frames `rawframes/<task>/<episode>/`, episodes listed by `path_id_bridgedata.txt` (a JSON
    list of "task/episode") or found on disk; first 80 % train, last 20 % val, as Seer splits it."""
    root = Path(root)
    listing = next(
        (p for p in (root / "path_id_bridgedata.txt", root / "dataset" / "path_id_bridgedata.txt") if p.is_file()), None
    )
    frames_root = root / "rawframes"
    if listing is not None:
        episodes = [str(e) for e in _load_json(listing)]
    elif frames_root.is_dir():
        episodes = sorted(
            (f"{t.name}/{e.name}" for t in frames_root.iterdir() if t.is_dir() for e in t.iterdir() if e.is_dir()),
            key=natural_key,
        )
    else:
        raise UsageError(f"{root}: no Bridge data (expected rawframes/<task>/<episode>/ or path_id_bridgedata.txt)")
    cut = int(len(episodes) * 0.8)
    chosen = {"train": episodes[:cut], "val": episodes[cut:]}.get(split)
    if chosen is None:
        raise UsageError(f"Bridge has splits train and val, not '{split}'")
    return EntrySource(
        chosen,
        [frames_root / e for e in chosen],
        ["frames"] * len(chosen),
        [bridge_caption(e.split("/")[0]) for e in chosen],
    )


def epic_source(root: str | os.PathLike, split: str) -> EntrySource:
    """Epic-Kitchens-100: one item per narrated segment of `EPIC_100_{train,validation}.csv`, frames
    `[EPIC-KITCHENS/]<participant>/rgb_frames/<video_id>/frame_0000000001.jpg` from start to stop frame."""
    root = Path(root)
    file_name = {"train": "EPIC_100_train.csv", "val": "EPIC_100_validation.csv"}.get(split)
    if file_name is None:
        raise UsageError(f"Epic-Kitchens has splits train and val, not '{split}'")
    candidates = [
        root / file_name,
        root / "epic-kitchens-100-annotations" / file_name,
        root / "annotations" / file_name,
    ]
    table = next((p for p in candidates if p.is_file()), None)
    if table is None:
        raise UsageError(
            f"{root}: {file_name} not found (looked in the root, epic-kitchens-100-annotations/ and annotations/)"
        )
    frames_root = root / "EPIC-KITCHENS" if (root / "EPIC-KITCHENS").is_dir() else root
    names, paths, ranges, texts = [], [], [], []
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            names.append(row["narration_id"])
            paths.append(frames_root / row["participant_id"] / "rgb_frames" / row["video_id"])
            ranges.append((int(row["start_frame"]), int(row["stop_frame"])))
            texts.append(row["narration"])
    return EntrySource(
        names, paths, ["frames"] * len(names), texts, frame_ranges=ranges, frame_pattern="frame_{:010d}.jpg"
    )


UCF101_FOLDS = (1, 2, 3)
UCF101_LIST_FILES = {"train": "trainlist", "test": "testlist"}


def _ucf101_dirs(root: Path) -> tuple[Path, Path]:
    """(class folders, fold-file folder): `root/UCF-101/` beside `root/ucfTrainTestlist/`, or `root` holding
    the class folders with `ucfTrainTestlist/` among them (the layout upstream PVDM reads)."""
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    lists = next(
        (d / "ucfTrainTestlist" for d in (root, videos) if (d / "ucfTrainTestlist").is_dir()), root / "ucfTrainTestlist"
    )
    return videos, lists


def ucf101_fold_entries(list_file: Path) -> list[str]:
    """The video paths of one fold file; train lines end in a class number, and the files use CRLF line ends."""
    return [line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def ucf101_source(root: str | os.PathLike, split: str, fold: int = 1) -> EntrySource:
    """UCF-101: `UCF-101/<Class>/v_<Class>_gXX_cYY.avi`, split by the official `ucfTrainTestlist/trainlistNN.txt`
    and `testlistNN.txt` of `fold`, so no test video can reach training; the caption is the class name.

    There is no val split: upstream trains on the whole train list, and holding groups out would change that.
    """
    if fold not in UCF101_FOLDS:
        raise UsageError(f"--fold {fold}: UCF-101 has folds 1, 2 and 3")
    list_name = UCF101_LIST_FILES.get(split)
    if list_name is None:
        raise UsageError(f"UCF-101 has splits train and test, not '{split}'")
    videos, lists = _ucf101_dirs(Path(root))
    list_file = lists / f"{list_name}{fold:02d}.txt"
    if not list_file.is_file():
        raise UsageError(
            f"{list_file}: UCF-101 fold file not found (expected ucfTrainTestlist/ beside or inside the class folders)"
        )
    names = ucf101_fold_entries(list_file)
    missing = [name for name in names if not (videos / name).is_file()]
    if missing:
        raise UsageError(
            f"{list_file.name}: {len(missing)} of {len(names)} listed videos are missing under {videos} (e.g. {missing[0]})"
        )
    return EntrySource(names, [videos / n for n in names], ["video"] * len(names), [n.split("/")[0] for n in names])


SKY_SPLIT_DIRS = {"train": ("sky_train", "train"), "test": ("sky_test", "test")}


def sky_split_dir(root: str | os.PathLike, split: str) -> Path | None:
    """SkyTimelapse's folder of `split` (`sky_train` as released, `train` as upstream PVDM names it), if present."""
    return next((Path(root) / n for n in SKY_SPLIT_DIRS.get(split, ()) if (Path(root) / n).is_dir()), None)


def sky_source(root: str | os.PathLike, split: str) -> EntrySource:
    """SkyTimelapse: frame folders two levels deep, `sky_train/<video>/<clip>/*.jpg`; one clip folder is one video."""
    if split not in SKY_SPLIT_DIRS:
        raise UsageError(f"SkyTimelapse has splits train and test, not '{split}'")
    split_dir = sky_split_dir(root, split)
    if split_dir is None:
        raise UsageError(f"{root}: no SkyTimelapse {split} folder (expected sky_{split}/<video>/<clip>/*.jpg)")
    clips = sorted(
        (f"{video.name}/{clip.name}" for video in _visible_dirs(split_dir) for clip in _visible_dirs(video)),
        key=natural_key,
    )
    if not clips:
        raise UsageError(f"{split_dir}: no clip folders (expected <video>/<clip>/*.jpg)")
    return EntrySource(clips, [split_dir / c for c in clips], ["frames"] * len(clips))


def _visible_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def dataset_splits(root: str | os.PathLike, dataset: str, fold: int = 1) -> dict[str, EntrySource]:
    """Every split of a released dataset's own layout: `ucf101` (train/test of the fold) or `sky` (the splits present)."""
    if dataset == "ucf101":
        return {split: ucf101_source(root, split, fold) for split in UCF101_LIST_FILES}
    if dataset == "sky":
        present = [split for split in SKY_SPLIT_DIRS if sky_split_dir(root, split) is not None]
        if not present:
            raise UsageError(
                f"{root}: no SkyTimelapse folders (expected sky_train/ and sky_test/ with <video>/<clip>/*.jpg)"
            )
        return {split: sky_source(root, split) for split in present}
    raise UsageError(f"unknown dataset layout '{dataset}' (expected ucf101 or sky)")
