"""Fewer labels: the training split cut to k examples of each class, or to p percent of each.

Why a per-class draw and not only split slicing: `train[:10%]` (TFDS slicing, which the folder
formats share) takes the first examples in the split's order, and an image folder lists its
files class by class, so its first 10 % is one class. A draw per class keeps every class and
the split's class balance, and works the same for every source, since it needs only the labels.

How it is drawn, so that every process of a run draws the same subset without talking to the
others: the labels of the split are read in index order (one pass over the split, images read
but not decoded), and class c's examples are ordered by `np.random.default_rng([seed, c])`; the
subset is the first k of each class's order (k = `shots_per_class`, or `percent_per_class` of
the class's size, rounded, at least one). So a smaller subset is nested in a larger one of the
same seed (the 1-shot example is among the 5 shots), and the seed (`data.subset_seed`) is its
own: the same subset can be trained with several seeds, or each seed can draw its own.

The subset is a view (`SubsetSource`): index i of the cut split is the i-th selected index of
the whole split, in increasing order, so the pipeline's order arithmetic, resuming and the
per-process shares work on it unchanged.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from jtransfer.data.base import DataError, FetchFn, Source


def split_labels(source: Source, split: str) -> np.ndarray:
    """int64 (n,): the class id of every example of `split`, in index order."""
    fetch = source.fetch_fn(split)
    labels = (
        tf.data.Dataset.range(source.num_examples(split))
        .map(lambda i: fetch(i)["label"], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(4096)
    )
    return np.concatenate([np.zeros(0, np.int64), *(b for b in labels.as_numpy_iterator())])


def per_class_indices(
    labels: np.ndarray,
    class_names: list[str],
    *,
    shots: int = 0,
    percent: float = 100.0,
    seed: int = 0,
    where: str = "the training split",
) -> np.ndarray:
    """Sorted indices into `labels`: `shots` of each class, or `percent` of each (rounded, at
    least one); class c's are the first of `default_rng([seed, c]).permutation`."""
    counts = np.bincount(labels, minlength=len(class_names))
    if shots:
        short = [f"{class_names[c]!r} ({n})" for c, n in enumerate(counts) if n < shots]
        if short:
            raise DataError(
                f"data.shots_per_class={shots}, but {where} has fewer examples of class "
                f"{', '.join(short)}; at most {int(counts.min())} shots per class"
            )
    chosen = []
    for c, n in enumerate(counts):
        k = shots if shots else max(1, round(n * percent / 100))
        members = np.flatnonzero(labels == c)
        chosen.append(members[np.random.default_rng([seed, c]).permutation(n)[: min(k, n)]])
    return np.sort(np.concatenate(chosen))


def check_fields(shots: int, percent: float) -> None:
    """`shots_per_class` a whole number >= 0 and `percent_per_class` in (0, 100], not both."""
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 0:
        raise DataError(f"data.shots_per_class must be a whole number >= 0 (0: off), got {shots!r}")
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent <= 100:
        raise DataError(f"data.percent_per_class must be in (0, 100] (100: all), got {percent!r}")
    if shots and percent != 100:
        raise DataError(
            f"set data.shots_per_class ({shots}) or data.percent_per_class ({percent}), not both"
        )


class SubsetSource(Source):
    """`source` with split `split` cut to the examples at `indices` (sorted)."""

    def __init__(self, source: Source, split: str, indices: np.ndarray, what: str):
        self._source, self._split, self._what = source, split, what
        self.indices = np.asarray(indices, np.int64)
        self.class_names = source.class_names
        self.features = source.features
        self.ignore_label = source.ignore_label

    def num_examples(self, split: str) -> int:
        return len(self.indices) if split == self._split else self._source.num_examples(split)

    def fetch_fn(self, split: str) -> FetchFn:
        fetch = self._source.fetch_fn(split)
        if split != self._split:
            return fetch
        indices = tf.constant(self.indices)
        return lambda i: fetch(tf.gather(indices, i))

    def splits(self) -> list[str]:
        return self._source.splits()

    def describe(self) -> str:
        return f"{self._source.describe()} ({self._what} of split {self._split!r})"


def subset(source: Source, data_cfg) -> Source:
    """`source` with its training split cut as `config.data` says (`shots_per_class`,
    `percent_per_class`, `subset_seed`); `source` itself when neither is set."""
    shots = data_cfg.get("shots_per_class", 0)
    percent = data_cfg.get("percent_per_class", 100.0)
    check_fields(shots, percent)
    if not shots and percent == 100:
        return source
    split = data_cfg.train_split
    if "label" not in source.features:
        raise DataError(
            f"data.shots_per_class and data.percent_per_class draw per class label, but "
            f"{source.describe()} yields {sorted(source.features)} (no 'label')"
        )
    labels = split_labels(source, split)
    indices = per_class_indices(
        labels,
        source.class_names,
        shots=shots,
        percent=percent,
        seed=data_cfg.get("subset_seed", 0),
        where=f"split {split!r} of {source.describe()}",
    )
    what = f"{shots} per class" if shots else f"{percent:g}% of each class"
    return SubsetSource(source, split, indices, what)
