"""Pretrained weights as jtransfer variables trees: `load(name_or_path, model=None)`.

A name is a key of `SOURCES` (`vit_b16/imagenet`, `timm/resnet50.tv2_in1k`; see `sources`),
whose file comes from a pip package or is downloaded once into the verified cache (`cache`).
Loading is two independent steps joined here: a *reader* turns a file into a flat
`{torch_key: array}` dict (chosen by the source, or by file suffix for a bare path), and a *key
map* turns that dict into the nested `{'params', 'batch_stats'}` tree of one model (chosen by
model name). Keeping them apart is what lets a new format (npz, safetensors, orbax) or a new
family (resnet, vit) be one new entry in `READERS` or `KEY_MAPS` rather than a new code path.
`KEY_MAPS` is keyed by full model name, not family prefix, so the list of valid models in an
error is simply its keys.

Trees already in jtransfer's layout need no key map: a run's workdir or checkpoint step directory
(read by `orbax_reader`) and a file of '/'-joined native keys (`jtransfer.export`'s) load as they
are, checked against `model` when one is given. A `:subtree` suffix (`run_dir:backbone`,
`weights.npz:backbone/stage1`) keeps only that parameter subtree, in every collection; the rest
of the model is then missing from the loaded tree, which `graft` accepts only where `dont_load`
re-initialises it on purpose, so a partial load always shows in the graft manifest.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from jtransfer.errors import JTransferError
from jtransfer.files import is_url
from jtransfer.pretrained import bit, cache, efficientnet_lite, native, orbax_reader, resnet, vit
from jtransfer.pretrained.cache import DownloadError, IntegrityError
from jtransfer.pretrained.key_table import KeyMapError
from jtransfer.pretrained.normalization import Normalization, mismatch
from jtransfer.pretrained.npz_reader import NpzFileError
from jtransfer.pretrained.orbax_reader import OrbaxCheckpointError
from jtransfer.pretrained.readers import READERS
from jtransfer.pretrained.safetensors_reader import SafetensorsFileError
from jtransfer.pretrained.sources import SOURCES, Source
from jtransfer.pretrained.torch_pickle import TorchFileError, UnsafePickleError

__all__ = [
    "KEY_MAPS",
    "DownloadError",
    "IntegrityError",
    "KeyMapError",
    "Normalization",
    "NpzFileError",
    "OrbaxCheckpointError",
    "READERS",
    "SOURCES",
    "SafetensorsFileError",
    "Source",
    "TorchFileError",
    "UnsafePickleError",
    "load",
    "normalization_pp",
    "preprocessing_warnings",
    "read",
    "split_subtree",
]

KEY_MAPS: dict[str, Callable[[dict[str, np.ndarray], str], dict]] = {
    **{name: efficientnet_lite.from_lukemelas for name in efficientnet_lite.MODELS},
    **{name: resnet.from_torchvision for name in resnet.MODELS},
    **{name: bit.convert for name in bit.MODELS},
    **{name: vit.convert for name in vit.MODELS},
}


def split_subtree(name_or_path: str) -> tuple[str, str]:
    """(source, subtree) of `source[:subtree]`; subtree '' when there is no suffix.

    The suffix follows the last ':' and counts only when what precedes it is a registered
    source, an existing path or a URL (`gs://bucket/vit.npz:backbone`), so a name that itself
    holds a ':' still loads whole.
    """
    source, sep, subtree = name_or_path.rpartition(":")
    if is_url(name_or_path):  # only a ':' after the scheme's can start a suffix
        return (source, subtree) if is_url(source) else (name_or_path, "")
    if name_or_path in SOURCES or Path(name_or_path).exists():
        return name_or_path, ""
    if sep and (source in SOURCES or Path(source).exists()):
        return source, subtree
    return name_or_path, ""


def read(path: str | Path) -> dict[str, np.ndarray]:
    """The flat `{key: array}` stored at `path` (a weights file or a run directory), unmapped.

    A `gs://` (any `tf.io.gfile`) URL of a weights file is read in place, not cached.
    """
    if isinstance(path, str) and is_url(path):
        import tensorflow as tf

        if tf.io.gfile.isdir(path):
            return native.flatten(orbax_reader.read_run(path))
        return cache.read_in_place(path)
    path = Path(path)
    if path.is_dir():
        return native.flatten(orbax_reader.read_run(path))
    if path.suffix not in READERS:
        raise JTransferError(
            f"no reader for {path.suffix!r} files ({path}); known: {sorted(READERS)}"
        )
    return READERS[path.suffix](path)


def load(name_or_path: str, model: str | None = None) -> dict:
    """The variables tree (`{'params': ..., 'batch_stats': ...}`, numpy leaves).

    `name_or_path` is a key of `SOURCES` (then `model`, if given, must agree with it), a run's
    workdir or checkpoint step directory, or the path or gs:// URL of a weights file (read in
    place, see `cache.read_in_place`), optionally followed by
    `:subtree` (a parameter path such as `backbone`) to load only that part. A file in a foreign
    layout needs `model` (a key of `KEY_MAPS`) to say how to map its keys; a native tree (a run,
    an export) needs none, and if `model` is given it may lack leaves (`graft` reports those)
    but must have none that `model` lacks or shapes differently.
    """
    source, subtree = split_subtree(name_or_path)
    tree = _load_whole(source, model)
    return native.subtree(tree, subtree, source) if subtree else tree


def normalization_pp(name: str) -> str:
    """The pp ops that normalise decoded images as the registered source `name` was trained
    (`value_range(-1, 1)`, the convention of most weights here, for a name not registered)."""
    source = SOURCES.get(name)
    return source.normalization.pp() if source is not None else "value_range(-1, 1)"


def preprocessing_warnings(name_or_path: str, pp: Mapping[str, str]) -> list[str]:
    """One line per pp string (`{'pp_train': ..., 'pp_eval': ...}`) whose pixel normalisation
    is not the one the registered source `name_or_path` was trained with; [] for paths."""
    name = split_subtree(name_or_path)[0]
    source = SOURCES.get(name)
    if source is None:
        return []
    norm = source.normalization
    named = name if name == source.name else f"{name} ({source.name})"
    return [
        f"{key} normalises inputs as {found}, but {named} was trained on "
        f"{norm.pp()} ({norm.origin})"
        for key, value in pp.items()
        if (found := mismatch(value, norm)) is not None
    ]


def _load_whole(name_or_path: str, model: str | None) -> dict:
    if name_or_path in SOURCES:
        source = SOURCES[name_or_path]
        if model is not None and model != source.model:
            raise JTransferError(f"{name_or_path!r} holds {source.model} weights, not {model}")
        path = source.path()
        try:
            return KEY_MAPS[source.model](source.reader(path), source.model)
        except KeyMapError as e:
            raise JTransferError(f"{path} ({name_or_path}): {e}") from e

    path = name_or_path if is_url(name_or_path) else Path(name_or_path)
    if isinstance(path, Path) and not path.exists():
        close = difflib.get_close_matches(name_or_path, SOURCES, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise JTransferError(
            f"{name_or_path!r} is neither a pretrained source nor a file or run directory; "
            f"{hint}valid sources (python -m jtransfer.pretrained list): {', '.join(SOURCES)}"
        )
    flat = read(path)
    if native.is_native(flat):
        tree = native.unflatten(flat)
        problems = native.misfits(tree, model, complete=False) if model is not None else []
        if problems:
            raise JTransferError(
                f"{path} holds a jtransfer tree that is not {model} ({len(problems)} paths):\n  "
                + "\n  ".join(problems)
            )
        return tree
    if model not in KEY_MAPS:
        raise JTransferError(
            f"loading {path} needs model= one of {sorted(KEY_MAPS)} (got {model!r})"
        )
    try:
        return KEY_MAPS[model](flat, model)
    except ValueError as e:
        raise JTransferError(f"{path}: {e}") from e
