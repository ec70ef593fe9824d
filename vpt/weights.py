"""Reading weight files without ever running code from them. Every weights file vpt opens comes through here.

- `.safetensors`: plain tensors by design.
- `torch.save` files: `torch.load(weights_only=True)`, which rebuilds tensors and plain data only.
- `read_weights(path, lenient=True)` adds what published checkpoints need beyond that: Lightning / taming `.ckpt`
  files pickle callbacks and hyper-parameter objects next to the weights. Both torch formats (zip and the
  legacy stream) are then read by vpt's own restricted unpickler. It rebuilds tensors, storages,
  OrderedDict and plain containers; any other class becomes an inert `Placeholder` (never imported, its
  state dropped), and a pickle that asks to *call* anything else (that is how a pickle runs code) makes
  the whole file refused.

Any failure is one `VptError` line naming the file.
"""

from __future__ import annotations

import collections
import functools
import glob
import json
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from vpt.errors import ConfigError, VptError

# The legacy (non-zip) torch.save stream: magic number, protocol version, sys_info, the object pickle,
# the list of storage keys, then each storage as an int64 element count followed by its raw bytes.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class UnsafeWeightsError(VptError):
    """A weights file that pickles objects vpt will not rebuild (a pickle that could run code)."""


_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<total>\d+)(?P<ext>\.[A-Za-z0-9]+)$")


def read_weights(path: str | Path, *, lenient: bool = False, mmap: bool = False) -> Any:
    """The object stored in a weights file, loaded on the CPU.

    `lenient`: read checkpoints that also pickle other objects (Lightning callbacks, hparams); those
    objects come back as `Placeholder`s. `mmap`: map zip-format tensors instead of reading them.
    """
    path = Path(path)
    if not path.is_file():
        raise VptError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if not lenient:
            raise _torch_refusal(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not a torch file: one line
        raise _unreadable(path, exc) from None
    return read_restricted(path)


def read_restricted(path: str | Path) -> Any:
    """A torch.save file (zip or legacy) read by the restricted unpickler; see the module docstring."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        with open(path, "rb") as handle:
            return _read_legacy(handle, size=path.stat().st_size)
    except _Refused as exc:
        raise UnsafeWeightsError(
            f"{path}: refusing to load: its pickle tries to {exc}, which could run code; "
            "vpt reads only tensors and plain data from weight files"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure means a corrupt or foreign file
        raise _unreadable(path, exc) from None


def read_state_dict(path: str | Path, *, lenient: bool = False) -> dict[str, torch.Tensor]:
    """name -> tensor from one file, a shard set (`x-00001-of-00003.safetensors`) or a `*.index.json`.

    A checkpoint dict with a `state_dict` entry is unwrapped; DDP's `module.` prefixes are removed.
    """
    state: dict[str, torch.Tensor] = {}
    for file in shard_files(Path(path)):
        part = read_weights(file, lenient=lenient)
        if isinstance(part, dict) and isinstance(part.get("state_dict"), dict):
            part = part["state_dict"]
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise VptError(f"{file}: does not hold a state dict of tensors")
        part = strip_module_prefix(part)
        clash = sorted(set(part) & set(state))
        if clash:
            raise VptError(f"{file}: repeats {clash[0]} from another shard of {path}")
        state.update(part)
    return state


def shard_files(path: Path) -> list[Path]:
    """The files holding the weights `path` names: its shard set, the shards its index lists, or itself."""
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VptError(f"{path}: not a weights index with a weight_map ({type(exc).__name__})") from None
        outside = [
            name for name in names if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")
        ]
        if outside:
            raise VptError(f"{path}: shard {outside[0]!r} is not a file name next to the index")
        return [path.parent / name for name in names]
    match = _SHARD_NAME.match(path.name)
    if match is None:
        return [path]
    pattern = f"{glob.escape(match['stem'])}-*-of-{match['total']}{match['ext']}"
    shards = sorted(p for p in path.parent.glob(pattern) if _SHARD_NAME.match(p.name))
    if len(shards) != int(match["total"]):
        raise VptError(f"{path}: incomplete shard set ({len(shards)} of {int(match['total'])} files next to it)")
    return shards


def strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Remove the leading `module.` a DDP-wrapped save adds; other keys pass unchanged."""
    return {key.removeprefix("module.") if isinstance(key, str) else key: value for key, value in state.items()}


# --- helpers --------------------------------------------------------------------------------------


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - the safetensors error names no file
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: BaseException) -> VptError:
    lines = str(exc).strip().splitlines()
    detail = lines[0].split(". ")[0][:160] if lines else type(exc).__name__
    return VptError(f"{path}: not a readable weights file ({detail})")


def _torch_refusal(path: Path, exc: pickle.UnpicklingError) -> VptError:
    """torch's weights_only refusal as one line: unsafe when it names a pickled global, else unreadable."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", text)
    if found:
        return UnsafeWeightsError(
            f"{path}: refusing to load: it pickles {found.group(1)}; "
            "vpt reads only tensors and plain data from weight files"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return VptError(
        f"{path}: not a readable weights file ({detail.group(1)[:160] if detail else 'not a torch.save file'})"
    )


# --- the restricted unpickler ---------------------------------------------------------------------


class _Refused(Exception):
    """The pickle asks for something outside the allowed set (its text: what, e.g. "call posix.system")."""


class _NoCalls(type):
    """Metaclass of placeholders: unpickling may create one without running anything (NEWOBJ), but a
    pickle that calls the class, as a code-running pickle calls its function, is refused."""

    def __call__(cls, *args, **kwargs):
        raise _Refused(f"call {cls.qualified_name}")


class Placeholder(metaclass=_NoCalls):
    """Stands in for an object of a class vpt does not import (Lightning callbacks, hparams...).
    Its pickled state is dropped; `qualified_name` says what the file named."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:  # dict subclasses are pickled with their items
        pass

    def append(self, item) -> None:  # ... and list subclasses with theirs
        pass

    def extend(self, items) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.qualified_name}, not loaded>"


class _Sealed:
    """Objects the unpickler hands out for allowed globals: a pickle may use them but not change them
    (BUILD would otherwise set attributes such as a function's defaults, for every later load)."""

    __slots__ = ("name",)

    def __setstate__(self, state):
        raise _Refused(f"modify {self.name}")


class _StorageType(_Sealed):
    """What a `torch.<Dtype>Storage` global becomes: only its dtype is used."""

    __slots__ = ("dtype",)

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype


class _Allowed(_Sealed):
    """An allowed callable (a rebuild function, a container type)."""

    __slots__ = ("function",)

    def __init__(self, name: str, function):
        self.name, self.function = name, function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)


@functools.cache
def _storage_dtypes() -> dict[str, torch.dtype]:
    dtypes = {"UntypedStorage": torch.uint8}
    with warnings.catch_warnings():  # reading .dtype of the legacy storage classes warns about TypedStorage
        warnings.simplefilter("ignore")
        for name, value in vars(torch).items():  # vars(): never triggers torch's lazy submodule imports
            if (
                name.endswith("Storage")
                and isinstance(value, type)
                and isinstance(getattr(value, "dtype", None), torch.dtype)
            ):
                dtypes[name] = value.dtype
    return dtypes


@functools.cache
def _torch_dtypes() -> dict[str, torch.dtype]:
    return {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


def _is_int_tuple(value) -> bool:
    return isinstance(value, (tuple, torch.Size)) and all(isinstance(v, int) for v in value)


def _tensor(
    storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None, dtype=None
) -> torch.Tensor:
    """A tensor on a storage this unpickler built; hooks (callables) are never taken from a file."""
    if not (
        isinstance(storage, torch.storage.TypedStorage)
        and isinstance(offset, int)
        and _is_int_tuple(size)
        and _is_int_tuple(stride)
    ):
        raise ValueError("malformed tensor record")
    if dtype is not None:  # v3 records: an untyped storage plus the tensor's dtype
        if not isinstance(dtype, torch.dtype):
            raise ValueError("malformed tensor record")
        storage = torch.storage.TypedStorage(wrap_storage=storage._untyped_storage, dtype=dtype, _internal=True)
    _check_bounds(storage, offset, tuple(size), tuple(stride))
    tensor = torch._utils._rebuild_tensor(storage, offset, size, stride)
    if isinstance(metadata, dict) and metadata:
        torch._utils.set_tensor_metadata(tensor, metadata)
    tensor.requires_grad = bool(requires_grad)
    return tensor


def _check_bounds(storage: torch.storage.TypedStorage, offset: int, size: tuple, stride: tuple) -> None:
    """A record must stay inside its storage: set_() would otherwise grow the storage to fit it."""
    if offset < 0 or len(size) != len(stride) or min((*size, *stride), default=0) < 0:
        raise ValueError("malformed tensor record")
    if 0 in size:
        return
    last = offset + sum((n - 1) * step for n, step in zip(size, stride))
    if (last + 1) * storage.dtype.itemsize > storage._untyped_storage.nbytes():
        raise ValueError("a tensor record reaches past its storage")


def _tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _tensor(storage, offset, size, stride, requires_grad, None, metadata, dtype=dtype)


def _parameter(data, requires_grad=True, backward_hooks=None) -> torch.nn.Parameter:
    if not isinstance(data, torch.Tensor):
        raise ValueError("malformed parameter record")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


def _latin1_bytes(text, encoding="latin1") -> bytes:
    """Protocol-2 pickles store bytes as `_codecs.encode(str, 'latin1')`; no other codec is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("malformed bytes record")
    return text.encode("latin1")


def _placeholder_from_class(cls, *args):
    """`copyreg._reconstructor` / `copyreg.__newobj__` (protocol 0/1 objects), allowed for placeholders only."""
    if not isinstance(cls, _NoCalls):
        raise _Refused(f"rebuild {getattr(cls, 'name', type(cls).__name__)} through copyreg")
    return object.__new__(cls)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("copyreg", "_reconstructor"): _placeholder_from_class,
    ("copyreg", "__newobj__"): _placeholder_from_class,
}

# Value types that metadata in Lightning checkpoints commonly holds (numpy scalars and arrays as a
# monitored score): calling these yields a placeholder instead of being refused.
_INERT_VALUES = {
    (module, name)
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("scalar", "_reconstruct", "dtype")
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storage: Any = None):
        super().__init__(file, encoding="utf-8")
        self._storage = storage  # (dtype, key, numel, rest of the persistent id) -> TypedStorage
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # protocol-2 pickles use Python 2's name
        if module == "torch" and name in _storage_dtypes():
            return _StorageType(f"torch.{name}", _storage_dtypes()[name])
        if (module, name) in _ALLOWED:
            return _Allowed(f"{module}.{name}", _ALLOWED[(module, name)])
        if module == "torch" and name in _torch_dtypes():
            return _torch_dtypes()[name]
        if (module, name) in _INERT_VALUES:
            placeholder = self._placeholder_class(module, name)
            return _Allowed(f"{module}.{name}", functools.partial(_placeholder_from_class, placeholder))
        return self._placeholder_class(module, name)

    def _placeholder_class(self, module: str, name: str) -> type:
        qualified = f"{module}.{name}"
        if qualified not in self._classes:
            self._classes[qualified] = _NoCalls(name, (Placeholder,), {"qualified_name": qualified})
        return self._classes[qualified]

    def persistent_load(self, saved_id):
        if not (
            isinstance(saved_id, tuple)
            and len(saved_id) >= 5
            and saved_id[0] in ("storage", b"storage")
            and isinstance(saved_id[1], _StorageType)
            and isinstance(saved_id[4], int)
            and saved_id[4] >= 0
            and self._storage is not None
        ):
            raise ValueError("unexpected persistent id (only tensor storages are read)")
        key = saved_id[2].decode("ascii") if isinstance(saved_id[2], bytes) else str(saved_id[2])
        return self._storage(saved_id[1].dtype, key, saved_id[4], saved_id[5:])


def _typed_storage(dtype: torch.dtype, nbytes: int) -> torch.storage.TypedStorage:
    buffer = torch.zeros(nbytes, dtype=torch.uint8)
    return torch.storage.TypedStorage(wrap_storage=buffer.untyped_storage(), dtype=dtype, _internal=True)


def _fill(storage: torch.storage.TypedStorage, data: bytes) -> None:
    if data:
        storage._untyped_storage.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage())


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("no data.pkl record: not a torch.save file")
        prefix = pickles[0].removesuffix("data.pkl")
        if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder").strip() == b"big":
            raise ValueError("big-endian tensors are not supported")
        storages: dict[str, torch.storage.TypedStorage] = {}

        def storage(dtype: torch.dtype, key: str, numel: int, _rest) -> torch.storage.TypedStorage:
            if key not in storages:
                record = archive.getinfo(f"{prefix}data/{key}")
                if record.compress_type != zipfile.ZIP_STORED or record.file_size != numel * dtype.itemsize:
                    raise ValueError(f"storage {key} is not {numel * dtype.itemsize} stored bytes")
                storages[key] = _typed_storage(dtype, record.file_size)
                _fill(storages[key], archive.read(record))
            return storages[key]

        with archive.open(pickles[0]) as handle:
            return _RestrictedUnpickler(handle, storage).load()


def _read_legacy(handle: BinaryIO, *, size: int) -> Any:
    if handle.peek(4)[:4] == b"PK\x03\x04":
        raise ValueError("a damaged zip archive (truncated download?)")
    if _RestrictedUnpickler(handle).load() != LEGACY_MAGIC:
        raise ValueError("invalid magic number: not a torch.save file")
    if _RestrictedUnpickler(handle).load() != LEGACY_PROTOCOL:
        raise ValueError("unknown legacy protocol version")
    sys_info = _RestrictedUnpickler(handle).load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise ValueError("big-endian tensors are not supported")
    storages: dict[str, torch.storage.TypedStorage] = {}

    def storage(dtype: torch.dtype, key: str, numel: int, rest) -> torch.storage.TypedStorage:
        if rest and rest[-1] is not None:
            raise ValueError("storage views (files from torch before 1.0) are not supported")
        if key not in storages:
            if numel * dtype.itemsize > size:
                raise ValueError(f"storage {key} claims {numel * dtype.itemsize} bytes, more than the file holds")
            storages[key] = _typed_storage(dtype, numel * dtype.itemsize)
        return storages[key]

    result = _RestrictedUnpickler(handle, storage).load()
    keys = _RestrictedUnpickler(handle).load()
    if not isinstance(keys, list):
        raise ValueError("malformed storage list")
    for key in keys:
        target = storages.get(str(key))
        if target is None:
            raise ValueError(f"storage {key} is listed but never used")
        (numel,) = struct.unpack("<q", _read_exact(handle, 8))
        nbytes = target._untyped_storage.nbytes()
        if numel * target.dtype.itemsize != nbytes:
            raise ValueError(f"storage {key} holds {numel} elements, expected {nbytes // target.dtype.itemsize}")
        _fill(target, _read_exact(handle, nbytes))
    return result


def _read_exact(handle: BinaryIO, count: int) -> bytes:
    data = handle.read(count)
    if len(data) != count:
        raise EOFError("file is truncated")
    return data


def check_pickled_weights(folder: str | Path) -> None:
    """Before `from_pretrained(folder)` of diffusers or transformers, which unpickle `.bin` weights
    themselves: each `.bin` they would read must pass `read_weights`' strict check, else one line naming
    the file (never torch's advice to turn `weights_only` off)."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return  # both libraries read safetensors when a folder has them and never open the .bin
    for path in sorted(folder.glob("*.bin")):
        try:
            read_weights(path, mmap=True)
        except VptError as exc:
            raise UnsafeWeightsError(
                f"{exc}; convert {path.name} to safetensors (e.g. with safetensors.torch.save_file "
                "where you trust the file)"
            ) from None


# --- accelerate's training state ------------------------------------------------------------------

# What a torch.distributed.checkpoint `.metadata` file may name: DCP's own record classes and the few
# torch values they hold. torch reads that file with a plain `pickle.load`, so vpt checks it first.
_DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _DcpMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _DCP_METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and name in _torch_dtypes():
            return _torch_dtypes()[name]
        raise _Refused(f"load {module}.{name}")


def check_training_state(directory: str | Path) -> None:
    """Refuse (one line) an accelerate training-state directory holding a file that could run code.

    accelerate and torch.distributed.checkpoint unpickle these files themselves. Every pickle-based
    file must read with `torch.load(weights_only=True)` and no extra allowed globals (the strict rule
    `read_weights` applies), and DCP `.metadata` files may name only DCP's own record classes.
    safetensors and DCP's `.distcp` data files hold raw bytes (DCP reads its non-tensor items with
    weights_only) and are not unpickled here.
    """
    for path in sorted(Path(directory).rglob("*")):
        if not path.is_file() or path.suffix in (".safetensors", ".distcp"):
            continue
        if path.name == ".metadata":
            _check_dcp_metadata(path)
        else:
            read_weights(path, mmap=True)


def _check_dcp_metadata(path: Path) -> None:
    """DCP writes one pickle; a file holding more (e.g. the legacy torch.save stream of several pickles)
    is refused, since only the first would be checked here."""
    try:
        with open(path, "rb") as handle:
            _DcpMetadataUnpickler(handle).load()
            if handle.read(1):
                raise UnsafeWeightsError(
                    f"{path}: refusing to load: data follows its metadata pickle (a second pickle "
                    "is never checked); a checkpoint's metadata is a single pickle"
                )
    except _Refused as exc:
        raise UnsafeWeightsError(
            f"{path}: refusing to load: its pickle tries to {exc}, which could run code; "
            "a checkpoint's metadata names only torch's checkpoint records"
        ) from None
    except UnsafeWeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or foreign
        raise _unreadable(path, exc) from None


def settings_beside(path: Path) -> tuple[dict[str, Any], str | None]:
    """The `model` fields of a config.json next to a weights file (the whole object, or its "model"
    section) and that file's name; ({}, None) without one."""
    file = Path(path).with_name("config.json")
    if not file.is_file():
        return {}, None
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{file}: not readable JSON ({error})") from None
    section = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f'{file}: expected a JSON object of model settings (or one with a "model" object)')
    return section, str(file)
