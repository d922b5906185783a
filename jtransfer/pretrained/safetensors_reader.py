"""Read `.safetensors` state dicts into numpy arrays with the `safetensors` library, no torch.

The format is a JSON header (names, dtypes, shapes, offsets) followed by raw little-endian
bytes, so unlike a `.pth` pickle there is nothing to execute or allow-list: the library's numpy
backend reads it as is. bfloat16 tensors come back as `ml_dtypes.bfloat16` arrays, which the key
maps cast to float32 like any other dtype; the backend finds that type by name, so this module
imports `ml_dtypes` to register it rather than rely on some other import having done so.

The backend has no numpy type for the 8-, 6- and 4-bit float formats (`F8_E4M3`, `F4`, ...)
and fails on them with an `AttributeError` from numpy, so each tensor's dtype is checked, from
the header, before it is read. The library's errors name no file; every failure here is a
`SafetensorsFileError` whose one-line message names the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes  # noqa: F401  (registers numpy's "bfloat16", which the numpy backend asks for)
import numpy as np
import safetensors

from jtransfer.errors import JTransferError

# safetensors dtypes the numpy backend can return; the header may name others.
_NUMPY_DTYPES = (
    "BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "C64", "U64", "I64", "F64"
)  # fmt: skip


class SafetensorsFileError(JTransferError):
    """The file is not a readable safetensors file (another format, truncated or corrupt)."""


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`{key: array}` of every tensor in the file, in the dtypes it stores."""
    try:
        with safetensors.safe_open(path, framework="np") as f:
            tensors = {}
            for key in f.keys():
                dtype = f.get_slice(key).get_dtype()
                if dtype not in _NUMPY_DTYPES:
                    raise SafetensorsFileError(
                        f"{path}: tensor {key!r} is stored as {dtype}, which numpy cannot hold "
                        f"(readable: {', '.join(_NUMPY_DTYPES)})"
                    )
                tensors[key] = f.get_tensor(key)
            return tensors
    except safetensors.SafetensorError as e:
        reason = " ".join(str(e).split())
        raise SafetensorsFileError(f"{path} is not a readable safetensors file: {reason}") from e
