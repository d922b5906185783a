"""Folder datasets a user brings: images with VOC xml, a COCO json, PNG masks, or a label list.

Four readers over one source class. Paths in the config are relative to the dataset root and
may contain `{split}`; a split is either the stems listed in a split file (first field of each
line, as in VOC's `ImageSets/Main/{split}.txt` or the Oxford pets' `annotations/{split}.txt`) or
everything the split's directory or json holds. Startup parses annotations (xml, json, list
files) but decodes no image, so a run starts quickly; images and masks are decoded in the
`tf.data` map, masks with PIL because TF would turn a palette PNG's class indices into colours
(MMSegmentation decodes them with PIL for the same reason). Mask folders read the image and mask
headers at startup to refuse a mask whose size differs from its image.

A split may be sliced and combined as TFDS splits are (`trainval[:80%]`, `train+val`): TFDS's
own `ReadInstruction` does the arithmetic.

Bad annotations are handled as detectron2, MMDetection and TFDS handle them:
- a box reaching outside the image is clipped to it; a box of zero area (after clipping) is
  dropped, and the count is reported in a warning naming the first file;
- a class missing from the label map (`data.classes`, or the training split's classes) is an
  error naming the file; `data.class_map` may drop a class instead (value None);
- an image with no objects stays in evaluation splits and is left out of the training split
  (detectron2's `FILTER_EMPTY_ANNOTATIONS`, MMDetection's `filter_empty_gt`), with a count;
- an image listed in a split without an annotation file (or mask) is left out with a count:
  unannotated is not "no objects" (the Oxford pets have head boxes for trainval images only);
- an xml or json that does not parse, a mask whose size differs from its image, or a listed
  image that does not exist is an error naming the file.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from jtransfer.data import annotations as annotations_lib
from jtransfer.data.base import IGNORE_LABEL, DataError, FetchFn, Source
from jtransfer.data.files import existing_splits, files_by_stem, header, read_list
from jtransfer.data.label_maps import (
    DROP,
    ClassIndex,
    check_classification_classes,
    map_mask,
    mask_table,
)

MASK_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16B", "I;16L"})  # one channel of values


@dataclasses.dataclass
class Examples:
    """One split's examples, in order: image paths and the features that go with them."""

    images: list[str]
    labels: list[int] | None = None
    masks: list[str] | None = None
    boxes: list[np.ndarray] | None = None  # float32 (k, 4) normalised [ymin, xmin, ymax, xmax]
    classes: list[np.ndarray] | None = None  # int32 (k,)

    def take(self, keep: Sequence[bool]) -> Examples:
        """The examples where `keep` is true."""

        def pick(values: list | None) -> list | None:
            return None if values is None else [v for v, k in zip(values, keep, strict=True) if k]

        return Examples(**{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})


class _NoSplit(KeyError):
    """The file or directory that defines a split does not exist."""


class FolderSource(Source):
    """Base of the folder readers: split resolution, caching, warnings and `fetch_fn`.

    A subclass sets its paths, then calls this constructor, which takes the class names from
    `_class_names` (given the first split, the training split) and reads every split in
    `splits`, so that their errors and warnings come at startup. It reads a split's raw records
    (`_raw`) and turns them into `Examples` in the run's label space (`_convert`).
    """

    format: ClassVar[str]
    _mask_table: np.ndarray  # mask folders: dataset mask value -> class id or ignore label

    def __init__(
        self,
        root: str,
        *,
        splits: Sequence[str],
        train_splits: Iterable[str] = (),
        ignore_label: int = IGNORE_LABEL,
    ):
        self.root = root
        self.ignore_label = ignore_label
        self._train_splits = set(train_splits)
        self._raw_cache: dict[str, list] = {}
        self._notes: dict[str, list[str]] = {}
        self._examples_cache: dict[str, Examples] = {}
        self.class_names = self._class_names(splits[0])
        for split in splits:
            self._examples(split)

    # What a format defines.
    @abc.abstractmethod
    def _split_pattern(self) -> str:
        """The path under the root, with '{split}', that exists for each split."""

    @abc.abstractmethod
    def _raw(self, split: str) -> list:
        """The records of a whole (unsliced) split; raises `_NoSplit` if it does not exist."""

    @abc.abstractmethod
    def _class_names(self, train_split: str) -> list[str]:
        """The run's class names (reading the training split if they come from the data)."""

    @abc.abstractmethod
    def _convert(self, records: list, split: str) -> Examples:
        """Records -> examples, in the run's label space."""

    # Source.
    def describe(self) -> str:
        return f"{self.format} folder {self.root}"

    def splits(self) -> list[str]:
        """The names of the splits the folder has."""
        return existing_splits(self.root, self._split_pattern())

    def num_examples(self, split: str) -> int:
        return len(self._examples(split).images)

    def check_split(self, split: str) -> None:
        if not self._examples(split).images:
            notes = "; ".join(self._notes.get(split, []))
            raise DataError(
                f"split {split!r} of {self.describe()} has no examples"
                + (f" ({notes})" if notes else "")
                + f"; its splits: {self.splits()}"
            )

    def fetch_fn(self, split: str) -> FetchFn:
        examples = self._examples(split)
        images = tf.constant(examples.images, tf.string, shape=[len(examples.images)])
        labels = masks = boxes = classes = None
        if examples.labels is not None:
            labels = tf.constant(np.array(examples.labels, np.int32).reshape(-1))
        if examples.masks is not None:
            masks = tf.constant(examples.masks, tf.string, shape=[len(examples.masks)])
        if examples.boxes is not None:
            boxes = _ragged(examples.boxes, np.float32, (4,))
            classes = _ragged(examples.classes, np.int32, ())

        def fetch(i: tf.Tensor) -> dict[str, tf.Tensor]:
            out = {"image": tf.io.read_file(tf.gather(images, i))}
            if labels is not None:
                out["label"] = tf.gather(labels, i)
            if masks is not None:
                path = tf.gather(masks, i)
                out["segmentation"] = map_mask(_decode_mask(path), self._mask_table, path)
            if boxes is not None:
                out["boxes"], out["classes"] = tf.gather(boxes, i), tf.gather(classes, i)
            return out

        return fetch

    # Splits: resolve, read, cache.
    def _path(self, pattern: str, split: str) -> str:
        return os.path.join(self.root, pattern.format(split=split))

    def _raw_split(self, split: str) -> list:
        if split not in self._raw_cache:
            self._raw_cache[split] = self._raw(split)
        return self._raw_cache[split]

    def _parts(self, spec: str) -> list[tuple[str, slice]]:
        """(split, slice) pairs of a split spec: a split, a slice (`trainval[:80%]`) or a sum
        (`train+val`), in TFDS's syntax."""
        if not re.search(r"[\[\]+]", spec):  # a plain name, even one TFDS reserves ('all')
            parts = [(spec, slice(None))]
        else:
            try:
                absolute = tfds.core.ReadInstruction.from_spec(spec).to_absolute(_SplitSizes(self))
            except (ValueError, NotImplementedError) as e:
                raise DataError(f"{self.describe()}: {str(e).splitlines()[0]}") from None
            parts = [(p.splitname, slice(p.from_, p.to)) for p in absolute]
        for split, _ in parts:
            try:
                self._raw_split(split)
            except _NoSplit as e:
                raise DataError(
                    f"{self.describe()} has no split {split!r} (no {e.args[0]}); its splits: "
                    f"{self.splits()}"
                ) from None
        return parts

    def _records(self, spec: str) -> list:
        return [r for split, part in self._parts(spec) for r in self._raw_split(split)[part]]

    def _examples(self, split: str) -> Examples:
        if split not in self._examples_cache:
            examples = self._convert(self._records(split), split)
            if split in self._train_splits and examples.boxes is not None:
                has_objects = [len(b) > 0 for b in examples.boxes]
                if not all(has_objects):
                    self._note(
                        split,
                        f"{has_objects.count(False)} images without objects left out of training",
                    )
                    examples = examples.take(has_objects)
            self._examples_cache[split] = examples
        return self._examples_cache[split]

    def _note(self, split: str, note: str) -> None:
        self._notes.setdefault(split, []).append(note)
        warnings.warn(f"{self.describe()}, split {split!r}: {note}", stacklevel=2)

    def _listed_stems(self, split_files: str | None, split: str) -> list[str] | None:
        """The stems a split file lists (None: no split files, the split is everything)."""
        if not split_files:
            return None
        path = self._path(split_files, split)
        if not os.path.isfile(path):
            raise _NoSplit(path)
        return [fields[0] for fields in read_list(path)]


class _SplitSizes(Mapping):
    """Split name -> object with `num_examples`, read on demand: what TFDS's split arithmetic
    needs, without reading splits a spec does not name."""

    def __init__(self, source: FolderSource):
        self._source = source

    def __getitem__(self, split: str) -> Any:
        try:
            return _Size(len(self._source._raw_split(split)))
        except _NoSplit:
            raise KeyError(split) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._source.splits())

    def __len__(self) -> int:
        return len(self._source.splits())


@dataclasses.dataclass
class _Size:
    num_examples: int


def _ragged(arrays: list[np.ndarray], dtype, inner: tuple[int, ...]) -> tf.RaggedTensor:
    values = np.concatenate([np.zeros((0, *inner), dtype), *arrays]).astype(dtype)
    return tf.RaggedTensor.from_row_lengths(values, [len(a) for a in arrays])


def _read_mask_file(path: bytes) -> np.ndarray:
    with Image.open(path.decode()) as mask:
        return np.asarray(mask, dtype=np.int32)[..., None]


def _decode_mask(path: tf.Tensor) -> tf.Tensor:
    """int32 (H, W, 1): the mask's stored values (a palette PNG's indices, not its colours)."""
    mask = tf.numpy_function(_read_mask_file, [path], tf.int32, stateful=False)
    mask.set_shape([None, None, 1])
    return mask


def _in_parallel(fn, items: list) -> list:
    with concurrent.futures.ThreadPoolExecutor() as pool:
        return list(pool.map(fn, items))


class _DetectionFolder(FolderSource):
    """Shared by VOC and COCO: annotation records -> clipped, filtered, normalised boxes."""

    features = frozenset({"image", "boxes", "classes"})
    _index: ClassIndex

    def _class_names(self, train_split: str) -> list[str]:
        records = () if self._classes else self._records(train_split)
        names = (name for record in records for name in record.names)
        self._index = ClassIndex(names, self._class_map, self._classes)
        return self._index.class_names

    def _convert(self, records: list[annotations_lib.Annotation], split: str) -> Examples:
        boxes, classes = [], []
        counts = {"clipped": 0, "empty": 0, "dropped": 0}
        first = {}
        for record in records:
            ids = np.array([self._index.id(n, record.source) for n in record.names], np.int32)
            h, w = record.size
            limit = np.array([h, w, h, w], np.float64)
            clipped = np.clip(record.boxes, 0, limit)
            empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
            outside = (clipped != record.boxes).any(axis=1) & ~empty
            dropped = (ids == DROP) & ~empty
            for name, hit in (("clipped", outside), ("empty", empty), ("dropped", dropped)):
                counts[name] += int(hit.sum())
                if hit.any():
                    first.setdefault(name, record.source)
            keep = ~empty & (ids != DROP)
            boxes.append((clipped[keep] / limit).astype(np.float32))
            classes.append(ids[keep])
        what = {
            "clipped": "boxes reaching outside their image clipped to it",
            "empty": "boxes of zero area dropped",
            "dropped": "objects of classes data.class_map drops left out",
        }
        for name, count in counts.items():
            if count:
                self._note(split, f"{count} {what[name]} (first in {first[name]})")
        return Examples([r.image for r in records], boxes=boxes, classes=classes)


class VocSource(_DetectionFolder):
    """Images with PASCAL VOC xml files: `<annotations>/<stem>.xml` per image of a split."""

    format = "voc"

    def __init__(
        self,
        root: str,
        *,
        splits: Sequence[str],
        images: str = "JPEGImages",
        annotations: str = "Annotations",
        split_files: str | None = "ImageSets/Main/{split}.txt",
        classes: Sequence[str] | None = None,
        class_map: Mapping | None = None,
        train_splits: Iterable[str] = (),
    ):
        self._images, self._annotations, self._split_files = images, annotations, split_files
        self._classes, self._class_map = classes, class_map
        _require_split_field(split_files or annotations, "split_files or annotations")
        super().__init__(root, splits=splits, train_splits=train_splits)

    def _split_pattern(self) -> str:
        return self._split_files or self._annotations

    def _raw(self, split: str) -> list[annotations_lib.Annotation]:
        xml_dir = self._path(self._annotations, split)
        if not self._split_files and not os.path.isdir(xml_dir):
            raise _NoSplit(xml_dir)
        listed = self._listed_stems(self._split_files, split)
        xmls = files_by_stem(xml_dir)
        stems = sorted(xmls) if listed is None else listed
        missing = [s for s in stems if s not in xmls]
        if missing:
            self._note(
                split,
                f"{len(missing)} of {len(stems)} listed images have no xml in {xml_dir}, left "
                f"out (first: {missing[0]})",
            )
        images = _image_paths(self._path(self._images, split), [s for s in stems if s in xmls])
        return _in_parallel(
            lambda stem_image: annotations_lib.read_voc_xml(xmls[stem_image[0]], stem_image[1]),
            list(images.items()),
        )


class CocoSource(_DetectionFolder):
    """Images with a COCO instances json per split (`file_name`s relative to `images`)."""

    format = "coco"

    def __init__(
        self,
        root: str,
        *,
        splits: Sequence[str],
        images: str = "{split}",
        annotations: str = "annotations/instances_{split}.json",
        classes: Sequence[str] | None = None,
        class_map: Mapping | None = None,
        train_splits: Iterable[str] = (),
    ):
        self._images, self._annotations = images, annotations
        self._classes, self._class_map = classes, class_map
        self._categories: dict[str, list[str]] = {}
        _require_split_field(annotations, "annotations")
        super().__init__(root, splits=splits, train_splits=train_splits)

    def _class_names(self, train_split: str) -> list[str]:
        """The categories of the training split's json, in id order, unless data.classes."""
        names = [n for split, _ in self._parts(train_split) for n in self._categories[split]]
        self._index = ClassIndex(names, self._class_map, self._classes, ordered=True)
        return self._index.class_names

    def _split_pattern(self) -> str:
        return self._annotations

    def _raw(self, split: str) -> list[annotations_lib.Annotation]:
        path = self._path(self._annotations, split)
        if not os.path.isfile(path):
            raise _NoSplit(path)
        categories, records, crowd = annotations_lib.read_coco_json(
            path, self._path(self._images, split)
        )
        self._categories[split] = categories
        if crowd:
            self._note(split, f"{crowd} crowd annotations (iscrowd=1) left out of {path}")
        absent = [r.image for r in records if not os.path.isfile(r.image)]
        if absent:
            raise DataError(
                f"{path} names {len(absent)} images that do not exist: {absent[0]}, ..."
            )
        return records


class MaskFolderSource(FolderSource):
    """Images with single-channel PNG masks of the same stem (class ids, or values that
    `mask_values` maps to class ids and the ignore label)."""

    format = "mask_folder"
    features = frozenset({"image", "segmentation"})

    def __init__(
        self,
        root: str,
        *,
        splits: Sequence[str],
        classes: Sequence[str],
        images: str = "images/{split}",
        masks: str = "masks/{split}",
        split_files: str | None = None,
        mask_values: Mapping | None = None,
        ignore_label: int = IGNORE_LABEL,
    ):
        if not classes:
            raise DataError(
                f"mask folder {root}: set data.classes to the class names of mask values "
                "0, 1, ... (masks carry no names)"
            )
        self._images, self._masks, self._split_files = images, masks, split_files
        _require_split_field(split_files or images, "split_files or images")
        self._classes = [str(c) for c in classes]
        self._mask_table = mask_table(len(classes), ignore_label, mask_values)
        super().__init__(root, splits=splits, ignore_label=ignore_label)

    def _class_names(self, train_split: str) -> list[str]:
        return self._classes

    def _split_pattern(self) -> str:
        return self._split_files or self._images

    def _raw(self, split: str) -> list[tuple[str, str]]:
        image_dir, mask_dir = self._path(self._images, split), self._path(self._masks, split)
        if not self._split_files and not os.path.isdir(image_dir):
            raise _NoSplit(image_dir)
        listed = self._listed_stems(self._split_files, split)
        images = _image_paths(image_dir, listed)
        masks = files_by_stem(mask_dir)
        missing = [s for s in images if s not in masks]
        if missing:
            self._note(
                split,
                f"{len(missing)} of {len(images)} images have no mask in {mask_dir}, left out "
                f"(first: {missing[0]})",
            )
        pairs = [(image, masks[stem]) for stem, image in images.items() if stem in masks]
        _in_parallel(_check_mask, pairs)
        return pairs

    def _convert(self, records: list[tuple[str, str]], split: str) -> Examples:
        return Examples([image for image, _ in records], masks=[mask for _, mask in records])


def _check_mask(pair: tuple[str, str]) -> None:
    image, mask = pair
    (image_size, _, _), (mask_size, mode, _) = header(image), header(mask)
    if mode not in MASK_MODES:
        raise DataError(
            f"{mask} is a {mode} image; a mask needs one channel of class values (a grayscale or "
            "palette PNG)"
        )
    if mask_size != image_size:
        raise DataError(
            f"{mask} is {mask_size[0]}x{mask_size[1]} (HxW) but its image {image} is "
            f"{image_size[0]}x{image_size[1]}; a mask must have its image's size"
        )


class ImageListSource(FolderSource):
    """Images with a split file per split whose lines are `<image stem> <class> ...`."""

    format = "image_list"
    features = frozenset({"image", "label"})

    def __init__(
        self,
        root: str,
        *,
        splits: Sequence[str],
        images: str = "images",
        split_files: str = "{split}.txt",
        classes: Sequence[str] | None = None,
        class_map: Mapping | None = None,
    ):
        self._images, self._split_files = images, split_files
        self._classes, self._class_map = classes, class_map
        _require_split_field(split_files, "split_files")
        super().__init__(root, splits=splits)

    def _class_names(self, train_split: str) -> list[str]:
        """The training split's classes, which must be two or more, each with images."""
        records = self._records(train_split)
        self._index = ClassIndex((n for _, n, _ in records), self._class_map, self._classes)
        labels = self._convert(records, train_split).labels
        check_classification_classes(self._index.class_names, labels, self.describe())
        return self._index.class_names

    def _split_pattern(self) -> str:
        return self._split_files

    def _raw(self, split: str) -> list[tuple[str, str, str]]:
        path = self._path(self._split_files, split)
        if not os.path.isfile(path):
            raise _NoSplit(path)
        lines = read_list(path)
        short = [i for i, fields in enumerate(lines) if len(fields) < 2]
        if short:
            raise DataError(f"{path} line {short[0] + 1} has no class after the image name")
        images = _image_paths(self._path(self._images, split), [f[0] for f in lines])
        return [(images[f[0]], f[1], path) for f in lines]

    def _convert(self, records: list[tuple[str, str, str]], split: str) -> Examples:
        labels = [self._index.id(name, where) for _, name, where in records]
        if DROP in labels:
            raise DataError(
                f"{self.describe()}: data.class_map drops a class; for classification leave its "
                "images out of the split files instead"
            )
        return Examples([image for image, _, _ in records], labels=labels)


def _image_paths(directory: str, stems: list[str] | None) -> dict[str, str]:
    """{stem: image path} for `stems` (None: every file) in `directory`; a stem without an
    image is an error."""
    found = files_by_stem(directory)
    if stems is None:
        return found
    missing = [s for s in stems if s not in found]
    if missing:
        raise DataError(f"{len(missing)} listed images are not in {directory}, e.g. {missing[0]!r}")
    return {s: found[s] for s in stems}


def _require_split_field(pattern: str, field: str) -> None:
    if "{split}" not in pattern:
        raise DataError(f"data.{field} {pattern!r} must contain '{{split}}', so that splits differ")
