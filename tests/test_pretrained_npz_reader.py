"""Tests for jtransfer.pretrained.npz_reader: every failure is an NpzFileError naming the file.

Archives that zipfile cannot write (an encrypted member, an unknown compression method) are made
by patching the headers of one it can: the flag bits and method fields sit at fixed offsets in
both the local header and the central directory entry of each member.
"""

import io
import struct
import zipfile

import numpy as np
import pytest

from jtransfer.pretrained.npz_reader import NpzFileError, read_npz

ARRAYS = {
    "Transformer/encoder_norm/scale": np.linspace(0.5, 1.5, 6, dtype=np.float32),
    "embedding/kernel": np.arange(24, dtype=np.float16).reshape(2, 3, 4),
    "step": np.array(7, np.int64),
}


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_round_trip(tmp_path, save):
    path = tmp_path / "w.npz"
    save(path, **ARRAYS)
    arrays = read_npz(path)
    assert list(arrays) == list(ARRAYS)
    for key, expected in ARRAYS.items():
        assert arrays[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(arrays[key], expected, err_msg=key)


def _patched(field: str, value: int) -> bytes:
    """An npz of ARRAYS with `field` ('flags' or 'method') of every member set to `value`."""
    buf = io.BytesIO()
    np.savez(buf, **ARRAYS)
    data = bytearray(buf.getvalue())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            offset = at + flags_at + (2 if field == "method" else 0)
            struct.pack_into("<H", data, offset, value)
            at = data.find(signature, at + 4)
    return bytes(data)


def test_encrypted_member_names_the_file_and_member(tmp_path):
    path = tmp_path / "locked.npz"
    path.write_bytes(_patched("flags", 0x1))
    message = r"locked\.npz: member 'Transformer/encoder_norm/scale\.npy' is encrypted$"
    with pytest.raises(NpzFileError, match=message):
        read_npz(path)


def test_unknown_compression_names_the_file_and_method(tmp_path):
    path = tmp_path / "deflate64.npz"
    path.write_bytes(_patched("method", 9))
    message = r"deflate64\.npz: member '.*\.npy' is compressed with zip method 9; readable methods"
    with pytest.raises(NpzFileError, match=message):
        read_npz(path)


def test_member_that_is_no_array_is_refused(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **ARRAYS)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("README.txt", "not an array")
    with pytest.raises(NpzFileError, match=r"w\.npz: member 'README\.txt' is not a \.npy array"):
        read_npz(path)


@pytest.mark.parametrize("corrupt", ["deflate stream", "npy header", "truncated"])
def test_corrupt_archive_names_the_file(tmp_path, corrupt):
    buf = io.BytesIO()
    np.savez_compressed(buf, **ARRAYS)
    data = bytearray(buf.getvalue())
    if corrupt == "deflate stream":  # zlib.error escaped the old reader
        name_length, extra_length = struct.unpack_from("<HH", data, 26)
        start = 30 + name_length + extra_length  # the first member's compressed bytes
        data[start : start + 8] = b"\xff" * 8
    elif corrupt == "npy header":
        path = tmp_path / "x.npz"
        np.savez(path, **ARRAYS)
        data = bytearray(path.read_bytes().replace(b"'descr'", b"'dascr'", 1))
    else:
        data = data[: len(data) // 2]
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(NpzFileError, match=r"bad\.npz is not a readable \.npz archive of arrays"):
        read_npz(path)
