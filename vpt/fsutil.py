"""Atomic file and directory writes: a reader (or a resumed run) never sees half a file.

Also the guards every command that writes a folder shares: one process per folder at a time
(`exclusive_lock`), a writability probe before the work starts (`ensure_writable`), and a full disk
reported as one line (`disk_full_is_an_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vpt.errors import VptError

try:
    import fcntl
except ImportError:  # Windows: no flock, folders go unguarded
    fcntl = None

LOCK_FILE = ".vpt.lock"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file below `path`, then the directories themselves."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb+") as handle:
                os.fsync(handle.fileno())
        fsync_dir(root)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it onto `path`.

    On an exception the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path, suffix)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _new_temp_file(path: Path, suffix: str) -> Path:
    """A new empty `.NAME.<random>.tmpSUFFIX` beside `path`, created with mode 0666 so the kernel applies
    the umask as for any file open() creates (tempfile.mkstemp's 0600 would make outputs private)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def umask_mode(path: str | os.PathLike) -> None:
    """Give `path` the permissions open() gives a new file under the current umask: writers that make their
    own private temp file and rename it (safetensors' save_file) otherwise leave outputs 0600."""
    probe = _new_temp_file(Path(path), ".mode")
    try:
        os.chmod(path, probe.stat().st_mode & 0o777)
    finally:
        probe.unlink()


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temp files `atomic_path` made for `path` in processes that were killed mid-write
    (call it only while holding the folder's lock, so no live writer owns them)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written directory into place (fsynced first); an old `final_dir` is replaced."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_tree(tmp_dir)
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


def cache_dir(*parts: str) -> Path:
    """A per-user cache folder for converted weights: `$VPT_CACHE`, else `$XDG_CACHE_HOME/vpt`, else ~/.cache/vpt."""
    root = os.environ.get("VPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vpt"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (weights files are recorded by hash, not by name)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_writable(directory: str | os.PathLike, what: str) -> None:
    """Create `directory` and prove a file can be written in it, before any work is done there.

    A read-only or full location is then one line naming `what` (the option) instead of an error
    after hours of sampling or evaluation; the probe file is always removed."""
    from vpt.errors import VptError

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vpt-write-probe.", dir=directory)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise VptError(f"{what}: cannot write to {directory} ({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """Before any work: `path` (option `what`) must be able to become a file - not a folder, not inside a file."""
    path = Path(path)
    if path.is_dir():
        raise VptError(f"{what} {path} is a directory; name a file inside it")
    _check_parents(path, what)


def check_output_dir(path: str | os.PathLike, what: str) -> None:
    """Before any work: `path` (option `what`) must be a folder or not exist yet (nor any file above it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VptError(f"{what} {path} exists and is not a directory; name a new or existing folder")
    _check_parents(path, what)


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """A JSON object vpt wrote earlier (`what` says which, for the message); damaged or not an object: one line."""
    import json

    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise VptError(
            f"{path}: unreadable {what} ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"
        ) from None
    if not isinstance(value, dict):
        raise VptError(f"{path}: damaged {what} (not a JSON object)")
    return value


def _check_parents(path: Path, what: str) -> None:
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise VptError(f"{what} {path}: {parent} is a file, not a directory")


# --- one writer per folder ------------------------------------------------------------------------


class _Held:
    """A lock this process holds: the open lock file and how many `DirectoryLock`s share it."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path, self.pid, self.count = fd, path, os.getpid(), 1


_HELD: dict[str, _Held] = {}  # real path of the folder -> its lock


class DirectoryLock:
    """An exclusive `flock` on DIR/.vpt.lock that holds the holder's pid and command line.

    A second process is refused with one line naming the holder. The kernel drops the lock when its
    holder dies (even by kill -9), so a stale lock file never blocks. Re-entrant within one process
    (a resumed run opened twice by the same process is not a conflict); forked children inherit the
    lock but never release it.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "the output folder"):
        self.directory, self.what = Path(directory), what
        self._key: str | None = None

    def acquire(self) -> DirectoryLock:
        if fcntl is None:
            return self
        key = os.path.realpath(self.directory)
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / LOCK_FILE
            fd = self._lock_file(path)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {_command_line()}\n".encode())
            _HELD[key] = _Held(fd, path)
        self._key = key
        return self

    def _lock_file(self, path: Path) -> int:
        while True:
            fd = self._open_lock_file(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise VptError(
                    f"another vpt process ({_holder(path)}) is using {self.what} {self.directory}; "
                    "wait for it or stop it"
                ) from None
            # The previous holder removes the file on release: a lock on that unlinked file guards nothing.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            os.close(fd)

    def _open_lock_file(self, path: Path) -> int:
        """Open (or create) the lock file itself, never what a symlink there points to: the pid line
        written into it would overwrite that file."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise VptError(
                    f"{path} is a symbolic link, not a vpt lock file; remove the link (vpt never writes through it)"
                ) from None
            if exc.errno == errno.EISDIR:
                raise self._not_a_file(path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a fifo or device (O_NONBLOCK: opening a fifo does not hang)
            os.close(fd)
            raise self._not_a_file(path)
        return fd

    def _not_a_file(self, path: Path) -> VptError:
        return VptError(f"{path} is not a regular file, so it cannot lock {self.what} {self.directory}; remove it")

    def release(self) -> None:
        key, self._key = self._key, None
        held = _HELD.get(key) if key else None
        if held is None or held.pid != os.getpid():
            return
        held.count -= 1
        if held.count == 0:
            del _HELD[key]
            with contextlib.suppress(OSError):
                held.path.unlink()  # while still locked, so nobody locks the file being removed
            os.close(held.fd)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def exclusive_lock(directory: str | os.PathLike, what: str = "the output folder") -> DirectoryLock:
    """`with exclusive_lock(out_dir):` - refuse to run while another vpt process works in `out_dir`."""
    return DirectoryLock(directory, what)


def _command_line() -> str:
    program = Path(sys.argv[0] if sys.argv else "python")
    is_vpt = program.name == "vpt" or (program.name == "__main__.py" and program.parent.name == "vpt")  # python -m vpt
    return " ".join(["vpt" if is_vpt else program.name, *sys.argv[1:]])[:300]


def _holder(path: Path) -> str:
    """'pid 1234: vpt convert-h5 ...' from a lock file (its holder may still be writing it)."""
    for _ in range(20):
        with contextlib.suppress(OSError):
            pid, _, command = path.read_text().strip().partition(" ")
            if pid:
                return f"pid {pid}: {command}" if command else f"pid {pid}"
        time.sleep(0.02)
    return "pid unknown"


# --- a full disk ---------------------------------------------------------------------------------


def out_of_space(exc: BaseException) -> bool:
    """A full disk or quota. h5py drops the errno but keeps the system's message."""
    return isinstance(exc, OSError) and (
        exc.errno in (errno.ENOSPC, errno.EDQUOT)
        or "No space left on device" in str(exc)
        or "Disk quota exceeded" in str(exc)
    )


@contextlib.contextmanager
def disk_full_is_an_error(where: str | os.PathLike, kept: str = "shards") -> Iterator[None]:
    """Turn a full disk during the work into one line; the caller's own cleanup has already run."""
    try:
        yield
    except OSError as exc:
        if not out_of_space(exc):
            raise
        raise VptError(
            f"disk full while writing {exc.filename or where}; finished {kept} are kept, "
            "free space and run the same command to continue"
        ) from None
