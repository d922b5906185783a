"""Pretrained weights as jtransfer variables trees: `load(name_or_path, model=None)`.

Loading is two independent steps joined here: a *reader* turns a file into a flat
`{torch_key: array}` dict (chosen by the source, or by file suffix for a bare path), and a *key
map* turns that dict into the nested `{'params', 'batch_stats'}` tree of one model (chosen by
model name). Keeping them apart is what lets a new format (npz, safetensors, orbax) or a new
family (resnet, vit) be one new entry in `READERS` or `KEY_MAPS` rather than a new code path.
`KEY_MAPS` is keyed by full model name, not family prefix, so the list of valid models in an
error is simply its keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jtransfer.pretrained import (
    bit,
    efficientnet_lite,
    npz_reader,
    resnet,
    safetensors_reader,
    torch_pickle,
    vit,
)
from jtransfer.pretrained.npz_reader import NpzFileError
from jtransfer.pretrained.safetensors_reader import SafetensorsFileError
from jtransfer.pretrained.sources import SOURCES, Source
from jtransfer.pretrained.torch_pickle import TorchFileError, UnsafePickleError

__all__ = [
    "KEY_MAPS",
    "NpzFileError",
    "READERS",
    "SOURCES",
    "SafetensorsFileError",
    "Source",
    "TorchFileError",
    "UnsafePickleError",
    "load",
]

READERS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    ".pth": torch_pickle.read_state_dict,
    ".pt": torch_pickle.read_state_dict,
    ".safetensors": safetensors_reader.read_state_dict,
    ".npz": npz_reader.read_npz,
}

KEY_MAPS: dict[str, Callable[[dict[str, np.ndarray], str], dict]] = {
    **{name: efficientnet_lite.from_lukemelas for name in efficientnet_lite.MODELS},
    **{name: resnet.from_torchvision for name in resnet.MODELS},
    **{name: bit.from_timm for name in bit.MODELS},
    **{name: vit.convert for name in vit.MODELS},
}


def load(name_or_path: str, model: str | None = None) -> dict:
    """The variables tree (`{'params': ..., 'batch_stats': ...}`, numpy float32 leaves).

    `name_or_path` is a key of `SOURCES` (then `model`, if given, must agree with it) or the path
    of a weights file, for which `model` (a key of `KEY_MAPS`) says how to map its keys.
    """
    if name_or_path in SOURCES:
        source = SOURCES[name_or_path]
        if model is not None and model != source.model:
            raise ValueError(f"{name_or_path!r} holds {source.model} weights, not {model}")
        return KEY_MAPS[source.model](source.reader(source.path()), source.model)

    path = Path(name_or_path)
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, SOURCES, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(
            f"{name_or_path!r} is neither a pretrained source nor a file; "
            f"valid sources: {sorted(SOURCES)}{hint}"
        )
    if model not in KEY_MAPS:
        raise ValueError(f"loading {path} needs model= one of {sorted(KEY_MAPS)} (got {model!r})")
    if path.suffix not in READERS:
        raise ValueError(f"no reader for {path.suffix!r} files ({path}); known: {sorted(READERS)}")
    return KEY_MAPS[model](READERS[path.suffix](path), model)
