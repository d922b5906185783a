"""What every evaluator is built from (`Context`) and what it offers (`Evaluator.run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from jtransfer import data, sharding
from jtransfer.tasks import Task

MAIN = "eval"  # the name of the run's main evaluator


class Evaluator(Protocol):
    def run(self, variables: Mapping[str, Any]) -> dict[str, float]:
        """Metrics of the model with `variables` ({'params', 'batch_stats'}, on the devices)."""


@dataclasses.dataclass(frozen=True)
class Context:
    """What evaluators are built from: the run's task, inference model, data and devices.

    `head_inputs(split, pp)`, when the run trains its head on cached backbone features, gives
    those features' evaluation batches; the model then applies only its head to them.
    """

    task: Task
    model: nn.Module
    source: data.Source
    mesh: Mesh
    config: ml_collections.ConfigDict
    head_inputs: Callable[[str, str], data.EvalBatches] | None = None

    def split_and_pp(self, options: Mapping[str, Any]) -> tuple[str, str]:
        return (
            options.get("split", self.config.data.eval_split),
            options.get("pp", self.config.pp_eval),
        )

    def batches(self, split: str, pp: str) -> data.EvalBatches:
        """Evaluation batches of `split` under `pp`: images, or the cached head inputs."""
        if self.head_inputs is not None:
            return self.head_inputs(split, pp)
        return data.eval_batches(self.source, split, pp, self.config.eval_batch_size)

    def outputs_fn(self) -> Callable[[dict, jax.Array], Any]:
        """`(variables, inputs) -> outputs` of the inference model (its head alone on cached
        features), to be jitted by the evaluator with whatever it computes from them."""
        model = self.model
        if self.head_inputs is not None:
            return lambda v, x: model.apply(
                v, x, train=False, method=lambda m, f, train: m.head(f, train=train)
            )
        return lambda v, x: model.apply(v, x, train=False)


def sum_over_batches(
    step: Callable[[Mapping[str, Any], dict], dict], variables, batches, mesh: Mesh
) -> dict[str, Any]:
    """The sums `step(variables, global batch)` returns, added over `batches` (this process's
    shares of padded evaluation batches), fetched to the host."""
    totals = None
    for batch in batches:
        out = step(variables, sharding.global_batch(batch, mesh))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    if totals is None:
        raise ValueError("no evaluation batches")
    return jax.device_get(totals)
