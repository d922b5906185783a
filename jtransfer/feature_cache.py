"""The cached-feature linear probe: run the frozen backbone once, train the head on its output.

When nothing below the head trains and the backbone computes the same features for an example
every time it sees it, a step-by-step linear probe spends nearly all its time recomputing those
features. Here they are computed once per split and held as an `ArraySource`. The head then
trains on the devices alone (`ScannedTraining`): the features stay there, each compiled call
runs whole epochs of steps as a `lax.scan`, and each step gathers the global batch the
step-by-step probe would get, by the same index arithmetic (`data.global_batch_indices`), so
the head's update is the same as the step-by-step probe's, up to floating-point reassociation.
A head step is microseconds of arithmetic; driven from Python, one step at a time, it cost
milliseconds of dispatch and logging each. Checkpoints (of the head: the frozen backbone is
left out, `pretrained.frozen`) and evaluations fall on the epoch boundaries between calls.

"The same features every time" needs three things, checked by `reasons_not_to_cache`: a
deterministic train preprocessing, every BatchNorm layer of the backbone in inference mode for
the whole run (`norm_eval`), and a single phase in which only `head/...` parameters train.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jtransfer import data, sharding
from jtransfer.console import say
from jtransfer.evaluators.features import extract_features
from jtransfer.phase import Phase, State
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
    held = norm_eval.always_held(batch_stats, norm_eval.phase_starts())
    training_bn = sorted(
        {
            p.rsplit("/", 1)[0]
            for p in flatten(batch_stats)
            if p.startswith("backbone/") and p not in held
        }
    )
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
        self._apply = lambda images: features(placed, images)
        self._source, self._mesh, self._batch_size = source, layout.mesh, batch_size
        self._cached: dict[tuple[str, str], data.ArraySource] = {}

    def source(self, split: str, pp: str) -> data.ArraySource:
        if (split, pp) not in self._cached:
            first = []  # the first call compiles (a new shape), then dispatches asynchronously

            def apply(images):
                began = time.perf_counter()
                out = self._apply(images)
                if not first:
                    first.append(time.perf_counter() - began)
                return out

            began = time.perf_counter()
            batches = data.eval_batches(self._source, split, pp, self._batch_size)
            arrays = {split: extract_features(apply, batches, self._mesh)}
            seconds, n = time.perf_counter() - began, len(arrays[split][1])
            say(
                f"cached backbone features of {split}: {n} examples in {seconds:.1f} s, "
                f"{first[0]:.1f} s of it compiling ({n / (seconds - first[0]):.0f} img/s after)"
            )
            self._cached[split, pp] = data.ArraySource(arrays, self._source.class_names)
        return self._cached[split, pp]

    def eval_batches(self, split: str, pp: str) -> data.EvalBatches:
        return data.eval_batches(self.source(split, pp), split, "", self._batch_size)


class ScannedTraining:
    """The head's training on a split's cached features, held on the devices: `chunk` steps
    per compiled call (`Phase.scanned`, a `lax.scan`), on the global batches the step-by-step
    probe would get (`data.global_batch_indices`). Every call has the same length, so the run
    compiles one program; a chunk cut short (the run's end, a resumed start) pads the rest
    with steps that change nothing."""

    def __init__(
        self, source: data.ArraySource, split: str, global_batch_size: int, seed: int, mesh, chunk
    ):
        inputs, labels = source.arrays(split)
        replicated = sharding.replicated(mesh)
        self._inputs = jax.device_put(inputs, replicated)
        self._labels = jax.device_put(labels, replicated)
        self._batch, self._seed, self.chunk = global_batch_size, seed, chunk

    def stop(self, step: int, total_steps: int) -> int:
        """Where the chunk that starts at `step` ends: the next multiple of `chunk`."""
        return min(total_steps, (step // self.chunk + 1) * self.chunk)

    def run(self, phase: Phase, state: State, start: int, stop: int) -> tuple[State, dict]:
        """Steps `start`..`stop - 1`; their metrics stacked along the steps (device arrays)."""
        n = len(self._labels)
        indices = data.global_batch_indices(n, self._batch, self._seed, start, start + self.chunk)
        valid = np.arange(self.chunk) < stop - start
        return phase.scanned(state, self._inputs, self._labels, indices, valid)


def chunk_steps(checkpoint_every: int, eval_every: int, steps_per_epoch: int, total: int) -> int:
    """Steps per compiled call of the cached probe: whole epochs, enough to reach the next
    checkpoint or evaluation, which then fall on the epoch boundary at or after their step;
    the whole run when there are neither."""
    every = [e for e in (checkpoint_every, eval_every) if e]
    if not every:
        return total
    epochs = -(-min(every) // steps_per_epoch)
    return min(total, epochs * steps_per_epoch)
