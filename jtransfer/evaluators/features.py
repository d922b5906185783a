"""Frozen features of a whole split, gathered to the host in dataset order.

Evaluation batches are padded to whole global batches (`jtransfer.data.eval_batches`), and each
process holds only its rows. So every batch is made global, run through the feature function,
and features, labels and mask are all gathered to every process as full global arrays before the
padded rows are dropped: with several processes each one ends up with the same complete
`(n, C)` matrix, in the order of the split. Feature-based evaluators (few-shot ridge, a cached
linear probe) then work on plain numpy and need not know about devices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jtransfer import sharding


def extract_features(
    feature_fn: Callable[[jax.Array], jax.Array],
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: Mesh,
) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, C), labels int (n,)) of the rows with mask 1, in order.

    `batches` are this process's shares of padded batches {'image', 'label', 'mask'};
    `feature_fn` maps global images (B, H, W, 3) to (B, C) features (any sharding, typically a
    jitted function with replicated output).
    """
    features, labels = [], []

    def gather(out: jax.Array, batch: Mapping[str, jax.Array]) -> None:
        # tiled=True: a global array comes back whole on every process, not stacked per process.
        out, label, mask = multihost_utils.process_allgather(
            (out, batch["label"], batch["mask"]), tiled=True
        )
        keep = np.asarray(mask) > 0
        features.append(np.asarray(out, np.float32)[keep])
        labels.append(np.asarray(label)[keep])

    # One batch in flight: batch k+1 is dispatched before batch k's features are waited for,
    # so the input pipeline prepares k+2 while the device computes.
    pending = None
    for batch in batches:
        batch = sharding.global_batch(batch, mesh)
        out = feature_fn(batch["image"])
        if pending:
            gather(*pending)
        pending = out, batch
    if not pending:
        raise ValueError("no batches to extract features from")
    gather(*pending)
    return np.concatenate(features), np.concatenate(labels)
