"""Top-1 accuracy and mean cross-entropy over an evaluation split.

Each batch's jitted step returns sums (loss, correct predictions, real examples) over the rows
its padding mask keeps, so the totals over all batches count every example exactly once at any
device and process count. The loss is the plain cross-entropy, without the label smoothing of
training, so that it compares across runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jtransfer import sharding
from jtransfer.evaluators.base import Context, sum_over_batches
from jtransfer.tasks import cross_entropy


class AccuracyEvaluator:
    """Options: `split`, `pp`. Metrics: accuracy, loss, count."""

    def __init__(self, options: Mapping[str, Any], context: Context):
        self._split_and_pp = context.split_and_pp(options)
        self._batches = None  # made at the first run: cached features are evaluation work
        self._context = context
        self._mesh = context.mesh
        outputs = context.outputs_fn()

        def step(variables, batch):
            logits = outputs(variables, batch["image"])
            mask = batch["mask"].astype(jnp.float32)
            return {
                "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
                "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
                "count": jnp.sum(mask),
            }

        self._step = jax.jit(step, out_shardings=sharding.replicated(context.mesh))

    def run(self, variables: Mapping[str, Any]) -> dict[str, float]:
        variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        if self._batches is None:
            self._batches = self._context.batches(*self._split_and_pp)
        totals = sum_over_batches(self._step, variables, self._batches, self._mesh)
        count = float(totals["count"])
        return {
            "accuracy": float(totals["correct"]) / count,
            "loss": float(totals["loss"]) / count,
            "count": count,
        }
