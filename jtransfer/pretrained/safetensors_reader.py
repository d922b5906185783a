"""Read `.safetensors` state dicts into numpy arrays with the `safetensors` library, no torch.

The format is a JSON header (names, dtypes, shapes, offsets) followed by raw little-endian
bytes, so unlike a `.pth` pickle there is nothing to execute or allow-list: the library's numpy
backend reads it as is. bfloat16 tensors come back as `ml_dtypes.bfloat16` arrays (the numpy
backend does this itself as of safetensors 0.8), which the key maps cast to float32 like any
other dtype; no header parsing of our own is needed. The library's errors name no file, so they
are re-raised as `SafetensorsFileError` with the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy


class SafetensorsFileError(ValueError):
    """The file is not a readable safetensors file (another format, truncated or corrupt)."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`{key: array}` of every tensor in the file, in the dtypes it stores."""
    try:
        return safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as e:
        raise SafetensorsFileError(f"{path} is not a readable safetensors file: {e}") from e
