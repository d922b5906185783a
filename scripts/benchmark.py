"""Speed benchmarks; one subcommand per question.

    python scripts/benchmark.py step [--resolution 96] [--batch 32] [--rounds 5] [--steps 3]

`step`: EfficientNet-Lite0 full fine-tuning train step (forward, backward, SGD-momentum update
of every parameter, BatchNorm in train mode with its running statistics updated) and eval step
(forward, train=False, logits) against the torch reference (`efficientnet_lite_pytorch`, the
`reference` extra) at the same batch and resolution, in the same process. JAX and torch run in
alternating rounds so that load from other processes on a shared machine hits both alike; the
figures are medians over all timed steps after a warm-up (torch's first train steps are several
times slower than its steady state). `--threads` sets torch's intra-op threads; XLA uses every
core the process may run on (restrict both with taskset). No XLA flags are set: none of those
tried (YNN/XNNPACK/oneDNN switches) beat the defaults beyond the noise. Nor is the allocator
tuned, though a quarter of JAX's CPU time here is the kernel faulting in fresh pages for XLA's
per-step buffers: glibc `mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max, M_ARENA_MAX=1)` removes
that (JAX alone: train +13%, eval +26%) but slows torch in the same process.

Measured on 2 shared AMD EPYC cores, jax 0.10.2, torch 2.13.0 (`step`, defaults), two runs:
    train  jax 92.6 / 79.5 img/s, torch 71.6 / 62.4 img/s, ratio 1.29 / 1.27
    eval   jax 504.7 / 387.6 img/s, torch 332.9 / 344.2 img/s, ratio 1.52 / 1.13
Other users' load moves whole rounds by 10-30%; torch's OpenMP threads degrade far more than XLA
under oversubscription (torch train fell to 5 img/s), so ratios from a busy machine flatter JAX.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtransfer.models import build_model

NUM_CLASSES = 1000


def make_steps(model, optimizer: optax.GradientTransformation) -> tuple[Callable, Callable]:
    """(train_step, eval_step), jitted; train_step donates and returns its state.

    state = (params, batch_stats, opt_state); train_step(state, images, labels, rng) ->
    (state, loss); eval_step(variables, images) -> logits.
    """

    def loss_fn(params, batch_stats, images, labels, rng):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    def train_step(state, images, labels, rng):
        params, batch_stats, opt_state = state
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, batch_stats), grads = grad_fn(params, batch_stats, images, labels, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    def eval_step(variables, images):
        return model.apply(variables, images, train=False)

    return jax.jit(train_step, donate_argnums=0), jax.jit(eval_step)


def _timed(fn: Callable[[], object], steps: int) -> list[float]:
    """Seconds per call of `steps` calls, after one untimed call.

    The untimed call absorbs the cost of switching between train and eval (or between the two
    libraries), e.g. the first JAX eval step after train steps runs 25% slower than the next
    ones; a training or evaluation loop pays that once, not every few steps.
    """
    fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _jax_runners(batch: int, res: int) -> tuple[Callable, Callable]:
    model = build_model("efficientnet_lite0", NUM_CLASSES)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, res, res, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch))
    variables = model.init({"params": jax.random.key(0)}, images, train=False)
    optimizer = optax.sgd(0.01, momentum=0.9)
    train_step, eval_step = make_steps(model, optimizer)

    params = variables["params"]
    state = [(params, variables["batch_stats"], optimizer.init(params))]
    key = jax.random.key(1)

    def train():
        state[0], loss = train_step(state[0], images, labels, key)
        loss.block_until_ready()

    def evaluate():
        params, batch_stats, _ = state[0]
        eval_step({"params": params, "batch_stats": batch_stats}, images).block_until_ready()

    return train, evaluate


def _torch_runners(batch: int, res: int, threads: int) -> tuple[Callable, Callable]:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    torch.set_num_threads(threads)
    model = EfficientNet.from_name("efficientnet-lite0")
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, res, res)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train():
        model.train()
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()

    def evaluate():
        model.eval()
        with torch.inference_mode():
            model(images)

    return train, evaluate


def cmd_step(args: argparse.Namespace) -> None:
    runners = {
        "jax": _jax_runners(args.batch, args.resolution),
        "torch": _torch_runners(args.batch, args.resolution, args.threads),
    }
    times = {(lib, kind): [] for lib in runners for kind in ("train", "eval")}
    for train, evaluate in runners.values():  # warm-up, compilation included
        _timed(train, 2)
        _timed(evaluate, 1)
    for _ in range(args.rounds):
        for lib, (train, evaluate) in runners.items():
            times[lib, "train"] += _timed(train, args.steps)
            times[lib, "eval"] += _timed(evaluate, args.steps)

    print(
        f"EfficientNet-Lite0, {args.resolution}px, batch {args.batch}, {args.threads} threads, "
        f"jax {jax.__version__} on {jax.default_backend()}; img/s, median (best) of "
        f"{args.rounds * args.steps} steps"
    )
    for kind in ("train", "eval"):
        rate = {
            (lib, stat): args.batch / stat(times[lib, kind])
            for lib in runners
            for stat in (statistics.median, min)
        }
        columns = [
            f"{lib} {rate[lib, statistics.median]:6.1f} ({rate[lib, min]:6.1f})" for lib in runners
        ]
        ratio = [rate["jax", stat] / rate["torch", stat] for stat in (statistics.median, min)]
        print(f"{kind:5s}  " + "  ".join(columns) + f"  ratio {ratio[0]:.2f} ({ratio[1]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="train/eval step img/s, JAX vs the torch reference")
    step.add_argument("--resolution", type=int, default=96)
    step.add_argument("--batch", type=int, default=32)
    step.add_argument("--rounds", type=int, default=5)
    step.add_argument("--steps", type=int, default=3, help="timed steps per round")
    step.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    step.set_defaults(func=cmd_step)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
