"""Read `.npz` checkpoints (big_vision, vision_transformer, or any flat dict of arrays).

JAX codebases save a parameter tree as one `.npz` whose keys are '/'-joined paths
(`Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`); this reader returns
that flat dict as it is and leaves every naming question to the key maps, like the torch reader.

`np.load` with `allow_pickle=False` does the work: an archive member holding a pickled object
array is refused instead of executed. Archive members cannot be memory-mapped through `np.load`
(its `mmap_mode` applies to lone `.npy` files only), so each array is read once, sequentially,
at file-system speed with the zip CRC checked; there is no per-element Python work. Every failure
(not a zip, truncated, corrupt member, pickled member) is an `NpzFileError` naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


class NpzFileError(ValueError):
    """The file is not a readable `.npz` archive of arrays."""


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """`{key: array}` of every member of the `.npz` archive at `path`."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise NpzFileError(f"{path} holds a lone {type(loaded).__name__}, not a .npz archive")
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, NpzFileError):
            raise
        raise NpzFileError(f"{path} is not a readable .npz archive of arrays: {e}") from e
