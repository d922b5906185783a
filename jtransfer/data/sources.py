"""Sources by format, and `build_source`, which picks one from `config.data`.

A source reads example i of split s (see `base`). The formats:
- `image_folder` (`ImageFolderSource`): `root/<split>/<class>/<file>`, classification. Every
  file is checked up front (PIL opens and loads it, JPEGs at 1/8 scale), so the example count is
  known before training starts and does not depend on when a bad file would have been met.
- `tfds` (`TfdsSource`, in `tfds_source`): any TFDS dataset, any of its features.
- `voc`, `coco`, `mask_folder`, `image_list` (in `folders`): images with VOC xml, with a COCO
  json, with PNG masks, or with list files of labels.
- `ArraySource`: arrays in memory standing in for images, e.g. cached backbone features, so
  they are batched in exactly the order and shares the images would have been.

`format='auto'` keeps what `data.name` meant before there were formats: an existing directory
is an image folder, anything else a TFDS name.
"""

import concurrent.futures
import os
import warnings
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from jtransfer.data import folders, sampling
from jtransfer.data.base import IGNORE_LABEL, DataError, FetchFn, Source
from jtransfer.data.files import unreadable_reason
from jtransfer.data.label_maps import check_classification_classes
from jtransfer.data.tfds_source import TfdsSource

FORMATS = ("auto", "image_folder", "tfds", "voc", "coco", "mask_folder", "image_list")
# Per folder format: its reader and the layout it assumes when the config names none.
_FOLDERS = {
    "voc": (
        folders.VocSource,
        {
            "images": "JPEGImages",
            "annotations": "Annotations",
            "split_files": "ImageSets/Main/{split}.txt",
        },
    ),
    "coco": (
        folders.CocoSource,
        {"images": "{split}", "annotations": "annotations/instances_{split}.json"},
    ),
    "mask_folder": (
        folders.MaskFolderSource,
        {"images": "images/{split}", "masks": "masks/{split}", "split_files": None},
    ),
    "image_list": (folders.ImageListSource, {"images": "images", "split_files": "{split}.txt"}),
}
# The optional `config.data` fields each format reads; setting another one is an error.
_FIELDS = {
    "image_folder": set(),
    "tfds": {"tfds_keys", "classes", "class_map", "mask_values"},
    "voc": {"images", "annotations", "split_files", "classes", "class_map"},
    "coco": {"images", "annotations", "classes", "class_map"},
    "mask_folder": {"images", "masks", "split_files", "classes", "mask_values"},
    "image_list": {"images", "split_files", "classes", "class_map"},
}


class ArraySource(Source):
    """Splits held as arrays: `{split: (inputs (n, ...), labels (n,))}`; pp should be ''."""

    def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str]):
        self._splits = {
            split: (np.asarray(x, np.float32), np.asarray(y, np.int32))
            for split, (x, y) in splits.items()
        }
        self.class_names = list(class_names)

    def num_examples(self, split: str) -> int:
        return len(self.arrays(split)[1])

    def splits(self) -> list[str]:
        return list(self._splits)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs float32 (n, ...), labels int32 (n,)) of `split`."""
        if split not in self._splits:
            raise DataError(f"no split {split!r} in these arrays; splits: {self.splits()}")
        return self._splits[split]

    def fetch_fn(self, split: str) -> FetchFn:
        inputs, labels = (tf.constant(a) for a in self.arrays(split))
        return lambda i: {"image": tf.gather(inputs, i), "label": tf.gather(labels, i)}


class ImageFolderSource(Source):
    """Images in `root/<split>/<class>/<file>`; classes are the train split's subdirectories.

    Each listed split must use the first split's class list (a class directory missing from a
    split is fine, an unknown one is an error). Files are sorted by class, then name; hidden
    files and nested directories are ignored. Any file TF cannot decode is an error naming it
    (`on_bad_image='fail'`) or is dropped with a warning naming it (`'skip'`). The first split
    (training) must have two classes or more, each with images.
    """

    def __init__(self, root: str, *, splits: Iterable[str], on_bad_image: str = "fail"):
        if on_bad_image not in ("fail", "skip"):
            raise DataError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        splits = list(splits)
        self.root = root
        train_dir = _split_dir(root, splits[0])
        self.class_names = _subdirs(train_dir)
        self._splits = {splits[0]: self._scan(splits[0], on_bad_image)}
        train_labels = self._splits[splits[0]][1]
        check_classification_classes(self.class_names, train_labels, f"image folder {train_dir}")
        self._splits.update({s: self._scan(s, on_bad_image) for s in splits[1:]})

    def describe(self) -> str:
        return f"image folder {self.root}"

    def splits(self) -> list[str]:
        return _subdirs(self.root)

    def num_examples(self, split: str) -> int:
        return len(self._split(split)[0])

    def fetch_fn(self, split: str) -> FetchFn:
        paths, labels = self._split(split)
        paths, labels = tf.constant(paths), tf.constant(labels)
        return lambda i: {
            "image": tf.io.read_file(tf.gather(paths, i)),
            "label": tf.gather(labels, i),
        }

    def _split(self, split: str) -> tuple[list[str], np.ndarray]:
        if split not in self._splits:
            raise DataError(
                f"split {split!r} was not loaded from {self.root} (loaded: {list(self._splits)}; "
                f"its splits: {self.splits()})"
            )
        return self._splits[split]

    def _scan(self, split: str, on_bad_image: str) -> tuple[list[str], np.ndarray]:
        split_dir = _split_dir(self.root, split)
        unknown = sorted(set(_subdirs(split_dir)) - set(self.class_names))
        if unknown:
            raise DataError(
                f"{split_dir} has class directories {unknown} that are not among the classes "
                f"{self.class_names}"
            )
        paths, labels = [], []
        for label, name in enumerate(self.class_names):
            class_dir = os.path.join(split_dir, name)
            if os.path.isdir(class_dir):
                names = sorted(f for f in os.listdir(class_dir) if not f.startswith("."))
                files = [os.path.join(class_dir, f) for f in names]
                files = [f for f in files if os.path.isfile(f)]
                paths += files
                labels += [label] * len(files)

        with concurrent.futures.ThreadPoolExecutor() as pool:
            problems = list(pool.map(unreadable_reason, paths))
        bad = [f"{p} ({why})" for p, why in zip(paths, problems, strict=True) if why]
        if bad and on_bad_image == "fail":
            raise DataError(
                f"unreadable image files in {split_dir} (set on_bad_image='skip' to drop them): "
                + ", ".join(bad)
            )
        for b in bad:
            warnings.warn(f"skipping unreadable image file {b}", stacklevel=2)
        keep = [not why for why in problems]
        return (
            [p for p, k in zip(paths, keep, strict=True) if k],
            np.array(labels, dtype=np.int32)[np.array(keep, dtype=bool)],
        )


def _split_dir(root: str, split: str) -> str:
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise DataError(
            f"no split directory {path}; {root} has {_subdirs(root)} (for another layout set "
            f"data.format to one of {list(_FOLDERS)})"
        )
    return path


def _subdirs(path: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(path)
        if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
    )


def build_source(data_cfg) -> Source:
    """The source `config.data` describes (its fields are read with defaults; see
    `jtransfer.base_config`): `format` picks the reader, the other fields configure it, and
    `shots_per_class` / `percent_per_class` cut its training split (`sampling`)."""
    return sampling.subset(_reader(data_cfg), data_cfg)


def _reader(data_cfg) -> Source:
    fmt = data_cfg.get("format", "auto") or "auto"
    if fmt not in FORMATS:
        raise DataError(f"unknown data.format {fmt!r}; valid: {list(FORMATS)}")
    name = data_cfg.name
    if fmt == "auto":
        fmt = "image_folder" if os.path.isdir(name) else "tfds"
    unused = sorted(
        f for f in set.union(*_FIELDS.values()) - _FIELDS[fmt] if data_cfg.get(f) is not None
    )
    if unused:
        raise DataError(
            f"data.format {fmt!r} does not read data.{', data.'.join(unused)}; it reads "
            f"{sorted(_FIELDS[fmt]) or 'none of the optional fields'}"
        )
    splits = [s for s in (data_cfg.train_split, data_cfg.get("eval_split")) if s]
    ignore_label = data_cfg.get("ignore_label", IGNORE_LABEL)
    labels = {"classes": data_cfg.get("classes"), "class_map": data_cfg.get("class_map")}
    if fmt == "image_folder":
        return ImageFolderSource(
            name, splits=splits, on_bad_image=data_cfg.get("on_bad_image", "fail")
        )
    if fmt == "tfds":
        return TfdsSource(
            name,
            data_dir=data_cfg.get("data_dir"),
            keys=data_cfg.get("tfds_keys"),
            mask_values=data_cfg.get("mask_values"),
            ignore_label=ignore_label,
            **labels,
        )
    if not os.path.isdir(name):
        raise DataError(f"data.name {name!r} is not a directory; data.format={fmt!r} reads one")
    reader, layout = _FOLDERS[fmt]
    # None: the format's default; '' as split_files: no split files (a split is everything).
    paths = {
        k: default if data_cfg.get(k) is None else data_cfg.get(k) for k, default in layout.items()
    }
    if fmt == "mask_folder":
        return reader(
            name,
            splits=splits,
            classes=data_cfg.get("classes"),
            mask_values=data_cfg.get("mask_values"),
            ignore_label=ignore_label,
            **paths,
        )
    if fmt == "image_list":
        return reader(name, splits=splits, **paths, **labels)
    return reader(name, splits=splits, train_splits=splits[:1], **paths, **labels)
