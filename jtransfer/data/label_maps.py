"""From a dataset's own labels to the run's class ids: class maps and mask value maps.

Datasets name their classes in their own way (VOC xml `<name>`, COCO category ids, TFDS
`ClassLabel`s, the class-id column of a list file) and encode masks with their own values (the
Oxford pets trimap: 1 pet, 2 background, 3 boundary). A run wants contiguous class ids
`0..K-1`, in the order of `class_names`, and one ignore value for pixels that count nowhere.
Two small maps from the config make that translation and nothing else:

- `class_map` {dataset class: run class, or None to drop its objects} renames and merges
  (`{'cat': 'head', 'dog': 'head'}`); names it does not mention keep their own;
- `classes`, when given, fixes the run's class names and their order; otherwise they are the
  mapped names of the classes found in the data, in the dataset's order where it has one (TFDS
  `ClassLabel`s, COCO category ids), else in the sorted order of the dataset's names
  (numerically when all are integers, as list-file class ids).

A mask value map {dataset value: class id or ignore label} becomes a lookup table applied
in-graph; a value it does not map is an error at the example that has it (masks are decoded
in the input pipeline, never at startup).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from jtransfer.data.base import DataError

DROP = -1  # class id of an object whose class the class map drops


def _natural_sorted(names: Iterable[str]) -> list[str]:
    """Sorted names, numerically when every name is an integer ('2' before '10')."""
    names = sorted(set(names))
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return names


class ClassIndex:
    """Dataset class names -> the run's class ids (or `DROP`), from `class_map` and `classes`."""

    def __init__(
        self,
        dataset_names: Iterable[str],
        class_map: Mapping | None = None,
        classes: Sequence[str] | None = None,
        *,
        ordered: bool = False,
    ):
        """`dataset_names`: the class names the data uses, in the dataset's order if `ordered`."""
        self._map = {str(k): (None if v is None else str(v)) for k, v in (class_map or {}).items()}
        if classes:
            self.class_names = [str(c) for c in classes]
            unknown = sorted(
                {v for v in self._map.values() if v is not None} - set(self.class_names)
            )
            if unknown:
                raise DataError(
                    f"data.class_map maps to {unknown}, which are not in data.classes "
                    f"{self.class_names}"
                )
        else:
            names = list(dataset_names) if ordered else _natural_sorted(dataset_names)
            mapped = (self.mapped(n) for n in names)
            self.class_names = list(dict.fromkeys(m for m in mapped if m is not None))
        self._ids = {name: i for i, name in enumerate(self.class_names)}

    def mapped(self, name: str) -> str | None:
        """The run's class name for the dataset's `name` (None: dropped)."""
        return self._map.get(name, name)

    def id(self, name: str, where: str) -> int:
        """The class id of the dataset's class `name`, met in `where` (a file), or `DROP`."""
        mapped = self.mapped(name)
        if mapped is None:
            return DROP
        if mapped not in self._ids:
            via = f" (mapped to {mapped!r} by data.class_map)" if mapped != name else ""
            raise DataError(
                f"{where}: class {name!r}{via} is not in the label map {self.class_names}; "
                "list it in data.classes or map it with data.class_map"
            )
        return self._ids[mapped]

    def table(self, dataset_names: Sequence[str], where: str) -> np.ndarray:
        """int32 (len(dataset_names),): the id of each dataset class, by its dataset index."""
        return np.array([self.id(n, where) for n in dataset_names], np.int32)


def check_classification_classes(
    class_names: Sequence[str], train_labels: Sequence[int], where: str
) -> None:
    """A classifier needs two classes or more, each with training examples: with one, the loss
    is exactly 0; a class without examples is an output the head can never learn."""
    if len(class_names) < 2:
        raise DataError(
            f"{where} has {len(class_names)} class(es) {list(class_names)}; a classifier needs "
            "at least two"
        )
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=len(class_names))
    empty = [c for c, n in zip(class_names, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"{where}: classes {empty} have no training images; remove or fill them")


def _int_keys(values: Mapping) -> dict[int, int]:
    try:
        return {int(k): int(v) for k, v in values.items()}
    except (TypeError, ValueError) as e:
        raise DataError(
            f"data.mask_values must map integer mask values to class ids, got {dict(values)}"
        ) from e


def mask_table(
    num_classes: int, ignore_label: int, mask_values: Mapping | None = None
) -> np.ndarray:
    """int32 lookup table: dataset mask value -> class id or ignore label; -1 for the rest, and
    for every value past the table (the last entry)."""
    valid = [*range(num_classes), ignore_label]
    if mask_values:
        pairs = _int_keys(mask_values)
        bad = sorted({v for v in pairs.values() if v not in valid})
        if bad:
            raise DataError(
                f"data.mask_values maps to {bad}; valid targets are the class ids "
                f"0..{num_classes - 1} and the ignore label {ignore_label}"
            )
        if min(pairs) < 0:
            raise DataError(f"data.mask_values has negative mask values {sorted(pairs)}")
    else:
        pairs = {v: v for v in valid}
    table = np.full(max(pairs) + 2, -1, np.int32)
    table[list(pairs)] = list(pairs.values())
    return table


def map_mask(raw: tf.Tensor, table: np.ndarray, where: str | tf.Tensor) -> tf.Tensor:
    """Dataset mask values (any int dtype) -> int32 class ids via `table`; a value the table does
    not map fails the pipeline with a message naming `where` and the values it maps."""
    index = tf.minimum(tf.cast(raw, tf.int32), len(table) - 1)
    mapped = tf.gather(tf.constant(table), index)
    known = [v for v in range(len(table) - 1) if table[v] >= 0]
    check = tf.debugging.Assert(
        tf.reduce_all(mapped >= 0),
        [
            f"a segmentation mask has values outside data.mask_values / the class ids {known}:",
            where,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(mapped)
