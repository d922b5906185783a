"""The optimizer, built from the config and the parameter policy.

Shape: `chain(masked(clip_by_global_norm, trainable), partition({label: group}, labels),
scale_by_learning_rate(schedule))`. Each trainable policy rule is one group: the base optimizer,
weight decay times the rule's `wd_mult`, then its `lr_mult`; frozen leaves get `set_to_zero`,
which holds no optimizer state. Clipping is masked to the trainable leaves so the global norm
never reads a frozen gradient (invariant 2 of DESIGN.md).

The schedule sits outside the partition, so its step count is the run's step even for a group
that starts training late (gradual unfreezing); a group's own state (momentum, Adam moments and
their count) starts fresh when it starts. `carry_over` moves the state of one phase's optimizer
into the next phase's: every group that trained before keeps its state untouched.

Weight decay pulls toward zero (decoupled, as AdamW) or, as L2-SP (Li et al. 2018), toward the
value each weight had when its group started training: the pretrained weights, or the
initialisation for a new head. optax has no L2-SP, hence `decay_toward_start`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jtransfer.errors import JTransferError
from jtransfer.policy import FROZEN_LABEL, Policy

OPTIMIZERS = {
    "sgd": lambda c: optax.trace(decay=c.get("momentum", 0.9), nesterov=c.get("nesterov", False)),
    "adamw": lambda c: optax.scale_by_adam(
        b1=c.get("b1", 0.9), b2=c.get("b2", 0.999), eps=c.get("eps", 1e-8)
    ),
}

DECAYS = ("cosine", "linear", "constant")
DECAY_TARGETS = ("zero", "start")  # "start": L2-SP


def build_schedule(lr: float, total_steps: int, warmup_steps: int = 0, decay: str = "cosine"):
    """Linear warm-up to `lr`, then `decay` to zero at `total_steps` (or stay constant)."""
    if decay not in DECAYS:
        raise JTransferError(f"unknown schedule decay {decay!r}; valid: {list(DECAYS)}")
    if not 0 <= warmup_steps <= total_steps:
        raise JTransferError(
            f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]"
        )
    rest = max(total_steps - warmup_steps, 1)
    after = {
        "cosine": optax.cosine_decay_schedule(lr, rest),
        "linear": optax.linear_schedule(lr, 0.0, rest),
        "constant": optax.constant_schedule(lr),
    }[decay]
    if warmup_steps == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), after], [warmup_steps]
    )


class DecayTowardStartState(NamedTuple):
    start: Any  # the parameters when the transform was initialised


def decay_toward_start(weight_decay: float) -> optax.GradientTransformation:
    """L2-SP: add `weight_decay * (params - params_at_init)` to the updates."""

    def init_fn(params):
        return DecayTowardStartState(jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise JTransferError("decay_toward_start needs the parameters")
        updates = jax.tree.map(
            lambda g, p, s: g + weight_decay * (p - s), updates, params, state.start
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def build_optimizer(
    optim: Mapping[str, Any],
    schedule: optax.Schedule,
    policy: Policy,
    params: Any,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
    *,
    step: int = 0,
    decay_toward: str = "zero",
) -> optax.GradientTransformation:
    """The optimizer of the phase that contains `step`.

    `optim` holds `name` (one of OPTIMIZERS) and that optimizer's hyper-parameters.
    """
    name = optim.get("name")
    if name not in OPTIMIZERS:
        raise JTransferError(f"unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}")
    if decay_toward not in DECAY_TARGETS:
        raise JTransferError(f"unknown decay_toward {decay_toward!r}; valid: {list(DECAY_TARGETS)}")
    decay = optax.add_decayed_weights if decay_toward == "zero" else decay_toward_start
    groups = {FROZEN_LABEL: optax.set_to_zero()}
    for label, rule in policy.trainable_rules(step).items():
        steps = [OPTIMIZERS[name](optim)]
        if weight_decay and rule.wd_mult:
            steps.append(decay(weight_decay * rule.wd_mult))
        if rule.lr_mult != 1:
            steps.append(optax.scale(rule.lr_mult))
        groups[label] = optax.chain(*steps)
    mask = policy.trainable_mask(params, step)
    clip = optax.clip_by_global_norm(grad_clip_norm) if grad_clip_norm else optax.identity()
    return optax.chain(
        optax.masked(clip, mask),
        optax.partition(groups, policy.labels(params, step)),
        optax.scale_by_learning_rate(schedule),
    )


def carry_over(old_state: Any, new_state: Any) -> Any:
    """The state for the next phase: `new_state` (a fresh `init`) with every group that exists
    in `old_state` replaced by its old state, and the schedule's step count kept."""
    clip, partition, schedule = new_state
    inner = dict(partition.inner_states)
    for label, state in old_state[1].inner_states.items():
        if label != FROZEN_LABEL:
            inner[label] = state
    return (clip, optax.PartitionState(inner), old_state[2])
