"""The cached-feature linear probe: run the frozen backbone once, train the head on its output.

When nothing below the head trains and the backbone computes the same features for an example
every time it sees it, a step-by-step linear probe spends nearly all its time recomputing those
features. Here they are computed once per split and held as an `ArraySource`, so the head trains
on batches made by the same pipeline, in the same order and per-process shares, as the image
batches would have been; the head's update is then the same as the step-by-step probe's, up to
floating-point reassociation.

"The same features every time" needs three things, checked by `reasons_not_to_cache`: a
deterministic train preprocessing, every BatchNorm layer of the backbone in inference mode for
the whole run (`norm_eval`), and a single phase in which only `head/...` parameters train.
"""

from __future__ import annotations

import re
import time

import jax

from jtransfer import data, sharding
from jtransfer.console import say
from jtransfer.evaluators.features import extract_features
from jtransfer.policy import NormEval, Policy, flatten


def reasons_not_to_cache(
    policy: Policy, norm_eval: NormEval, params: dict, batch_stats: dict, pp_train: str
) -> list[str]:
    """Why the backbone's features could change during the run (empty: they cannot)."""
    reasons = []
    if len(policy.phase_starts()) > 1 or len(norm_eval.phase_starts()) > 1:
        reasons.append("the run has several phases")
    trained = [p for p, t in flatten(policy.trainable_mask(params)).items() if t]
    below_head = [p for p in trained if not p.startswith("head/")]
    if below_head:
        reasons.append(f"parameters below the head train: {below_head[:3]}...")
    held = norm_eval.regex(0)
    layers = sorted(
        {p.rsplit("/", 1)[0] for p in flatten(batch_stats) if p.startswith("backbone/")}
    )
    training_bn = [layer for layer in layers if not (held and re.search(held, layer))]
    if training_bn:
        reasons.append(
            f"BatchNorm layers not in norm_eval update their statistics: {training_bn[:3]}..."
        )
    if not data.is_deterministic(pp_train):
        reasons.append(f"pp_train {pp_train!r} has random ops")
    return reasons


class Cache:
    """Backbone features of the run's splits, each computed once, at its first use.

    `source(split, pp)` is the train split as an `ArraySource` of features (computed now);
    `eval_batches(split, pp)` the evaluation batches of a split's features (computed when an
    evaluator first asks: extracting the eval split is evaluation work, not training the head).
    """

    def __init__(self, model, variables: dict, source: data.Source, layout, batch_size: int):
        placed = jax.device_put(variables, layout.like(variables))
        replicated = sharding.replicated(layout.mesh)
        features = jax.jit(
            lambda v, x: model.apply(v, x, train=False, method="features"),
            out_shardings=replicated,
        )
        self._features = lambda images: features(placed, images)
        self._source, self._mesh, self._batch_size = source, layout.mesh, batch_size
        self._cached: dict[tuple[str, str], data.ArraySource] = {}

    def source(self, split: str, pp: str) -> data.ArraySource:
        if (split, pp) not in self._cached:
            began = time.perf_counter()
            batches = data.eval_batches(self._source, split, pp, self._batch_size)
            arrays = {split: extract_features(self._features, batches, self._mesh)}
            say(f"cached backbone features of {split} in {time.perf_counter() - began:.1f} s")
            self._cached[split, pp] = data.ArraySource(arrays, self._source.class_names)
        return self._cached[split, pp]

    def eval_batches(self, split: str, pp: str) -> data.EvalBatches:
        return data.eval_batches(self.source(split, pp), split, "", self._batch_size)
