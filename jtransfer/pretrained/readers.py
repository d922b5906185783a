"""File format -> reader: how the bytes of a weights file become a flat `{key: array}` dict.

Keyed by file suffix, which is how a bare path is read and how a registered source declares its
format. A module of its own so that `sources` (a source's format) and `load` (a path's suffix)
share the one table without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from jtransfer.pretrained import npz_reader, safetensors_reader, torch_pickle

READERS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    ".pth": torch_pickle.read_state_dict,
    ".pt": torch_pickle.read_state_dict,
    ".safetensors": safetensors_reader.read_state_dict,
    ".npz": npz_reader.read_npz,
}
