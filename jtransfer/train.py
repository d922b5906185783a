"""The training loop, read top to bottom: check → build → graft → policy → phases → steps →
evaluators → save.

Everything a run needs comes from one ml-collections config (`jtransfer.base_config` documents
every field); everything it produces lands in the workdir (config.json, graft_manifest.json,
metrics.jsonl, TensorBoard events, checkpoints/, final_eval.json). The loop knows no task and no
strategy beyond what the config names: the task (`jtransfer.tasks`) builds the model and its
loss, a phase (`jtransfer.phase`) is the compiled step of one trainable set, and evaluators
(`jtransfer.evaluators`) measure.

Everything that can be checked is checked before the workdir is touched: config values, the
dataset and its splits, the policy and sharding rules against the model's parameters, the
pretrained checkpoint against the model, and a workdir that holds another run. A failed start
leaves nothing behind.

Starting the same command on a workdir resumes it: from its latest checkpoint (the input order
is a pure function of (seed, step), so nothing else is needed), with the metrics logged after
that checkpoint dropped so that every step appears once; a finished run says so and changes
nothing. Around the step, optional strategies read the same state: an exponential moving average
of the trainable weights (`ema_decay`), WiSE-FT interpolation between the start and the end
(`wise_ft_alphas`), and the cached-feature linear probe (`cache_features`), which runs the
frozen backbone once over each split and trains the head on its features in compiled chunks of
whole epochs (`run_steps` is then one call per chunk; everything after it in the loop reads the
steps of the chunk). A checkpoint holds what the run changes; the pretrained leaves that no
phase trains are left out and read again from their source on resume (`pretrained.frozen`).
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jtransfer import (
    checkpoint,
    data,
    distributed,
    evaluators,
    feature_cache,
    files,
    graft,
    metrics,
    optim,
    pretrained,
    sharding,
    tasks,
)
from jtransfer.console import say
from jtransfer.epochs import Epochs
from jtransfer.errors import JTransferError
from jtransfer.phase import State, build_phase
from jtransfer.policy import NormEval, Policy, PolicyError, flatten, overlay, select, unflatten
from jtransfer.prefetch import Prefetcher
from jtransfer.pretrained.frozen import FrozenPart


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    preemption: distributed.Preemption | None = None,
) -> dict[str, Any]:
    """Trains and evaluates; returns what final_eval.json holds. With `preemption`, saves and
    raises `distributed.Preempted` when it reports a preemption notice (the CLI passes one)."""
    check_config(config)
    files.check_workdir(workdir)
    pp = {"pp_train": config.pp_train, "pp_eval": config.pp_eval}
    for warning in pretrained.preprocessing_warnings(config.pretrained.source, pp):
        say(f"warning: {warning}")
    source = data.build_source(config.data)
    task = tasks.build(config, source.class_names)
    task.check_source(source)
    for split in (config.data.train_split, config.data.eval_split):
        source.check_split(split)  # exists and is not empty
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.batch_size, mesh, config.grad_accum_steps)
    sharding.check_batch_size(config.eval_batch_size, mesh, name="eval_batch_size")
    epochs = Epochs(source.num_examples(config.data.train_split), config.batch_size)
    total_steps = epochs.total_steps(config.num_epochs, config.total_steps)
    policy = Policy.from_pairs(config.policy, epochs)
    policy.warn_if_misleading()
    norm_eval = NormEval.from_config(config.norm_eval, epochs)
    check_phases(policy, norm_eval, total_steps)
    schedule = optim.build_schedule(
        config.lr, total_steps, config.schedule.warmup_steps, config.schedule.decay
    )
    phase_starts = sorted(set(policy.phase_starts()) | set(norm_eval.phase_starts()))

    model = task.build_model()
    image_shape = input_shape(source, config)
    abstract = jax.eval_shape(initializer(model, image_shape), jax.random.PRNGKey(config.seed))
    policy.assign(abstract["params"])  # every parameter covered by exactly one rule
    norm_eval.check(abstract.get("batch_stats", {}))
    layout = sharding.param_shardings(abstract["params"], config.sharding_rules, mesh)
    on_features = config.cache_features
    if on_features:
        reasons = feature_cache.reasons_not_to_cache(
            policy, norm_eval, abstract["params"], abstract.get("batch_stats", {}), config.pp_train
        )
        if reasons:
            raise JTransferError("cache_features=True, but " + "; ".join(reasons))
    finished = _finished_run(workdir, config, total_steps)
    if finished is not None:
        say(f"{workdir} holds this run, finished at step {total_steps}; nothing to do")
        return finished
    variables, manifest = initial_variables(model, config, image_shape, layout)
    frozen = frozen_part(config, variables, manifest, policy, norm_eval, phase_starts)

    # Nothing is written to the workdir before this point.
    files.makedirs(workdir)
    write_json(workdir, "config.json", json.loads(config.to_json()))
    write_json(workdir, "graft_manifest.json", {"source": config.pretrained.source, **manifest})
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints
    )
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    say(f"mesh {sharding.describe(mesh)}: {layout.summary()}")
    say("parameter policy:\n" + policy.report(params))

    started = time.perf_counter()
    train_source, pp_train, head_inputs = source, config.pp_train, None
    if on_features:
        cached = feature_cache.Cache(model, variables, source, layout, config.eval_batch_size)
        train_source, pp_train = cached.source(config.data.train_split, config.pp_train), ""
        head_inputs = cached.eval_batches
    context = evaluators.Context(task, model, source, mesh, config, head_inputs)
    evals = evaluators.build(config, context)
    phase = functools.cache(
        lambda index: build_phase(
            config,
            task,
            policy,
            norm_eval,
            params,
            batch_stats,
            schedule=schedule,
            index=index,
            start=phase_starts[index],
            layout=layout,
            on_features=on_features,
        )
    )

    def phase_of(step: int) -> int:
        return bisect.bisect_right(phase_starts, step) - 1

    start_step = ckpt.latest_step() or 0
    current = phase(phase_of(start_step))
    # Host arrays go straight into their shardings: each device receives only its shards.
    replicated = sharding.replicated(mesh)
    state = jax.jit(current.init, out_shardings=current.shardings)(
        jax.device_put(params, layout.params()), jax.device_put(batch_stats, replicated)
    )
    if start_step:
        frozen.check(ckpt.frozen_record(start_step), f"the checkpoint at step {start_step}")
        state = frozen.fill(ckpt.restore(start_step, frozen.drop(state)), state)
        if int(state["phase"]) != current.index:
            raise JTransferError(
                f"the checkpoint at step {start_step} was saved in phase {int(state['phase'])}, "
                f"but this config puts step {start_step} in phase {current.index}: the phases "
                f"(policy start steps, norm_eval until steps) changed since it was saved"
            )
        say(f"resumed from step {start_step} of {total_steps} (phase {current.index})")
    seconds_before = float(state["train_seconds"])

    def train_seconds() -> float:
        return seconds_before + time.perf_counter() - started

    def save(step: int) -> None:
        saved = frozen.drop({**state, "train_seconds": np.float32(train_seconds())})
        ckpt.save(step, saved, frozen.record)

    def evaluate(state: State) -> dict[str, dict[str, float]]:
        results = {name: e.run(state) for name, e in evals.items()}
        if config.ema_decay:
            main = next(iter(evals.values()))
            ema = {**state, "params": overlay(state["params"], state["ema_params"])}
            results["eval_ema"] = main.run(ema)
        return results

    train_iter, scanned = None, None
    if on_features:  # the head's training runs as compiled loops over the cached features
        chunk = feature_cache.chunk_steps(
            config.checkpoint_every,
            config.eval_every,
            epochs.num_examples // config.batch_size,  # the input order's epoch
            total_steps,
        )
        scanned = feature_cache.ScannedTraining(
            train_source, config.data.train_split, config.batch_size, config.seed, mesh, chunk
        )
    else:
        train_iter = Prefetcher(
            data.train_batches(
                train_source,
                config.data.train_split,
                pp_train,
                config.batch_size,
                seed=config.seed,
                start_step=start_step,
            ),
            functools.partial(sharding.global_batch, mesh=mesh),
            config.prefetch,
        )

    def run_steps(state: State, step: int) -> tuple[State, int, Callable[[int], dict]]:
        """The steps from `step` on that run before the loop looks again (one, or a chunk of
        the cached probe): (state, the step reached, step -> that step's metrics)."""
        if scanned is None:
            state, step_metrics = current.step(state, next(train_iter))
            return state, step + 1, lambda _: step_metrics
        stop = scanned.stop(step, total_steps)
        state, stacked = scanned.run(current, state, step, stop)
        stacked = jax.device_get(stacked)  # once: indexing device arrays compiles a program
        return state, stop, lambda s: jax.tree.map(lambda m: m[s - step - 1], stacked)

    writer = metrics.MetricWriter(workdir, total_steps, resume_step=start_step)
    step = start_step
    say(f"training steps {step}..{total_steps}, global batch {config.batch_size}")
    try:
        writer.start(step)
        began = time.perf_counter()
        while step < total_steps:
            first = step
            state, step, metrics_at = run_steps(state, step)
            if step < total_steps and phase_of(step) != current.index:
                current = phase(phase_of(step))
                state = current.enter(state, config.ema_decay)
                trained = sum(x.size for x in jax.tree.leaves(select(params, current.mask)))
                say(
                    f"step {step:>6}: phase {current.index} begins, training {trained:,} parameters"
                )
            done = range(first + 1, step + 1)
            logged = [s for s in done if s % config.log_every == 0 or s == total_steps]
            rows = [
                (s, {f"train/{k}": v for k, v in jax.device_get(metrics_at(s)).items()})
                for s in logged
            ]
            if rows:
                last, values = rows[-1]
                rate = writer.progress(last, values["train/loss"], config.batch_size)
                if rate:
                    values["train/img_per_sec"] = rate
            writer.write_rows(rows)
            if _passed(config.eval_every, first, step) and step < total_steps:
                writer.write_evaluations(step, evaluate(state))
            # `reached` is asked for every step: on several hosts it is a collective sync point.
            preempted = (
                preemption and step < total_steps and any([preemption.reached(s) for s in done])
            )
            checkpointed = _passed(config.checkpoint_every, first, step)
            if preempted or (checkpointed and step < total_steps):
                save(step)
            if preempted:
                raise distributed.Preempted(step)
        seconds = train_seconds()
        if scanned is not None and step > start_step:
            say(
                f"trained the head on cached features: steps {start_step}..{step} in "
                f"{time.perf_counter() - began:.2f} s"
            )
        if step > start_step or ckpt.latest_step() != total_steps:
            save(total_steps)
        results = evaluate(state)
        for alpha in config.wise_ft_alphas:
            mixed = wise_ft(variables, manifest["reinitialized"], state, alpha)
            results[f"wise_ft_{alpha:g}"] = next(iter(evals.values())).run(
                jax.device_put(mixed, layout.like(mixed))
            )
        writer.write_evaluations(total_steps, results, final=True)
    finally:
        if train_iter is not None:
            train_iter.close()
        ckpt.close()  # waits for the last asynchronous save: it is complete or absent
        writer.close()
    final = {"step": total_steps, "train_seconds": seconds, **results}
    write_json(workdir, "final_eval.json", final)
    return final


def _passed(every: int, first: int, step: int) -> bool:
    """Whether steps `first + 1`..`step` include a multiple of `every` (0: never)."""
    return bool(every) and step // every > first // every


def check_config(config: ml_collections.ConfigDict) -> None:
    """Values that cannot work, each named, before anything is built."""
    problems = []

    def need(ok: bool, field: str, what: str) -> None:
        if not ok:
            problems.append(f"{field} must be {what}, got {config[field]!r}")

    def whole(field: str, minimum: int) -> None:
        value = config[field]
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        need(ok and value >= minimum, field, f"a whole number >= {minimum}")

    for field, minimum in (
        ("batch_size", 1),
        ("eval_batch_size", 1),
        ("total_steps", 0),
        ("grad_accum_steps", 1),
        ("log_every", 1),
        ("eval_every", 0),
        ("checkpoint_every", 0),
        ("keep_checkpoints", 1),
        ("prefetch", 0),
    ):
        whole(field, minimum)
    need(config.num_epochs >= 0, "num_epochs", ">= 0")
    need(config.num_epochs > 0 or config.total_steps > 0, "num_epochs", "> 0 (or total_steps)")
    need(config.lr >= 0, "lr", ">= 0")
    need(config.weight_decay >= 0, "weight_decay", ">= 0")
    need(config.grad_clip_norm >= 0, "grad_clip_norm", ">= 0 (0: off)")
    need(0 <= config.ema_decay < 1, "ema_decay", "in [0, 1) (0: off)")
    need(all(0 <= a <= 1 for a in config.wise_ft_alphas), "wise_ft_alphas", "values in [0, 1]")
    need(
        config.compute_dtype in tasks.COMPUTE_DTYPES,
        "compute_dtype",
        f"one of {list(tasks.COMPUTE_DTYPES)}",
    )
    if problems:
        raise JTransferError("; ".join(problems))


def check_phases(policy: Policy, norm_eval: NormEval, total_steps: int) -> None:
    """Phases that would begin after the last step are an error, not silently never reached."""
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


def input_shape(source: data.Source, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The shape of one training image under pp_train (one example per process is read)."""
    probe = data.eval_batches(source, config.data.train_split, config.pp_train, jax.process_count())
    return next(iter(probe))["image"].shape[1:]


@functools.cache
def initializer(model, image_shape: tuple[int, ...]):
    """`init(rng) -> variables` of `model` for images of `image_shape`: one function for equal
    arguments (Flax modules compare by value), so JAX traces its shapes once per run."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    return lambda rng: model.init({"params": rng, "dropout": rng}, dummy, train=False)


def initial_variables(
    model,
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, ...],
    layout: sharding.ParamShardings | None = None,
) -> tuple[dict, dict]:
    """Freshly initialised variables (host arrays) with the pretrained checkpoint grafted in,
    and the graft manifest (everything re-initialised when there is no pretrained source).

    Only the leaves the checkpoint does not provide are computed: jitting the whole `init` costs
    XLA seconds of compiling random initialisers for weights that are then overwritten, while a
    function returning only the new head's leaves compiles to just those (and gives them the
    same values, since Flax derives each module's RNG from its path). A full initialisation
    computes each leaf where `layout` puts it, so that no device holds the whole tree.
    """
    init = initializer(model, image_shape)
    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(init, rng)
    source = config.pretrained.source
    if not source:
        out_shardings = layout.like(abstract) if layout else None
        variables = jax.device_get(jax.jit(init, out_shardings=out_shardings)(rng))
        paths = sorted(flatten(variables))
        return variables, {"loaded": [], "reinitialized": paths, "ignored": [], "resampled": []}
    loaded = pretrained.load(source, model=config.model.name)
    variables, manifest = graft.graft(abstract, loaded, config.pretrained.dont_load)
    fresh = manifest["reinitialized"]
    if fresh:

        def fresh_values(r):  # one trace of `init`, not one per fresh leaf (LoRA adds hundreds)
            flat = flatten(init(r))
            return {p: flat[p] for p in fresh}

        values = jax.jit(fresh_values)(rng)
        variables = overlay(variables, unflatten(jax.device_get(values)))
    say(
        f"grafted {source}: {len(manifest['loaded'])} loaded, "
        f"{len(manifest['reinitialized'])} re-initialised, {len(manifest['ignored'])} ignored"
    )
    return variables, manifest


def frozen_part(
    config: ml_collections.ConfigDict,
    variables: dict,
    manifest: dict,
    policy: Policy,
    norm_eval: NormEval,
    phase_starts: list[int],
) -> FrozenPart:
    """The leaves that no phase of the run changes and that came from the pretrained source:
    checkpoints leave them out (`pretrained.frozen`)."""
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    trained = {
        f"params/{path}"
        for start in phase_starts
        for path, trains in flatten(policy.trainable_mask(params, start)).items()
        if trains
    }
    held = norm_eval.always_held(batch_stats, phase_starts)
    trained |= {f"batch_stats/{path}" for path in flatten(batch_stats) if path not in held}
    return FrozenPart.of_run(
        variables,
        manifest["loaded"] + manifest["resampled"],
        trained,
        source=config.pretrained.source,
        model=config.model.name,
    )


def wise_ft(start: dict, reinitialized: Iterable[str], state: State, alpha: float) -> dict:
    """WiSE-FT's (1 - alpha) * θ₀ + alpha * θ, leaf by leaf, θ₀ being the starting variables
    except that what the run initialised afresh (the new head) is taken from the final ones:
    the pretrained backbone with the run's own head."""
    final = jax.device_get({k: state[k] for k in ("params", "batch_stats")})
    flat = flatten(final)
    fresh = unflatten({path: flat[path] for path in reinitialized})
    theta0 = {c: overlay(start.get(c, {}), fresh.get(c, {})) for c in final}
    return jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b, theta0, final)


def write_json(workdir: str, name: str, obj: Any) -> None:
    """Process 0 writes; whole, since other processes may read it (config.json)."""
    if jax.process_index() == 0:
        files.write_json(os.path.join(workdir, name), obj)


def _finished_run(workdir: str, config: ml_collections.ConfigDict, total_steps: int) -> dict | None:
    """What final_eval.json holds when `workdir` holds this config's run, finished; None for a
    new or unfinished run. A workdir that holds another config's run is an error naming the
    fields that differ (`checkpoint.check_resume_config`)."""
    saved_config = os.path.join(workdir, "config.json")
    if not files.exists(saved_config):
        return None
    checkpoint.check_resume_config(files.read_json(saved_config), json.loads(config.to_json()))
    final = os.path.join(workdir, "final_eval.json")
    if not files.exists(final):
        return None
    result = files.read_json(final)
    return result if result.get("step") == total_steps else None
