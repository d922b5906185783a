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
from collections.abc import Callable

import jax

from jtransfer import data
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


def feature_source(
    feature_fn: Callable[[jax.Array], jax.Array],
    source: data.Source,
    splits: dict[str, str],
    batch_size: int,
    mesh,
) -> data.ArraySource:
    """An `ArraySource` holding, for each `split: pp`, the features of every example in order."""
    arrays = {}
    for split, pp in splits.items():
        batches = data.eval_batches(source, split, pp, batch_size)
        arrays[split] = extract_features(feature_fn, batches, mesh)
    return data.ArraySource(arrays, source.class_names)
