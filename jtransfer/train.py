"""The training loop, read top to bottom: build → graft → policy → shard → steps → eval → save.

Everything a run needs comes from one ml-collections config; everything it produces lands in the
workdir (config.json, graft_manifest.json, metrics.jsonl, TensorBoard events, checkpoints/,
final_eval.json). Starting the same command on a workdir that holds checkpoints resumes from the
latest one: the input order is a pure function of (seed, step), so nothing else is needed.

The train step differentiates only the trainable partition of the parameters (the policy's
mask), so XLA drops the backward pass below the lowest trainable layer; frozen leaves are passed
through untouched, which keeps them bit-identical.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jtransfer import checkpoint, data, graft, metrics, models, optim, pretrained, sharding
from jtransfer.policy import Policy, merge, split

log = logging.getLogger(__name__)

State = dict[str, Any]  # step, params, batch_stats, opt_state, rng


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def make_train_step(
    model, tx: optax.GradientTransformation, trainable_mask: Any, label_smoothing: float = 0.0
) -> Callable[[State, dict], tuple[State, dict]]:
    """`step(state, batch) -> (state, metrics)`; jit it with the shardings of the caller."""

    def step(state: State, batch: dict) -> tuple[State, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        trainable, frozen = split(state["params"], trainable_mask)

        def loss_fn(trainable):
            variables = {"params": merge(trainable, frozen), "batch_stats": state["batch_stats"]}
            logits, updates = model.apply(
                variables,
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": rng},
            )
            loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
            return loss, (logits, updates.get("batch_stats", {}))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        # Frozen leaves get constant zero gradients: the optimizer's `set_to_zero` ignores them
        # and nothing here differentiates through them.
        full_grads = merge(grads, jax.tree.map(jnp.zeros_like, frozen))
        updates, opt_state = tx.update(full_grads, state["opt_state"], state["params"])
        new_trainable = optax.apply_updates(trainable, split(updates, trainable_mask)[0])
        new_state = {
            **state,
            "step": state["step"] + 1,
            "params": merge(new_trainable, frozen),
            "batch_stats": batch_stats,
            "opt_state": opt_state,
        }
        step_metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": optax.global_norm(grads),
        }
        return new_state, step_metrics

    return step


def make_eval_step(model) -> Callable[[State, dict], dict]:
    """Sums (not means) over the real examples of a padded batch: `mask` marks them."""

    def step(state: State, batch: dict) -> dict:
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        logits = model.apply(variables, batch["image"], train=False)
        mask = batch["mask"].astype(jnp.float32)
        return {
            "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    return step


def evaluate(eval_step: Callable, state: State, batches: Iterable[dict], mesh) -> dict[str, float]:
    totals = None
    for batch in batches:
        out = eval_step(state, sharding.global_batch(batch, mesh))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "accuracy": float(totals["correct"]) / count,
        "loss": float(totals["loss"]) / count,
        "count": count,
    }


def _total_steps(config, num_train: int) -> int:
    if config.get("total_steps"):
        return int(config.total_steps)
    if config.get("num_epochs"):
        return int(config.num_epochs * num_train // config.batch_size)
    raise ValueError("set config.total_steps or config.num_epochs")


def _write_json(workdir: str, name: str, obj: Any) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(obj, f, indent=2)


def initial_variables(model, config, image_shape: tuple[int, ...], workdir: str) -> dict:
    """Freshly initialised variables with the pretrained checkpoint grafted in."""
    rng = jax.random.PRNGKey(config.seed)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.jit(lambda r: model.init({"params": r, "dropout": r}, dummy, train=False))(rng)
    variables = jax.device_get(variables)
    source = config.pretrained.get("source")
    if not source:
        return variables
    loaded = pretrained.load(source, model=config.model.name)
    variables, manifest = graft.graft(variables, loaded, config.pretrained.get("dont_load", ()))
    _write_json(workdir, "graft_manifest.json", {"source": source, **manifest})
    log.info(
        "grafted %s: %d loaded, %d re-initialised, %d ignored",
        source,
        len(manifest["loaded"]),
        len(manifest["reinitialized"]),
        len(manifest["ignored"]),
    )
    return variables


def build_model(config, num_classes: int):
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    if config.get("norm_eval"):
        if not models.has_batch_norm(config.model.name):
            raise ValueError(
                f"norm_eval={config.norm_eval!r} names BatchNorm layers, but "
                f"{config.model.name} has none"
            )
        kwargs["norm_eval"] = config.norm_eval
    return models.build_model(config.model.name, num_classes, **kwargs)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    os.makedirs(workdir, exist_ok=True)
    _write_json(workdir, "config.json", json.loads(config.to_json()))
    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.batch_size, mesh)

    source = data.build_source(config.data)
    num_train = source.num_examples(config.data.train_split)
    total_steps = _total_steps(config, num_train)
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.get("keep_checkpoints", 2)
    )
    start_step = ckpt.latest_step() or 0
    train_iter = iter(
        data.train_batches(
            source,
            config.data.train_split,
            config.pp_train,
            config.batch_size,
            seed=config.seed,
            start_step=start_step,
        )
    )
    first_batch = next(train_iter)

    model = build_model(config, source.num_classes)
    variables = initial_variables(model, config, first_batch["image"].shape[1:], workdir)
    params = variables["params"]
    policy = Policy.from_pairs(config.policy)
    policy.warn_if_misleading()
    if jax.process_index() == 0:
        print("parameter policy:\n" + policy.report(params), flush=True)
    mask = policy.trainable_mask(params)
    schedule = optim.build_schedule(
        config.lr,
        total_steps,
        config.schedule.get("warmup_steps", 0),
        config.schedule.get("decay", "cosine"),
    )
    tx = optim.build_optimizer(
        config.optimizer,
        schedule,
        policy,
        params,
        config.get("weight_decay", 0.0),
        config.get("grad_clip_norm"),
    )

    replicated = sharding.replicated(mesh)
    state = jax.device_put(
        {
            "step": np.int32(0),
            "params": params,
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": tx.init(params),
            "rng": jax.random.PRNGKey(config.seed + 1),
        },
        replicated,
    )
    if start_step:
        state = ckpt.restore(start_step, state)
        print(f"resumed from step {start_step} of {total_steps}", flush=True)

    train_step = jax.jit(
        make_train_step(model, tx, mask, config.get("label_smoothing", 0.0)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(make_eval_step(model), out_shardings=replicated)
    eval_batches = data.eval_batches(
        source,
        config.data.eval_split,
        config.pp_eval,
        config.get("eval_batch_size") or config.batch_size,
    )

    writer = metrics.MetricWriter(workdir, total_steps)
    log_every, eval_every = config.get("log_every", 50), config.get("eval_every", 0)
    ckpt_every = config.get("checkpoint_every", 0)
    batch = first_batch
    step = start_step
    print(f"training steps {step}..{total_steps}, global batch {config.batch_size}", flush=True)
    writer.start(step)
    start_time = time.perf_counter()
    while step < total_steps:
        state, step_metrics = train_step(state, sharding.global_batch(batch, mesh))
        step += 1
        if step < total_steps:
            batch = next(train_iter)
        if step % log_every == 0 or step == total_steps:
            values = {f"train/{k}": v for k, v in jax.device_get(step_metrics).items()}
            values["train/lr"] = schedule(step - 1)
            rate = writer.progress(step, values["train/loss"], config.batch_size)
            if rate:
                values["train/img_per_sec"] = rate
            writer.write(step, values)
        if eval_every and step % eval_every == 0 and step < total_steps:
            result = evaluate(eval_step, state, eval_batches, mesh)
            writer.write(step, {f"eval/{k}": v for k, v in result.items()})
            print(f"step {step:>6}: eval accuracy {result['accuracy']:.4f}", flush=True)
        if ckpt_every and step % ckpt_every == 0 and step < total_steps:
            ckpt.save(step, state)
    train_seconds = time.perf_counter() - start_time

    if step > start_step or ckpt.latest_step() != total_steps:
        ckpt.save(total_steps, state)
    result = evaluate(eval_step, state, eval_batches, mesh)
    result["train_seconds"] = train_seconds
    writer.write(total_steps, {f"eval/{k}": v for k, v in result.items()})
    writer.close()
    ckpt.close()
    _write_json(workdir, "final_eval.json", {"step": total_steps, **result})
    if jax.process_index() == 0:
        print(
            f"final eval on {config.data.eval_split}: accuracy {result['accuracy']:.4f}, "
            f"loss {result['loss']:.4f} ({int(result['count'])} examples)",
            flush=True,
        )
    return result
