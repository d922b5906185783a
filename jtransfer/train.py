"""The training loop, read top to bottom: build → graft → policy → shard → steps → eval → save.

Everything a run needs comes from one ml-collections config; everything it produces lands in the
workdir (config.json, graft_manifest.json, metrics.jsonl, TensorBoard events, checkpoints/,
final_eval.json). Starting the same command on a workdir that holds checkpoints resumes from the
latest one: the input order is a pure function of (seed, step), so nothing else is needed.

The train step differentiates only the trainable partition of the parameters (the policy's
mask), so XLA drops the backward pass below the lowest trainable layer; frozen leaves are passed
through untouched, which keeps them bit-identical.

A run is cut into *phases* where a policy rule starts training or a BatchNorm layer leaves
inference mode (gradual unfreezing, LP-FT). Each phase compiles its own step with a static mask;
at a boundary the optimizer state of the groups that already trained carries over
(`optim.carry_over`). The state always has the structure of the phase of its step, and records
that phase, so a checkpoint taken anywhere resumes exactly.

Around the step, optional strategies read the same state: an exponential moving average of the
trainable weights (`ema_decay`), evaluated beside the raw weights; WiSE-FT interpolation between
the starting and the final weights (`wise_ft_alphas`), evaluated at the end; and the cached-feature
linear probe (`cache_features`), which runs the frozen backbone once over each split and trains
the head on its features (see `feature_cache`).
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jtransfer import (
    checkpoint,
    data,
    distributed,
    feature_cache,
    graft,
    metrics,
    models,
    optim,
    pretrained,
    sharding,
)
from jtransfer.evaluators.fewshot import FewShotEvaluator
from jtransfer.policy import (
    NormEval,
    Policy,
    PolicyError,
    flatten,
    merge,
    overlay,
    select,
    split,
    unflatten,
)
from jtransfer.prefetch import Prefetcher

log = logging.getLogger(__name__)

State = dict[str, Any]  # step, phase, params, batch_stats, opt_state, rng[, ema_params]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _apply_head(module, features, *, train):
    return module.head(features, train=train)


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    trainable_mask: Any,
    label_smoothing: float = 0.0,
    *,
    ema_decay: float = 0.0,
    on_features: bool = False,
    grad_accum_steps: int = 1,
) -> Callable[[State, dict], tuple[State, dict]]:
    """`step(state, batch) -> (state, metrics)`; jit it with the shardings of the caller.

    `on_features`: `batch['image']` holds backbone features and only the head runs.
    `ema_decay` > 0: `state['ema_params']` (the trainable leaves) follows the new parameters.
    `grad_accum_steps` = k > 1: the batch is cut into k micro-batches (rows i, i+k, i+2k, ...,
    so each stays spread over the data-parallel devices) whose gradients a `lax.scan` averages
    before the one update. Without train-mode BatchNorm that is the update of the whole batch;
    train-mode BatchNorm normalises each micro-batch by its own statistics and updates its
    running statistics once per micro-batch, in order.
    """

    def step(state: State, batch: dict) -> tuple[State, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        trainable, frozen = split(state["params"], trainable_mask)

        def loss_fn(trainable, batch, batch_stats, rng):
            variables = {"params": merge(trainable, frozen), "batch_stats": batch_stats}
            if on_features:
                logits = model.apply(
                    variables, batch["image"], train=True, rngs={"dropout": rng}, method=_apply_head
                )
            else:
                logits, updates = model.apply(
                    variables,
                    batch["image"],
                    train=True,
                    mutable=["batch_stats"],
                    rngs={"dropout": rng},
                )
                batch_stats = updates.get("batch_stats", {})
            loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
            accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
            return loss, (accuracy, batch_stats)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if grad_accum_steps == 1:
            (loss, (accuracy, batch_stats)), grads = grad_fn(
                trainable, batch, state["batch_stats"], rng
            )
        else:
            k = grad_accum_steps
            micro = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch
            )

            def accumulate(carry, xs):
                grads, loss, accuracy, batch_stats = carry
                batch, i = xs
                (micro_loss, (micro_accuracy, batch_stats)), micro_grads = grad_fn(
                    trainable, batch, batch_stats, jax.random.fold_in(rng, i)
                )
                grads = jax.tree.map(jnp.add, grads, micro_grads)
                return (grads, loss + micro_loss, accuracy + micro_accuracy, batch_stats), None

            zero = jnp.zeros((), jnp.float32)
            zeros = (jax.tree.map(jnp.zeros_like, trainable), zero, zero, state["batch_stats"])
            sums, _ = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(k)))
            grads, loss, accuracy = jax.tree.map(lambda x: x / k, sums[:3])
            batch_stats = sums[3]
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
        step_metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "grad_norm": optax.global_norm(grads),
        }
        return new_state, step_metrics

    return step


def make_eval_step(model, *, on_features: bool = False) -> Callable[[dict, dict], dict]:
    """Sums (not means) over the real examples of a padded batch: `mask` marks them.

    The first argument needs only `params` and `batch_stats` (a train state will do).
    """

    def step(variables: dict, batch: dict) -> dict:
        variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        method = _apply_head if on_features else None
        logits = model.apply(variables, batch["image"], train=False, method=method)
        mask = batch["mask"].astype(jnp.float32)
        return {
            "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
            "count": jnp.sum(mask),
        }

    return step


def evaluate(eval_step: Callable, variables: dict, batches: Iterable[dict], mesh) -> dict:
    totals = None
    for batch in batches:
        out = eval_step(variables, sharding.global_batch(batch, mesh))
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
    """Process 0 writes; atomically, since other processes may read it (config.json)."""
    if jax.process_index() == 0:
        path = os.path.join(workdir, name)
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(path + ".tmp", path)


def initial_variables(
    model,
    config,
    image_shape: tuple[int, ...],
    workdir: str,
    shardings: Callable[[Any], Any] | None = None,
) -> tuple[dict, dict]:
    """Freshly initialised variables (host arrays) with the pretrained checkpoint grafted in,
    and the graft manifest (everything re-initialised when there is no pretrained source).

    `shardings(abstract variables)`: where a full initialisation computes each leaf, so that no
    device ever holds the whole tree.

    Only the leaves the checkpoint does not provide are computed: jitting the whole `init` costs
    XLA seconds of compiling random initialisers for weights that are then overwritten, while a
    function returning only the new head's leaves compiles to just those (and gives them the
    same values, since Flax derives each module's RNG from its path).
    """
    rng = jax.random.PRNGKey(config.seed)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)

    def init(rng):
        return model.init({"params": rng, "dropout": rng}, dummy, train=False)

    source = config.pretrained.get("source")
    if not source:
        out_shardings = shardings(jax.eval_shape(init, rng)) if shardings else None
        variables = jax.device_get(jax.jit(init, out_shardings=out_shardings)(rng))
        paths = sorted(flatten(variables))
        return variables, {"loaded": [], "reinitialized": paths, "ignored": [], "resampled": []}
    loaded = pretrained.load(source, model=config.model.name)
    variables, manifest = graft.graft(
        jax.eval_shape(init, rng), loaded, config.pretrained.get("dont_load", ())
    )
    fresh = manifest["reinitialized"]
    if fresh:
        values = jax.jit(lambda r: {p: flatten(init(r))[p] for p in fresh})(rng)
        variables = overlay(variables, unflatten(jax.device_get(values)))
    _write_json(workdir, "graft_manifest.json", {"source": source, **manifest})
    log.info(
        "grafted %s: %d loaded, %d re-initialised, %d ignored",
        source,
        len(manifest["loaded"]),
        len(manifest["reinitialized"]),
        len(manifest["ignored"]),
    )
    return variables, manifest


# `config.compute_dtype` → the models' `dtype` field: the dtype of activations and of the
# parameters' copies inside the forward pass. Parameters, gradients and optimizer state stay
# float32, as do the pooled features and the logits (`models.heads.pool`).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config, num_classes: int, norm_eval: str = ""):
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    if norm_eval:
        kwargs["norm_eval"] = norm_eval
    compute_dtype = config.get("compute_dtype", "float32")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute_dtype {compute_dtype!r}; valid: {list(COMPUTE_DTYPES)}")
    if compute_dtype != "float32":
        kwargs["dtype"] = COMPUTE_DTYPES[compute_dtype]
    return models.build_model(config.model.name, num_classes, **kwargs)


def wise_ft_start(start: dict, reinitialized: Iterable[str], final: dict) -> dict:
    """θ₀ of WiSE-FT: the starting variables, except that what the run initialised afresh (the
    new head) is taken from the final ones, so θ₀ = pretrained backbone with the run's head."""
    flat = flatten(final)
    fresh = unflatten({path: flat[path] for path in reinitialized})
    return {c: overlay(start[c], fresh.get(c, {})) for c in final}


def interpolate(start: dict, final: dict, alpha: float) -> dict:
    """(1 - alpha) * start + alpha * final, leaf by leaf."""
    return jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, start, final)


def _check_strategies(config, policy: Policy, norm_eval: NormEval, total_steps: int) -> None:
    """Errors for settings that cannot do what they say, before anything is computed."""
    late = [
        f"{p!r} (start_step {r.start_step})" for p, r in policy.rules if r.start_step >= total_steps
    ]
    late += [
        f"norm_eval {p!r} (until_step {u})" for p, u in norm_eval.entries if u and u >= total_steps
    ]
    if late:
        raise PolicyError(
            f"phases that begin after the run's last step {total_steps - 1}: {', '.join(late)}"
        )
    decay = config.get("ema_decay", 0.0)
    if not 0 <= decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {decay}")
    bad = [a for a in config.get("wise_ft_alphas", ()) if not 0 <= a <= 1]
    if bad:
        raise ValueError(f"wise_ft_alphas must lie in [0, 1], got {bad}")


# Sharding rules when the config gives none: FSDP everywhere, which with the default mesh
# (`fsdp` axis of size 1) replicates every parameter.
DEFAULT_SHARDING_RULES = ((".*", "fsdp"),)


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
    `ema` the moving average of the trainable leaves starting at their values."""
    state = {
        "step": jnp.int32(0),
        "phase": jnp.int32(phase),
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "rng": jax.random.PRNGKey(seed + 1),
    }
    if ema:
        # A copy: the average must not share the parameter's buffer, which the step donates.
        state["ema_params"] = jax.tree.map(jnp.copy, select(params, mask))
    return state


class _Phase(NamedTuple):
    """One phase of the run: where it starts, its mask, optimizer and compiled train step."""

    index: int
    start: int
    mask: Any
    tx: optax.GradientTransformation
    step: Callable[[State, dict], tuple[State, dict]]
    init: Callable[[dict, dict], State]  # (params, batch_stats) -> the state at its start
    shardings: Any  # of its state


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    preemption: distributed.Preemption | None = None,
) -> dict[str, Any]:
    """Trains and evaluates; with `preemption`, saves and raises `distributed.Preempted` when
    it reports a preemption notice (the CLI passes one; in-process callers need not)."""
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.get("keep_checkpoints", 2)
    )
    start_step = ckpt.latest_step() or 0
    config_json = json.loads(config.to_json())
    saved_config = os.path.join(workdir, "config.json")
    if start_step and os.path.exists(saved_config):
        with open(saved_config) as f:
            checkpoint.check_resume_config(json.load(f), config_json)
    _write_json(workdir, "config.json", config_json)
    mesh = sharding.make_mesh(config.get("mesh"))
    replicated = sharding.replicated(mesh)
    grad_accum_steps = config.get("grad_accum_steps", 1)
    if int(grad_accum_steps) != grad_accum_steps or grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be a whole number >= 1, got {grad_accum_steps}")
    sharding.check_batch_size(config.batch_size, mesh, grad_accum_steps)
    sharding_rules = config.get("sharding_rules") or DEFAULT_SHARDING_RULES

    source = data.build_source(config.data)
    num_train = source.num_examples(config.data.train_split)
    total_steps = _total_steps(config, num_train)
    steps_per_epoch = max(num_train // config.batch_size, 1)
    policy = Policy.from_pairs(config.policy, steps_per_epoch)
    policy.warn_if_misleading()
    norm_eval = NormEval.from_config(config.get("norm_eval"), steps_per_epoch)
    _check_strategies(config, policy, norm_eval, total_steps)
    phase_starts = sorted(set(policy.phase_starts()) | set(norm_eval.phase_starts()))
    ema_decay = config.get("ema_decay", 0.0)
    alphas = tuple(config.get("wise_ft_alphas", ()))
    eval_batch_size = config.get("eval_batch_size") or config.batch_size
    sharding.check_batch_size(eval_batch_size, mesh, name="eval_batch_size")

    pp_train, pp_eval = config.pp_train, config.pp_eval
    # One example per process tells the input shape the model is initialised for.
    probe = data.eval_batches(source, config.data.train_split, pp_train, jax.process_count())
    image_shape = next(iter(probe))["image"].shape[1:]
    model = build_model(config, source.num_classes)
    variables, manifest = initial_variables(
        model,
        config,
        image_shape,
        workdir,
        lambda v: sharding.param_shardings(v["params"], sharding_rules, mesh).like(v),
    )
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    layout = sharding.param_shardings(params, sharding_rules, mesh)
    if jax.process_index() == 0:
        print(f"mesh {sharding.describe(mesh)}: {layout.summary()}", flush=True)
    norm_eval.check(batch_stats)
    if jax.process_index() == 0:
        print("parameter policy:\n" + policy.report(params), flush=True)

    features = jax.jit(
        lambda v, x: model.apply(v, x, train=False, method="features"), out_shardings=replicated
    )
    fewshot = None
    if config.get("fewshot_shots"):
        fewshot = FewShotEvaluator(
            source,
            config.data.train_split,
            config.data.eval_split,
            pp_eval,
            eval_batch_size,
            mesh,
            shots=config.fewshot_shots,
            seeds=config.get("fewshot_seeds", (0, 1, 2)),
        )

    start_time = time.perf_counter()
    on_features = bool(config.get("cache_features"))
    if on_features:
        reasons = feature_cache.reasons_not_to_cache(
            policy, norm_eval, params, batch_stats, pp_train
        )
        if reasons:
            raise ValueError("cache_features=True, but " + "; ".join(reasons))
        backbone_variables = jax.device_put(variables, layout.like(variables))
        image_source = source

        def cached_features(split: str, pp: str) -> data.ArraySource:
            began = time.perf_counter()
            cached = feature_cache.feature_source(
                lambda x: features(backbone_variables, x),
                image_source,
                {split: pp},
                eval_batch_size,
                mesh,
            )
            seconds = time.perf_counter() - began
            print(f"cached backbone features of {split} in {seconds:.1f} s", flush=True)
            return cached

        source, pp_train = cached_features(config.data.train_split, pp_train), ""

    schedule = optim.build_schedule(
        config.lr,
        total_steps,
        config.schedule.get("warmup_steps", 0),
        config.schedule.get("decay", "cosine"),
    )
    phases: dict[int, _Phase] = {}

    def phase(index: int) -> _Phase:
        if index not in phases:
            start = phase_starts[index]
            phase_model = build_model(config, source.num_classes, norm_eval.regex(start))
            mask = policy.trainable_mask(params, start)
            tx = optim.build_optimizer(
                config.optimizer,
                schedule,
                policy,
                params,
                config.get("weight_decay", 0.0),
                config.get("grad_clip_norm"),
                step=start,
                decay_toward=config.get("decay_toward", "zero"),
            )
            init = functools.partial(
                initial_state, tx=tx, mask=mask, phase=index, seed=config.seed, ema=ema_decay > 0
            )
            shardings = layout.like(jax.eval_shape(init, params, batch_stats))
            step_fn = jax.jit(
                make_train_step(
                    phase_model,
                    tx,
                    mask,
                    config.get("label_smoothing", 0.0),
                    ema_decay=ema_decay,
                    on_features=on_features,
                    grad_accum_steps=grad_accum_steps,
                ),
                out_shardings=(shardings, replicated),
                donate_argnums=0,
            )
            phases[index] = _Phase(index, start, mask, tx, step_fn, init, shardings)
        return phases[index]

    def phase_of(step: int) -> int:
        return bisect.bisect_right(phase_starts, step) - 1

    current = phase(phase_of(start_step))
    # Host arrays go straight into their shardings: each device receives only its shards.
    state = jax.jit(current.init, out_shardings=current.shardings)(
        jax.device_put(params, layout.params()), jax.device_put(batch_stats, replicated)
    )
    if start_step:
        state = ckpt.restore(start_step, state)
        if int(state["phase"]) != current.index:
            raise ValueError(
                f"the checkpoint at step {start_step} was saved in phase {int(state['phase'])}, "
                f"but this config puts step {start_step} in phase {current.index}: the phases "
                f"(policy start steps, norm_eval until steps) changed since it was saved"
            )
        print(
            f"resumed from step {start_step} of {total_steps} (phase {current.index})", flush=True
        )

    train_iter = Prefetcher(
        data.train_batches(
            source,
            config.data.train_split,
            pp_train,
            config.batch_size,
            seed=config.seed,
            start_step=start_step,
        ),
        functools.partial(sharding.global_batch, mesh=mesh),
        config.get("prefetch", 2),
    )
    eval_step = jax.jit(make_eval_step(model, on_features=on_features), out_shardings=replicated)

    @functools.cache
    def eval_batches() -> data.EvalBatches:
        """Built at the first evaluation: cached features of the eval split are evaluation work,
        not part of training the head."""
        split = config.data.eval_split
        if on_features:
            return data.eval_batches(cached_features(split, pp_eval), split, "", eval_batch_size)
        return data.eval_batches(source, split, pp_eval, eval_batch_size)

    def evaluations(state) -> dict[str, dict[str, float]]:
        results = {"eval": evaluate(eval_step, state, eval_batches(), mesh)}
        if ema_decay:
            ema = {**state, "params": overlay(state["params"], state["ema_params"])}
            results["eval_ema"] = evaluate(eval_step, ema, eval_batches(), mesh)
        if fewshot:
            variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
            results["fewshot"] = fewshot.run(lambda images: features(variables, images))
        return results

    writer = metrics.MetricWriter(workdir, total_steps)
    log_every, eval_every = config.get("log_every", 50), config.get("eval_every", 0)
    ckpt_every = config.get("checkpoint_every", 0)
    step = start_step
    print(f"training steps {step}..{total_steps}, global batch {config.batch_size}", flush=True)
    writer.start(step)
    while step < total_steps:
        state, step_metrics = current.step(state, next(train_iter))
        step += 1
        if step < total_steps and phase_of(step) != current.index:
            current = phase(phase_of(step))
            state = _enter_phase(state, current, ema_decay)
            trained = sum(x.size for x in jax.tree.leaves(select(params, current.mask)))
            print(
                f"step {step:>6}: phase {current.index} begins, training {trained:,} parameters",
                flush=True,
            )
        if step % log_every == 0 or step == total_steps:
            values = {f"train/{k}": v for k, v in jax.device_get(step_metrics).items()}
            values["train/lr"] = schedule(step - 1)
            rate = writer.progress(step, values["train/loss"], config.batch_size)
            if rate:
                values["train/img_per_sec"] = rate
            writer.write(step, values)
        if eval_every and step % eval_every == 0 and step < total_steps:
            for name, result in evaluations(state).items():
                writer.write(step, {f"{name}/{k}": v for k, v in result.items()})
                print(f"step {step:>6}: {name} {_summary(result)}", flush=True)
        # `reached` is asked at every step: on several hosts it is a collective sync point.
        preempted = preemption and step < total_steps and preemption.reached(step)
        if preempted or (ckpt_every and step % ckpt_every == 0 and step < total_steps):
            ckpt.save(step, state)
        if preempted:
            train_iter.close()
            ckpt.close()
            writer.close()
            raise distributed.Preempted(step)
    train_iter.close()
    train_seconds = time.perf_counter() - start_time

    if step > start_step or ckpt.latest_step() != total_steps:
        ckpt.save(total_steps, state)
    results = evaluations(state)
    results["eval"]["train_seconds"] = train_seconds
    if alphas:
        final = jax.device_get({k: state[k] for k in ("params", "batch_stats")})
        start = wise_ft_start(variables, manifest["reinitialized"], final)
        for alpha in alphas:
            mixed = interpolate(start, final, alpha)
            mixed = jax.device_put(mixed, layout.like(mixed))
            results[f"wise_ft_{alpha:g}"] = evaluate(eval_step, mixed, eval_batches(), mesh)
    for name, result in results.items():
        writer.write(total_steps, {f"{name}/{k}": v for k, v in result.items()})
    writer.close()
    ckpt.close()
    final = {"step": total_steps, **results.pop("eval"), **results}
    _write_json(workdir, "final_eval.json", final)
    if jax.process_index() == 0:
        print(
            f"final eval on {config.data.eval_split}: accuracy {final['accuracy']:.4f}, "
            f"loss {final['loss']:.4f} ({int(final['count'])} examples)",
            flush=True,
        )
        for name, result in results.items():
            print(f"  {name}: {_summary(result)}", flush=True)
    return final


def _summary(result: dict[str, float]) -> str:
    """'accuracy 0.9500, loss 0.2100' for an evaluation, '1shot 0.63, ...' for few-shot."""
    keys = (
        ("accuracy", "loss") if "accuracy" in result else [k for k in result if k.endswith("shot")]
    )
    return ", ".join(f"{k} {result[k]:.4f}" for k in keys)


def _enter_phase(state: State, phase: _Phase, ema_decay: float) -> State:
    """The state carried into `phase`: optimizer groups that trained keep their state, new
    ones start fresh; the EMA of a newly trained leaf starts at its current value."""
    new = {
        **state,
        "phase": np.int32(phase.index),
        "opt_state": optim.carry_over(state["opt_state"], phase.tx.init(state["params"])),
    }
    if ema_decay:
        # Copies: a leaf that starts its average must not share the parameter's buffer, which
        # the step donates.
        start = jax.tree.map(jnp.copy, select(state["params"], phase.mask))
        new["ema_params"] = overlay(start, state["ema_params"])
    return jax.device_put(new, phase.shardings)
