"""The optimizer, built from the config and the parameter policy.

Shape: `chain(masked(clip_by_global_norm, trainable), partition({label: transform}, labels))`.
Each trainable policy rule gets its own group (the base optimizer, decoupled weight decay times
the rule's `wd_mult`, the learning-rate schedule times its `lr_mult`); frozen leaves get
`set_to_zero`, which holds no optimizer state. Clipping is masked to the trainable leaves so the
global norm never reads a frozen gradient (invariant 2 of DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from jtransfer.policy import FROZEN_LABEL, Policy

OPTIMIZERS = {
    "sgd": lambda c: optax.trace(decay=c.get("momentum", 0.9), nesterov=c.get("nesterov", False)),
    "adamw": lambda c: optax.scale_by_adam(
        b1=c.get("b1", 0.9), b2=c.get("b2", 0.999), eps=c.get("eps", 1e-8)
    ),
}

DECAYS = ("cosine", "linear", "constant")


def build_schedule(lr: float, total_steps: int, warmup_steps: int = 0, decay: str = "cosine"):
    """Linear warm-up to `lr`, then `decay` to zero at `total_steps` (or stay constant)."""
    if decay not in DECAYS:
        raise ValueError(f"unknown schedule decay {decay!r}; valid: {list(DECAYS)}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
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


def build_optimizer(
    optim: Mapping[str, Any],
    schedule: optax.Schedule,
    policy: Policy,
    params: Any,
    weight_decay: float = 0.0,
    grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """`optim` holds `name` (one of OPTIMIZERS) and that optimizer's hyper-parameters."""
    name = optim.get("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {sorted(OPTIMIZERS)}")
    transforms = {FROZEN_LABEL: optax.set_to_zero()}
    for label, rule in policy.trainable_rules().items():
        steps = [OPTIMIZERS[name](optim)]
        if weight_decay and rule.wd_mult:
            steps.append(optax.add_decayed_weights(weight_decay * rule.wd_mult))
        lr_mult = rule.lr_mult
        steps.append(optax.scale_by_learning_rate(lambda s, m=lr_mult: schedule(s) * m))
        transforms[label] = optax.chain(*steps)
    tx = optax.partition(transforms, policy.labels(params))
    if grad_clip_norm:
        clip = optax.masked(
            optax.clip_by_global_norm(grad_clip_norm), policy.trainable_mask(params)
        )
        tx = optax.chain(clip, tx)
    return tx
