"""Compiled cost of a strategy's train step: XLA's FLOPs count and the wall time per step.

Invariant 2 of DESIGN.md (frozen layers cost no backward) is proved by the compiled step's
`cost_analysis()`, not by reading code; the test and `scripts/benchmark.py freeze` both build
the step here, exactly as `train.train_and_evaluate` builds it (same policy, optimizer, mask and
step function), so what they measure is what a run executes. Like `main`, this sits above
`train` and nothing below imports it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import optax

from jtransfer import optim
from jtransfer.policy import Policy
from jtransfer.train import initial_state, make_eval_step, make_train_step


def step_and_state(
    model,
    variables: dict,
    pairs: Sequence[Sequence[Any]],
    *,
    step: int = 0,
    grad_clip_norm: float | None = None,
    weight_decay: float = 1e-5,
    decay_toward: str = "zero",
    ema_decay: float = 0.0,
):
    """(jitted train step, its state) for the policy `pairs` in the phase that holds `step`.

    `variables` may hold arrays or `jax.ShapeDtypeStruct`s (then the state is abstract too,
    which is all `lower` needs).
    """
    policy = Policy.from_pairs(pairs)
    params = variables["params"]
    mask = policy.trainable_mask(params, step)
    tx = optim.build_optimizer(
        {"name": "sgd"},
        optax.constant_schedule(0.1),
        policy,
        params,
        weight_decay,
        grad_clip_norm,
        step=step,
        decay_toward=decay_toward,
    )
    init = functools.partial(initial_state, tx=tx, mask=mask, phase=0, seed=0, ema=ema_decay > 0)
    batch_stats = variables.get("batch_stats", {})
    abstract = any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))
    state = jax.eval_shape(init, params, batch_stats) if abstract else init(params, batch_stats)
    fn = make_train_step(model, tx, mask, ema_decay=ema_decay)
    return jax.jit(fn, donate_argnums=0), state


def eval_step(model):
    return jax.jit(make_eval_step(model))


def flops(jitted, *args) -> float:
    """FLOPs of `jitted(*args)` as XLA's cost analysis of the compiled program counts them."""
    return float(jitted.lower(*args).compile().cost_analysis()["flops"])
