"""Compiled cost of a strategy's train step: XLA's FLOPs count and the wall time per step.

Invariant 2 of DESIGN.md (frozen layers cost no backward) is proved by the compiled step's
`cost_analysis()`, not by reading code; the test and `scripts/benchmark.py freeze` both build
the step here with `phase.build_phase`, exactly as the trainer builds it (same policy,
optimizer, mask and step function), so what they measure is what a run executes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax

from jtransfer import base_config, tasks
from jtransfer.phase import build_phase
from jtransfer.policy import NormEval, Policy


def strategy_config(
    model: str, policy: Sequence[Sequence[Any]], **fields: Any
) -> ml_collections.ConfigDict:
    """The base config with `model`, the policy `pairs` and any other `fields` set (SGD with
    momentum, lr 0.1, no clipping, weight decay 1e-5 unless given)."""
    c = base_config.get_config()
    c.model.name = model
    c.policy = tuple(policy)
    c.lr = 0.1
    for key, value in fields.items():
        c[key] = value
    return c


def step_and_state(
    config: ml_collections.ConfigDict, variables: dict, num_classes: int, *, step: int = 0
):
    """(jitted train step, its state) of `config`'s task and policy in the phase holding `step`.

    `variables` may hold arrays or `jax.ShapeDtypeStruct`s (then the state is abstract too,
    which is all `lower` needs).
    """
    task = tasks.build(config, [str(i) for i in range(num_classes)])
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    phase = build_phase(
        config,
        task,
        Policy.from_pairs(config.policy),
        NormEval.from_config(config.norm_eval),
        params,
        batch_stats,
        schedule=optax.constant_schedule(config.lr),
        start=step,
    )
    abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    if abstract:
        return phase.step, jax.eval_shape(phase.init, params, batch_stats)
    return phase.step, phase.init(params, batch_stats)


def forward(config: ml_collections.ConfigDict, num_classes: int):
    """The jitted inference pass of `config`'s model with the task's loss on its outputs:
    `forward(variables, batch) -> loss`, the unit that train-step FLOPs are compared with."""
    task = tasks.build(config, [str(i) for i in range(num_classes)])
    model = task.build_model()

    def fn(variables, batch):
        return task.loss(model.apply(variables, batch["image"], train=False), batch)[0]

    return jax.jit(fn)


def flops(jitted, *args) -> float:
    """FLOPs of `jitted(*args)` as XLA's cost analysis of the compiled program counts them."""
    return float(jitted.lower(*args).compile().cost_analysis()["flops"])
