"""A phase of a run: (policy, start step) → trainable mask → optimizer → state → jitted step.

A run is cut into phases where a policy rule starts training or a BatchNorm layer leaves
inference mode (gradual unfreezing, LP-FT); each phase compiles its own step with a static mask.
This module is the one place that assembles a phase, so the trainer, `jtransfer.cost` (compiled
FLOPs) and the benchmarks run exactly the same step.

The train step differentiates only the trainable partition of the parameters (the phase's
mask), so XLA drops the backward pass below the lowest trainable layer; frozen leaves are passed
through untouched, which keeps them bit-identical, and get zero gradients that the optimizer's
`set_to_zero` ignores (DESIGN.md invariant 2). The loss is the task's (`Task.loss`); the step
knows nothing else about the task.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jtransfer import optim, sharding
from jtransfer.policy import NormEval, Policy, merge, overlay, select, split
from jtransfer.tasks import Task

# step, phase, params, batch_stats, opt_state, rng, train_seconds[, ema_params]
State = dict[str, Any]


def initial_state(
    params: dict,
    batch_stats: dict,
    *,
    tx: optax.GradientTransformation,
    mask: Any,
    phase: int,
    seed: int,
    ema: bool,
) -> State:
    """The train state at the start of a run in `phase`: fresh optimizer state, step 0, and with
    `ema` the moving average of the trainable leaves starting at their values.

    `train_seconds` is the training time so far; the loop sets it before each save, so that a
    resumed run reports the time of the whole training.
    """
    state = {
        "step": jnp.int32(0),
        "phase": jnp.int32(phase),
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "rng": jax.random.PRNGKey(seed + 1),
        "train_seconds": jnp.float32(0),
    }
    if ema:
        # A copy: the average must not share the parameter's buffer, which the step donates.
        state["ema_params"] = jax.tree.map(jnp.copy, select(params, mask))
    return state


def _apply_head(module, features, *, train):
    return module.head(features, train=train)


def make_train_step(
    model,
    loss: Callable[[Any, dict], tuple[jax.Array, dict]],
    tx: optax.GradientTransformation,
    trainable_mask: Any,
    *,
    ema_decay: float = 0.0,
    on_features: bool = False,
    grad_accum_steps: int = 1,
    schedule: optax.Schedule | None = None,
) -> Callable[[State, dict], tuple[State, dict]]:
    """`step(state, batch) -> (state, metrics)`; jit it with the shardings of the caller.

    `loss(outputs, batch) -> (loss, metrics)` is the task's. `on_features`: `batch['image']`
    holds backbone features and only the head runs. `ema_decay` > 0: `state['ema_params']` (the
    trainable leaves) follows the new parameters. `grad_accum_steps` = k > 1: the batch is cut
    into k micro-batches (rows i, i+k, i+2k, ..., so each stays spread over the data-parallel
    devices) whose gradients a `lax.scan` averages before the one update. Without train-mode
    BatchNorm that is the update of the whole batch; train-mode BatchNorm normalises each
    micro-batch by its own statistics and updates its running statistics once per micro-batch.
    With `schedule`, the metrics include the step's learning rate (`lr`), computed in the
    compiled step rather than by a host call per logged step (each of those dispatches and
    compiles the schedule's operations eagerly).
    """

    def step(state: State, batch: dict) -> tuple[State, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        trainable, frozen = split(state["params"], trainable_mask)

        def loss_fn(trainable, batch, batch_stats, rng):
            variables = {"params": merge(trainable, frozen), "batch_stats": batch_stats}
            if on_features:
                outputs = model.apply(
                    variables, batch["image"], train=True, rngs={"dropout": rng}, method=_apply_head
                )
            else:
                outputs, updates = model.apply(
                    variables,
                    batch["image"],
                    train=True,
                    mutable=["batch_stats"],
                    rngs={"dropout": rng},
                )
                batch_stats = updates.get("batch_stats", {})
            value, metrics = loss(outputs, batch)
            return value, (metrics, batch_stats)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if grad_accum_steps == 1:
            (value, (metrics, batch_stats)), grads = grad_fn(
                trainable, batch, state["batch_stats"], rng
            )
        else:
            k = grad_accum_steps
            micro = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch
            )

            def accumulate(carry, xs):
                sums, batch_stats = carry
                batch, i = xs
                (value, (metrics, batch_stats)), grads = grad_fn(
                    trainable, batch, batch_stats, jax.random.fold_in(rng, i)
                )
                sums = jax.tree.map(jnp.add, sums, (grads, value, metrics))
                return (sums, batch_stats), None

            first = jax.eval_shape(
                grad_fn, trainable, jax.tree.map(lambda x: x[0], micro), state["batch_stats"], rng
            )
            (_, (metrics_shape, _)), _ = first
            zeros = jax.tree.map(
                jnp.zeros_like, (trainable, jnp.zeros((), jnp.float32), metrics_shape)
            )
            (sums, batch_stats), _ = jax.lax.scan(
                accumulate, (zeros, state["batch_stats"]), (micro, jnp.arange(k))
            )
            grads, value, metrics = jax.tree.map(lambda x: x / k, sums)
        # Frozen leaves get constant zero gradients: the optimizer's `set_to_zero` ignores them
        # and nothing here differentiates through them.
        full_grads = merge(grads, jax.tree.map(jnp.zeros_like, frozen))
        updates, opt_state = tx.update(full_grads, state["opt_state"], state["params"])
        new_trainable = optax.apply_updates(trainable, split(updates, trainable_mask)[0])
        new_params = merge(new_trainable, frozen)
        new_state = {
            **state,
            "step": state["step"] + 1,
            "params": new_params,
            "batch_stats": batch_stats,
            "opt_state": opt_state,
        }
        if ema_decay:
            new_state["ema_params"] = jax.tree.map(
                lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                state["ema_params"],
                select(new_params, trainable_mask),
            )
        metrics = {"loss": value, **metrics, "grad_norm": optax.global_norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(state["step"])
        return new_state, metrics

    return step


def make_scanned_steps(
    step: Callable[[State, dict], tuple[State, dict]], trainable_mask: Any
) -> Callable[..., tuple[State, dict]]:
    """`steps(state, inputs, labels, indices, valid) -> (state, metrics)`: the train steps (on
    features) whose batches are the rows of `indices` (steps, G) into device-resident `inputs`
    and `labels` (a split's cached features), as one `lax.scan`; a step whose `valid` is False
    leaves the state as it is (so every chunk of a run can have one length and one compiled
    program). `metrics` are stacked along the steps.

    The loop carries only what the steps change: the frozen parameters and the batch statistics
    (which a step on features never updates) are constants of the loop, not part of its state,
    which keeps the compiled program the size of the head's update."""

    def steps(state, inputs, labels, indices, valid):
        trainable, frozen = split(state["params"], trainable_mask)
        constants = {"batch_stats": state["batch_stats"]}

        def body(carry, xs):
            index, ok = xs
            whole = {**carry, **constants, "params": merge(carry["params"], frozen)}
            new, metrics = step(whole, {"image": inputs[index], "label": labels[index]})
            new = {k: v for k, v in new.items() if k not in constants}
            new["params"] = split(new["params"], trainable_mask)[0]
            kept = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, carry)
            return kept, metrics

        carry = {k: v for k, v in state.items() if k not in constants}
        carry, metrics = jax.lax.scan(body, {**carry, "params": trainable}, (indices, valid))
        params = merge(carry["params"], frozen)
        return {**carry, **constants, "params": params}, metrics

    return steps


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of the run: where it starts, its mask, optimizer and compiled train step."""

    index: int
    start: int
    mask: Any
    tx: optax.GradientTransformation
    step: Callable[[State, dict], tuple[State, dict]]  # jitted, donates the state
    init: Callable[[dict, dict], State]  # (params, batch_stats) -> the state at its start
    shardings: Any  # of its state; None when built without a parameter layout
    scanned: Callable[..., tuple[State, dict]] | None = None  # on features: `make_scanned_steps`

    def enter(self, state: State, ema_decay: float) -> State:
        """The state carried into this phase: optimizer groups that trained keep their state,
        new ones start fresh; the EMA of a newly trained leaf starts at its current value."""
        new = {
            **state,
            "phase": np.int32(self.index),
            "opt_state": optim.carry_over(state["opt_state"], self.tx.init(state["params"])),
        }
        if ema_decay:
            # Copies: a leaf that starts its average must not share the parameter's buffer,
            # which the step donates.
            start = jax.tree.map(jnp.copy, select(state["params"], self.mask))
            new["ema_params"] = overlay(start, state["ema_params"])
        return jax.device_put(new, self.shardings) if self.shardings else new


def build_phase(
    config: ml_collections.ConfigDict,
    task: Task,
    policy: Policy,
    norm_eval: NormEval,
    params: dict,
    batch_stats: dict,
    *,
    schedule: optax.Schedule,
    index: int = 0,
    start: int = 0,
    layout: sharding.ParamShardings | None = None,
    on_features: bool = False,
) -> Phase:
    """The phase `index` of a run, beginning at step `start`.

    `params` and `batch_stats` may be arrays or `jax.ShapeDtypeStruct`s (only their structure
    and shapes are read). With a `layout` the step is jitted with the state's shardings (the
    trainer's); without one, XLA places everything (the cost analysis, the benchmarks).
    """
    model = task.build_model(norm_eval.regex(start))
    mask = policy.trainable_mask(params, start)
    tx = optim.build_optimizer(
        config.optimizer,
        schedule,
        policy,
        params,
        config.weight_decay,
        config.grad_clip_norm,
        step=start,
        decay_toward=config.decay_toward,
    )
    init = functools.partial(
        initial_state, tx=tx, mask=mask, phase=index, seed=config.seed, ema=config.ema_decay > 0
    )
    step = make_train_step(
        model,
        task.loss,
        tx,
        mask,
        ema_decay=config.ema_decay,
        on_features=on_features,
        grad_accum_steps=config.grad_accum_steps,
        schedule=schedule,
    )
    shardings, out_shardings = None, None
    if layout is not None:
        shardings = layout.like(jax.eval_shape(init, params, batch_stats))
        out_shardings = (shardings, sharding.replicated(layout.mesh))
    jitted = jax.jit(step, out_shardings=out_shardings, donate_argnums=0)
    scanned = None
    if on_features:
        scanned = jax.jit(
            make_scanned_steps(step, mask), out_shardings=out_shardings, donate_argnums=0
        )
    return Phase(index, start, mask, tx, jitted, init, shardings, scanned)
