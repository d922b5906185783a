"""Random-access example sources: a TFDS dataset or an image folder, read by index.

The pipeline owns the order (a pure function of seed and step) and asks a source only for
"example i of split s". A source answers with the *encoded* image bytes and the label, as a
function traced into a `tf.data` map, so that skipping examples costs nothing (nothing is read
until an index is asked for) and decoding runs in parallel in the `decode` preprocessing op.

- `TfdsSource`: any TFDS dataset. Prepared as array_record (the `digits` builder's default) it
  is read through `builder.as_data_source` (the `tfds.data_source` path) one serialized record at
  a time and parsed in TF with image decoding skipped. Prepared as tfrecord (no random access)
  the split's encoded images are read into memory once, with a warning when that is large.
- `ImageFolderSource`: `root/<split>/<class>/<file>`. Every file is checked up front (PIL opens
  and loads it, JPEGs at 1/8 scale), so the example count is known before training starts and
  does not depend on when a bad file would have been met.
- `ArraySource`: arrays in memory standing in for images, e.g. cached backbone features, so
  they are batched in exactly the order and shares the images would have been.
"""

import abc
import concurrent.futures
import os
import warnings
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

# index (int64 scalar tensor) -> {'image': encoded bytes (tf.string), 'label': int32}
FetchFn = Callable[[tf.Tensor], dict[str, tf.Tensor]]

# Formats tf.io.decode_image reads.
_TF_IMAGE_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})
_LARGE_IN_MEMORY_BYTES = 1 << 30


class Source(abc.ABC):
    """A labelled image dataset whose splits can be read example by example, in any order."""

    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def num_examples(self, split: str) -> int:
        """Number of examples in `split`."""

    @abc.abstractmethod
    def fetch_fn(self, split: str) -> FetchFn:
        """A TF-traceable function from an example index to its encoded image and label."""


class ArraySource(Source):
    """Splits held as arrays: `{split: (inputs (n, ...), labels (n,))}`; pp should be ''."""

    def __init__(self, splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str]):
        self._splits = {
            split: (np.asarray(x, np.float32), np.asarray(y, np.int32))
            for split, (x, y) in splits.items()
        }
        self.class_names = list(class_names)

    def num_examples(self, split: str) -> int:
        return len(self._splits[split][1])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs float32 (n, ...), labels int32 (n,)) of `split`."""
        return self._splits[split]

    def fetch_fn(self, split: str) -> FetchFn:
        inputs, labels = (tf.constant(a) for a in self._splits[split])
        return lambda i: {"image": tf.gather(inputs, i), "label": tf.gather(labels, i)}


def build_source(data_cfg) -> Source:
    """The source `config.data` names: an existing directory is an image folder, else TFDS."""
    if os.path.isdir(data_cfg.name):
        splits = [s for s in (data_cfg.train_split, data_cfg.get("eval_split")) if s]
        return ImageFolderSource(
            data_cfg.name,
            splits=splits,
            on_bad_image=data_cfg.get("on_bad_image", "fail"),
        )
    return TfdsSource(
        data_cfg.name,
        data_dir=data_cfg.get("data_dir"),
        image_key=data_cfg.get("image_key", "image"),
        label_key=data_cfg.get("label_key", "label"),
    )


class TfdsSource(Source):
    """A TFDS dataset, prepared on first use like `tfds.load` does."""

    def __init__(
        self,
        name: str,
        *,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        self._builder = _prepared_builder(name, data_dir)
        features = self._builder.info.features
        for key, kind in ((image_key, tfds.features.Image), (label_key, tfds.features.ClassLabel)):
            if key not in features or not isinstance(features[key], kind):
                raise ValueError(
                    f"TFDS dataset {name!r} has no {kind.__name__} feature {key!r}; its features: "
                    f"{dict(features.items())}"
                )
        self.class_names = list(features[label_key].names)
        self._image_key, self._label_key = image_key, label_key
        self._decoding = tfds.decode.PartialDecoding(
            {image_key: True, label_key: True}, decoders={image_key: tfds.decode.SkipDecoding()}
        )
        self._in_memory: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}

    def num_examples(self, split: str) -> int:
        return self._builder.info.splits[split].num_examples

    def fetch_fn(self, split: str) -> FetchFn:
        info = self._builder.info
        if not info.available_file_formats() & tfds.core.FileFormat.with_random_access():
            images, labels = self._read_into_memory(split)
            return lambda i: {"image": tf.gather(images, i), "label": tf.gather(labels, i)}

        records = self._builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
        features = tfds.features.FeaturesDict(
            {k: info.features[k] for k in (self._image_key, self._label_key)}
        )

        def fetch(i: tf.Tensor) -> dict[str, tf.Tensor]:
            serialized = tf.numpy_function(
                lambda i: records[int(i)], [i], tf.string, stateful=False
            )
            serialized.set_shape([])
            example = features.deserialize_example(serialized, decoders=self._decoding.decoders)
            return {
                "image": example[self._image_key],
                "label": tf.cast(example[self._label_key], tf.int32),
            }

        return fetch

    def _read_into_memory(self, split: str) -> tuple[tf.Tensor, tf.Tensor]:
        if split not in self._in_memory:
            images, labels = [], []
            dataset = self._builder.as_dataset(split, decoders=self._decoding)
            for batch in dataset.batch(1024).as_numpy_iterator():
                images.extend(batch[self._image_key])
                labels.extend(batch[self._label_key])
            size = sum(map(len, images))
            if size > _LARGE_IN_MEMORY_BYTES:
                warnings.warn(
                    f"{self._builder.name} split {split!r} was prepared as "
                    f"{self._builder.info.file_format.value}, without random access: holding its "
                    f"{size / 2**30:.1f} GiB of encoded images in memory. Convert it with "
                    f"`tfds convert_format --dataset_dir={self._builder.data_dir} "
                    "--out_file_format=array_record` to read it from disk.",
                    stacklevel=3,
                )
            self._in_memory[split] = (
                tf.constant(np.array(images, dtype=object)),
                tf.constant(np.array(labels, dtype=np.int32)),
            )
        return self._in_memory[split]


def _prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.DatasetNotFoundError, ValueError) as e:  # ValueError: unparsable name
        raise ValueError(
            f"{name!r} is neither an existing directory (image folder) nor a TFDS dataset: "
            f"{str(e).splitlines()[0]}"
        ) from e
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except OSError:
            # Several processes sharing a data_dir prepare at once; TFDS's final rename fails for
            # all but the first, which is fine when that one has finished.
            builder = tfds.builder(name, data_dir=data_dir)
            if not builder.is_prepared():
                raise
    return builder


class ImageFolderSource(Source):
    """Images in `root/<split>/<class>/<file>`; classes are the train split's subdirectories.

    Each listed split must use the first split's class list (a class directory missing from a
    split is fine, an unknown one is an error). Files are sorted by class, then name; hidden
    files and nested directories are ignored. Any file TF cannot decode is an error naming it
    (`on_bad_image='fail'`) or is dropped with a warning naming it (`'skip'`).
    """

    def __init__(self, root: str, *, splits: Iterable[str], on_bad_image: str = "fail"):
        if on_bad_image not in ("fail", "skip"):
            raise ValueError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        splits = list(splits)
        self.root = root
        self.class_names = _subdirs(_split_dir(root, splits[0]))
        self._splits = {s: self._scan(s, on_bad_image) for s in splits}

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
            raise KeyError(
                f"split {split!r} was not loaded from {self.root}; loaded: {list(self._splits)}"
            )
        return self._splits[split]

    def _scan(self, split: str, on_bad_image: str) -> tuple[list[str], np.ndarray]:
        split_dir = _split_dir(self.root, split)
        unknown = sorted(set(_subdirs(split_dir)) - set(self.class_names))
        if unknown:
            raise ValueError(
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
            problems = list(pool.map(_unreadable_reason, paths))
        bad = [f"{p} ({why})" for p, why in zip(paths, problems, strict=True) if why]
        if bad and on_bad_image == "fail":
            raise ValueError(
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
        raise ValueError(f"no split directory {path}; {root} has {_subdirs(root)}")
    return path


def _subdirs(path: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(path)
        if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
    )


def _unreadable_reason(path: str) -> str | None:
    """Why TF could not decode the image at `path`, or None when it can."""
    try:
        with Image.open(path) as image:
            if image.format not in _TF_IMAGE_FORMATS:
                return f"{image.format} is not a format tf.io.decode_image reads"
            image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reading every byte
            image.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(e).__name__}: {e}"
    return None
