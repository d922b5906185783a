"""What every example source is: named splits read example by example, and the features it yields.

The pipeline owns the order (a pure function of seed and step) and asks a source only for
"example i of split s", through a function traced into a `tf.data` map, so that skipping
examples costs nothing and decoding runs in parallel. A source answers with a dict of features
under the names the tasks use (`FEATURES`); the image stays encoded until the `decode`
preprocessing op, the other features arrive decoded and in the run's label space.

`check_split` is the cheap startup check the trainer runs before it writes anything: a split that
does not exist or is empty would otherwise fail only when it is first read, after training.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import tensorflow as tf

from jtransfer.errors import JTransferError

# The features a source may yield, as they leave `fetch_fn` (before preprocessing):
FEATURES = {
    "image": "encoded image bytes, tf.string scalar (decoded by the `decode` op)",
    "label": "int32 scalar, the class id (classification)",
    "segmentation": "int32 (H, W, 1) class ids or the source's ignore_label (segmentation)",
    "boxes": "float32 (N, 4) [ymin, xmin, ymax, xmax] normalised to [0, 1] (detection)",
    "classes": "int32 (N,), the class id of each box (detection)",
}
IGNORE_LABEL = 255  # default segmentation value of pixels that count in no loss or metric

# index (int64 scalar tensor) -> {feature name: tensor}
FetchFn = Callable[[tf.Tensor], dict[str, tf.Tensor]]


class DataError(JTransferError):
    """A dataset, split, annotation file or preprocessing string that cannot work as given."""


class Source(abc.ABC):
    """A dataset whose splits can be read example by example, in any order."""

    class_names: list[str]
    features: frozenset[str] = frozenset({"image", "label"})  # names `fetch_fn` yields
    ignore_label: int = IGNORE_LABEL  # segmentation: the value of pixels that do not count

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @abc.abstractmethod
    def num_examples(self, split: str) -> int:
        """Number of examples in `split`; a `DataError` naming the splits there are if none."""

    @abc.abstractmethod
    def fetch_fn(self, split: str) -> FetchFn:
        """A TF-traceable function from an example index to the example's features."""

    def check_split(self, split: str) -> None:
        """Raises a `DataError` unless `split` exists and has at least one example."""
        if self.num_examples(split) == 0:
            raise DataError(
                f"split {split!r} of {self.describe()} has no examples; its splits: {self.splits()}"
            )

    def splits(self) -> list[str]:
        """The names of the splits the dataset has, for messages."""
        return []

    def describe(self) -> str:
        """How messages name this dataset."""
        return type(self).__name__
