"""Training and evaluation batches: which examples, in what order, on which process.

The order is decided by index arithmetic before anything is read, so resuming at any step skips
nothing but integers:
- epoch e visits `np.random.default_rng([seed, e]).permutation(n)`, cut into `n // G` global
  batches of G examples (the remainder of each epoch is dropped); global step t is global batch t;
- process p of P takes the contiguous slice `[p*b, (p+1)*b)` of each global batch, b = G // P;
- random preprocessing is seeded from (seed, step, position in the global batch).
The global batch at step t is thus the same for any process count and after any resume.

Evaluation visits every example once in a fixed order, `ceil(n / G)` global batches, the last
padded with copies of a real example under mask 0, so every process runs the same number of
same-shaped batches.

The indices feed a `tf.data` pipeline: fetch by index from the source, preprocess in a parallel
(deterministic) map, batch, prefetch, yield numpy. A batch holds 'image' float32 (b, H, W, 3)
and the source's other features after preprocessing: 'label' int32 (b,), 'segmentation' int32
(b, H, W) with the source's ignore label where pixels do not count (padding included),
'boxes' float32 (b, M, 4) and 'classes' int32 (b, M) with -1 in padding slots (`pad_boxes(M)`
makes M static; without it the batch cannot form, which is an error naming the op).

Training batches of an `ArraySource` with no preprocessing (cached features) skip `tf.data` and
are gathered with numpy from the same indices: a per-example map costs milliseconds per batch,
more than the head step they feed.
"""

import os
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf

from jtransfer.data.base import IGNORE_LABEL, DataError, FetchFn, Source
from jtransfer.data.geometry import PAD_LABEL
from jtransfer.data.preprocess import parse_pp
from jtransfer.data.sources import ArraySource

try:
    # TF only feeds the host; on a GPU build it would otherwise reserve GPU memory JAX needs.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF's devices were initialised before this import; too late to hide them.
    pass

Batch = dict[str, np.ndarray]

# Without tf.data's autotuning: deleting an iterator waits for autotuning's background thread,
# which at times sleeps through the cancellation; measured at the end of training runs, 17-40 s
# before the process could exit. A fixed parallelism (one decode per core) and two batches of
# prefetch feed the train step as fast on this machine.
_PARALLEL_CALLS = (
    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)
_OPTIONS = tf.data.Options()
_OPTIONS.autotune.enabled = False


def train_batches(
    source: Source,
    split: str,
    pp: str,
    global_batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
    """Endless batches of this process's share, from global step `start_step`.

    `image` is float32 (b, H, W, 3) whatever the pp (its `value_range` op picks the scale),
    `label` int32 (b,) (or the source's other features), b = global_batch_size // process_count.
    """
    p, b = _process_share(global_batch_size, process_index, process_count)
    n = source.num_examples(split)
    steps_per_epoch = n // global_batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"split {split!r} has {n} examples, fewer than one global batch of {global_batch_size}"
        )

    def indices() -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            epoch, first = divmod(step, steps_per_epoch)
            order = epoch_order(n, seed, epoch)
            for k in range(first, steps_per_epoch):
                lo = k * global_batch_size + p * b
                yield {
                    "index": order[lo : lo + b],
                    "step": np.full(b, step),
                    "pos": np.arange(p * b, (p + 1) * b),
                }
                step += 1

    if isinstance(source, ArraySource) and not pp:
        inputs, labels = source.arrays(split)
        return ({"image": inputs[i["index"]], "label": labels[i["index"]]} for i in indices())
    spec = tf.TensorSpec((b,), tf.int64)
    dataset = tf.data.Dataset.from_generator(
        indices, output_signature={"index": spec, "step": spec, "pos": spec}
    )
    return _batched(dataset.unbatch(), source, split, pp, seed, b).as_numpy_iterator()


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the `n` training examples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batch_indices(n: int, global_batch_size: int, seed: int, start: int, stop: int):
    """The example indices of the global batches of steps `start`..`stop - 1`, (steps, G): the
    batches `train_batches` makes, as integers (for data that is already on the devices)."""
    steps_per_epoch = n // global_batch_size
    out = np.empty((stop - start, global_batch_size), np.int32)
    for step in range(start, stop):
        epoch, k = divmod(step, steps_per_epoch)
        if step == start or k == 0:
            order = epoch_order(n, seed, epoch)
        out[step - start] = order[k * global_batch_size : (k + 1) * global_batch_size]
    return out


class EvalBatches:
    """Re-iterable evaluation batches {'image', 'label', 'mask'}; `len` is the batch count."""

    def __init__(self, dataset: tf.data.Dataset, num_batches: int):
        self._dataset = dataset
        self._num_batches = num_batches

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[Batch]:
        return self._dataset.as_numpy_iterator()


def eval_batches(
    source: Source,
    split: str,
    pp: str,
    global_batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> EvalBatches:
    """Every example of `split` once, in order, padded to whole global batches (mask 0)."""
    p, b = _process_share(global_batch_size, process_index, process_count)
    source.check_split(split)
    n = source.num_examples(split)
    num_batches = -(-n // global_batch_size)
    position = np.arange(num_batches * global_batch_size).reshape(num_batches, -1)
    position = position[:, p * b : (p + 1) * b].ravel()
    examples = {
        "index": np.minimum(position, n - 1),
        "step": position // global_batch_size,
        "pos": position % global_batch_size,
        "mask": (position < n).astype(np.float32),
    }
    dataset = tf.data.Dataset.from_tensor_slices(examples)
    return EvalBatches(_batched(dataset, source, split, pp, 0, b), num_batches)


def _process_share(
    global_batch_size: int, process_index: int | None, process_count: int | None
) -> tuple[int, int]:
    """(this process's index, its per-process batch size)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise DataError(
            f"global batch size {global_batch_size} is not divisible by process count {count}"
        )
    if not 0 <= index < count:
        raise DataError(f"process index {index} is not in [0, {count})")
    return index, global_batch_size // count


def _batched(
    dataset: tf.data.Dataset, source: Source, split: str, pp: str, seed: int, b: int
) -> tf.data.Dataset:
    """Per-example {'index', 'step', 'pos'[, 'mask']} -> preprocessed batches of b."""
    fetch: FetchFn = source.fetch_fn(split)
    preprocess = parse_pp(pp)
    seed = tf.constant(seed, tf.int64)
    ignore_label = getattr(source, "ignore_label", IGNORE_LABEL)

    def example(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        features = fetch(ex["index"])
        features["_seed"] = tf.random.experimental.stateless_fold_in(
            tf.stack([seed, ex["step"]]), ex["pos"], alg="philox"
        )
        out = {k: v for k, v in preprocess(features).items() if not k.startswith("_")}
        out["image"] = tf.cast(out["image"], tf.float32)
        if "segmentation" in out:
            mask = tf.squeeze(tf.cast(out["segmentation"], tf.int32), -1)
            out["segmentation"] = tf.where(mask == PAD_LABEL, ignore_label, mask)
        if "mask" in ex:
            out["mask"] = ex["mask"]
        return out

    dataset = dataset.map(example, num_parallel_calls=_PARALLEL_CALLS, deterministic=True)
    spec = dataset.element_spec
    if "boxes" in spec and spec["boxes"].shape[0] is None:
        raise DataError(
            f"examples of {source.describe()} carry a varying number of boxes, which cannot be "
            f"batched: end the pp {pp!r} with pad_boxes(M), M the most boxes an image keeps"
        )
    return dataset.batch(b, drop_remainder=True).prefetch(2).with_options(_OPTIONS)
