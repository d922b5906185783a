"""Read `.npz` checkpoints (big_vision, vision_transformer, or any flat dict of arrays).

JAX codebases save a parameter tree as one `.npz` whose keys are '/'-joined paths
(`Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`); this reader returns
that flat dict as it is and leaves every naming question to the key maps, like the torch reader.

`np.load` with `allow_pickle=False` does the work: an archive member holding a pickled object
array is refused instead of executed. Archive members cannot be memory-mapped through `np.load`
(its `mmap_mode` applies to lone `.npy` files only), so each array is read once, sequentially,
at file-system speed with the zip CRC checked; there is no per-element Python work.

Since nothing in the file is executed, any exception while reading it means malformed bytes, and
zipfile, zlib and numpy report those with a dozen types (`zlib.error`, `EOFError`,
`NotImplementedError` for an unknown compression method, `RuntimeError` for an encrypted member,
...). So every one becomes an `NpzFileError` naming the file; the two a well-formed archive can
still hit (a compression method zipfile lacks, encryption) are checked first, per member, to say
which member and why. A member that is not a `.npy` array, which `np.load` would hand back as
raw bytes, is refused too.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from jtransfer.errors import JTransferError

_READABLE = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


class NpzFileError(JTransferError):
    """The file is not a readable `.npz` archive of arrays."""


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """`{key: array}` of every member of the `.npz` archive at `path`."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise NpzFileError(f"{path} holds a lone {type(loaded).__name__}, not a .npz archive")
        with loaded:
            for info in loaded.zip.infolist():
                _check_member(info, path)
            arrays = {key: loaded[key] for key in loaded.files}
    except NpzFileError:
        raise
    except Exception as e:
        reason = " ".join(str(e).split())[:200]
        raise NpzFileError(
            f"{path} is not a readable .npz archive of arrays: {type(e).__name__}: {reason}"
        ) from e
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise NpzFileError(f"{path}: member {key!r} is not a .npy array")
    return arrays


def _check_member(info: zipfile.ZipInfo, path: Path) -> None:
    if info.flag_bits & 0x1:
        raise NpzFileError(f"{path}: member {info.filename!r} is encrypted")
    if info.compress_type not in _READABLE:
        raise NpzFileError(
            f"{path}: member {info.filename!r} is compressed with zip method "
            f"{info.compress_type}; readable methods: {', '.join(_READABLE.values())}"
        )
