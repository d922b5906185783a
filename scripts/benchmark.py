"""Speed benchmarks; one subcommand per question.

    python scripts/benchmark.py step [--resolution 96] [--batch 32] [--rounds 5] [--steps 3]
    python scripts/benchmark.py freeze [--resolution 224] [--batch 32] [--steps 5]
    python scripts/benchmark.py scaling [--model efficientnet_lite0] [--resolution 64] [--batch 32]
    python scripts/benchmark.py probe [--data ../shared/data/hymenoptera] [--epochs 10 30 100]
    python scripts/benchmark.py checkpoint [--model vit_b16] [--strategies linear_probe lora]

`freeze`: XLA's FLOPs of one compiled train step per strategy, and its wall time, relative to
full fine-tuning; the parameter-efficient rows (LoRA, adapters) train only what they add.

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

`scaling`: the full fine-tuning train step as the trainer builds it (mesh,
parameter shardings, donated state), data-parallel over 1, 2, 4 and 8 fake CPU devices, each
count in its own process (`--xla_force_host_platform_device_count=N`). The fake devices share
the machine's cores, so this shows the cost of partitioning and collectives, not a speed-up.
With an accelerator it then times ResNet-50 and ViT-B/16 at 224 px in bfloat16 compute and
prints model-FLOPs utilisation: 3 × XLA's forward FLOPs (the backward pass counted as twice the
forward) per step, over the step time and the devices' dense bfloat16 peak (`PEAK_BF16_FLOPS`
by device kind, or `--peak-tflops`).

Measured (`scaling`, defaults: EfficientNet-Lite0, 64 px, global batch 32, 2 shared cores):
    devices 1 / 2 / 4 / 8:  0.246 / 0.249 / 0.247 / 0.388 s/step,  130 / 128 / 130 / 83 img/s

`probe`: the `cached_probe` preset of configs/transfer.py against the same run with
`--config.cache_features=False` (the probe step by step), each a whole `jtransfer.main` process
in a fresh workdir, alternating. `train` is the run's `train_seconds`, from the start of training
to the trained head, so the cached run's feature extraction is in it; `wall` is the process.
The cached probe costs one forward pass over the train split and the step-by-step probe one per
epoch, so the speed-up grows with the number of epochs.

Measured (`probe`, defaults: hymenoptera, 224 px, 2 shared cores, one run each):
    epochs  accuracy cached / steps  train cached / steps      wall cached / steps
        10  0.9477 / 0.9477          10.2 s / 47.3 s    4.6x    25.4 s / 63.5 s    2.5x
        30  0.9477 / 0.9477          13.4 s / 126.4 s   9.4x    29.2 s / 141.8 s   4.9x
       100  0.9477 / 0.9477          21.1 s / 419.5 s  19.9x    35.8 s / 435.2 s  12.2x
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from jtransfer import checkpoint, config_files, cost, graft, presets, sharding, tasks
from jtransfer import files as jtransfer_files
from jtransfer.epochs import Epochs
from jtransfer.models import build_model, efficientnet_lite_spec, lora_rank
from jtransfer.phase import build_phase
from jtransfer.policy import NormEval, Policy
from jtransfer.train import frozen_part, initializer

NUM_CLASSES = 1000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFER_CONFIG = os.path.join(ROOT, "configs", "transfer.py")
MODEL_NAME = "efficientnet_lite0"


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
    runners = {"jax": _jax_runners(args.batch, args.resolution)}
    if not args.jax_only:
        runners["torch"] = _torch_runners(args.batch, args.resolution, args.threads)
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
        if "torch" in runners:
            ratio = [rate["jax", s] / rate["torch", s] for s in (statistics.median, min)]
            columns.append(f"ratio {ratio[0]:.2f} ({ratio[1]:.2f})")
        print(f"{kind:5s}  " + "  ".join(columns))


def _peft_fields(strategy: str, model_name: str, knobs: dict) -> dict:
    """The policy of a parameter-efficient preset and the model options that add its parameters
    (its BatchNorm policy left out, as for every row here)."""
    policy, _, options = presets.peft(strategy, model_name, knobs)
    return {"policy": policy, "model": options}


def _freeze_strategies(model_name: str) -> dict[str, dict]:
    """Name -> `cost.strategy_config` fields (and the `step` whose phase is measured, the
    `model` options that add parameters), one per compiled step of a strategy."""
    blocks = efficientnet_lite_spec.block_names(model_name)
    half = "|".join(blocks[: len(blocks) // 2])
    full = [(".*", "train")]
    # gradual unfreezing's second phase: the head and the top subtree train
    top = [("head/.*", "train"), ("backbone/top/.*", {"start_step": 1}), (".*", "frozen")]
    return {
        "full": {"policy": full},
        "full, no clipping": {"policy": full, "grad_clip_norm": 0.0},
        "linear probe": {"policy": presets.freeze("head", model_name)[0]},
        "frozen_stages=3": {"policy": presets.freeze(3, model_name)[0]},
        "first half of blocks frozen": {
            "policy": [(f"backbone/(stem|{half})/.*", "frozen"), (".*", "train")]
        },
        "gradual, phase 1 (head+top)": {"policy": top, "step": 1},
        "bitfit": {"policy": presets.bitfit(model_name)},
        f"lora rank={lora_rank(model_name)}": _peft_fields("lora", model_name, {"rank": None}),
        "adapter bottleneck=16": _peft_fields("adapter", model_name, {"bottleneck": 16}),
        "llrd 0.75": {"policy": presets.layerwise_lr_decay(model_name, 0.75)},
        "l2sp": {"policy": full, "decay_toward": "start"},
        "ema": {"policy": full, "ema_decay": 0.99},
    }


def cmd_freeze(args: argparse.Namespace) -> None:
    model = build_model(MODEL_NAME, NUM_CLASSES)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (args.batch, args.resolution, args.resolution, 3)))
    batch = {
        "image": images.astype(jnp.float32),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, args.batch), jnp.int32),
        "mask": jnp.ones(args.batch),
    }
    variables = jax.jit(lambda r: model.init(r, images[:1], train=False))(jax.random.key(0))
    base = cost.strategy_config(MODEL_NAME, [])
    forward = cost.flops(cost.forward(base, NUM_CLASSES), variables, batch)
    print(
        f"EfficientNet-Lite0, {args.resolution}px, batch {args.batch}, SGD-momentum, "
        f"global-norm clipping 1.0 unless said; forward (eval step) {forward / 1e9:.1f} GFLOP; "
        f"wall: median of {args.steps} steps after one untimed"
    )
    print(f"{'strategy':30s} {'GFLOP':>8s} {'/fwd':>6s} {'/full':>6s} {'s/step':>7s} {'/full':>6s}")
    reference, adapted_forwards = None, {}
    for name, fields in _freeze_strategies(MODEL_NAME).items():
        fields = {"grad_clip_norm": 1.0, **fields}
        step_index = fields.pop("step", 0)
        policy, options = fields.pop("policy"), fields.pop("model", {})
        config = cost.strategy_config(MODEL_NAME, policy, **fields)
        config.model.update(options)
        own = variables
        if options:  # the base weights, plus the parameters the options add
            model = tasks.build(config, [str(i) for i in range(NUM_CLASSES)]).build_model()
            own = jax.jit(lambda r, m=model: m.init(r, images[:1], train=False))(jax.random.key(0))
            adapted_forwards[name] = cost.flops(cost.forward(config, NUM_CLASSES), own, batch)
        fresh = jax.tree.map(jnp.copy, own)  # the step donates its state
        step, state = cost.step_and_state(config, fresh, NUM_CLASSES, step=step_index)
        flops = cost.flops(step, state, batch)
        holder = [state]

        def run(holder=holder, step=step):
            holder[0], metrics = step(holder[0], batch)
            metrics["loss"].block_until_ready()

        seconds = statistics.median(_timed(run, args.steps))
        reference = reference or (flops, seconds)
        print(
            f"{name:30s} {flops / 1e9:8.1f} {flops / forward:6.2f} {flops / reference[0]:6.2f} "
            f"{seconds:7.3f} {seconds / reference[1]:6.2f}",
            flush=True,
        )
    for name, flops in adapted_forwards.items():
        merged = "; merged by jtransfer.export: the base model's" if "lora" in name else ""
        print(
            f"forward with the {name} parameters: {flops / 1e9:.2f} GFLOP "
            f"({flops / forward:.3f} of the base model's){merged}"
        )


# Dense bfloat16 peak FLOP/s of one JAX device, for model-FLOPs utilisation, by device kind
# (`device_kind` without "NVIDIA "). A name matches the kind or its start before a space or "-"
# ("H100" matches "H100 80GB HBM3", "A100" "A100-SXM4-80GB", but "L4" not "L40S"), and the
# longest match wins ("TPU v5 lite", v5e, over "TPU v5", v5p). libtpu versions name v5e, v5p and
# v6e (Trillium) either way: "TPU v5 lite" or "TPU v5e", "TPU v5" or "TPU v5p", "TPU v6 lite" or
# "TPU v6e". A kind not here gets no MFU unless --peak-tflops gives its peak.
PEAK_BF16_FLOPS = {
    "H100": 989e12,  # SXM
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "H200 NVL": 835e12,
    "A100": 312e12,
    "L4": 121e12,
    "L40": 181e12,
    "L40S": 362e12,
    "TPU v4": 275e12,
    "TPU v4 lite": 138e12,  # v4i
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}
ACCELERATOR_MODELS = ("resnet50", "vit_b16")


def _train_step_rate(
    model_name: str, resolution: int, batch: int, steps: int, compute_dtype: str
) -> dict:
    """Full fine-tuning train step (SGD-momentum, every parameter trained), data-parallel over
    all devices, built and placed as the trainer does (`phase.build_phase` with the parameter
    layout); median seconds per step after one untimed step, and XLA's forward FLOPs at the
    same batch (None where the backend counts none)."""
    config = cost.strategy_config(
        model_name, [(".*", "train")], lr=0.01, compute_dtype=compute_dtype
    )
    task = tasks.build(config, [str(i) for i in range(NUM_CLASSES)])
    model = task.build_model()
    mesh = sharding.make_mesh()
    sharding.check_batch_size(batch, mesh)
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.uniform(-1, 1, (batch, resolution, resolution, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32),
        "mask": np.ones(batch, np.float32),
    }
    images = jnp.zeros((1, resolution, resolution, 3))
    variables = jax.jit(lambda r: model.init(r, images, train=False))(jax.random.key(0))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    # the whole batch's forward FLOPs, compiled for one device (before the step donates them)
    variables = {"params": params, "batch_stats": batch_stats}
    forward = _flops_or_none(cost.forward(config, NUM_CLASSES), variables, host_batch)
    layout = sharding.param_shardings(params, config.sharding_rules, mesh)
    phase = build_phase(
        config,
        task,
        Policy.from_pairs(config.policy),
        NormEval(),
        params,
        batch_stats,
        schedule=optax.constant_schedule(config.lr),
        layout=layout,
    )
    state = [jax.jit(phase.init, out_shardings=phase.shardings)(params, batch_stats)]
    device_batch = sharding.global_batch(host_batch, mesh)

    def run() -> None:
        state[0], metrics = phase.step(state[0], device_batch)
        metrics["loss"].block_until_ready()

    seconds = statistics.median(_timed(run, steps))
    return {
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "step_s": seconds,
        "img_s": batch / seconds,
        "forward_flops": forward,
    }


def _flops_or_none(jitted, *args) -> float | None:
    """`cost.flops`, or None where the backend's `cost_analysis()` counts nothing (it may return
    None)."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def _peak_flops(device_kind: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    kind = device_kind.removeprefix("NVIDIA ")
    names = [n for n in PEAK_BF16_FLOPS if kind.startswith(n) and kind[len(n) : len(n) + 1] in " -"]
    return PEAK_BF16_FLOPS[max(names, key=len)] if names else None


def cmd_scaling(args: argparse.Namespace) -> None:
    if args.worker:
        result = _train_step_rate(args.model, args.resolution, args.batch, args.steps, "float32")
        print(json.dumps(result))
        return
    print(
        f"{args.model}, {args.resolution}px, global batch {args.batch}, float32, data-parallel "
        f"over N fake CPU devices (one process each, all sharing this machine's "
        f"{len(os.sched_getaffinity(0))} cores); median of {args.steps} steps after one untimed"
    )
    print(f"{'devices':>7s} {'s/step':>8s} {'img/s':>8s}")
    for n in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--worker"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            sys.exit(f"{n} devices failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:7d} {result['step_s']:8.3f} {result['img_s']:8.1f}", flush=True)

    if jax.default_backend() == "cpu":
        print("no accelerator: skipping the bfloat16 ResNet-50 / ViT-B/16 throughput")
        return
    kind = jax.devices()[0].device_kind
    peak = _peak_flops(kind, args.peak_tflops)
    print(
        f"\n{jax.device_count()} x {kind}, 224px, global batch {args.accelerator_batch}, "
        f"bfloat16 compute, float32 parameters; MFU = 3 x forward FLOPs (XLA's count) per "
        f"step / step time / (devices x peak {peak / 1e12 if peak else float('nan'):.0f} "
        f"TFLOP/s)"
    )
    print(f"{'model':10s} {'s/step':>8s} {'img/s':>8s} {'GFLOP/img':>10s} {'MFU':>6s}")
    for name in ACCELERATOR_MODELS:
        result = _train_step_rate(name, 224, args.accelerator_batch, args.steps, "bfloat16")
        counted = result["forward_flops"] is not None
        model_flops = 3 * result["forward_flops"] if counted else float("nan")
        mfu = model_flops / result["step_s"] / (jax.device_count() * peak) if peak else None
        print(
            f"{name:10s} {result['step_s']:8.3f} {result['img_s']:8.1f} "
            f"{model_flops / args.accelerator_batch / 1e9:10.1f} "
            + (f"{100 * mfu:5.1f}%" if mfu is not None and counted else "   n/a"),
            flush=True,
        )


def _probe_run(data: str, epochs: int, cached: bool, extra: list[str]) -> dict[str, float]:
    """One `jtransfer.main` run of the cached_probe preset in a fresh workdir: wall seconds of
    the whole process, its final_eval.json (accuracy, train_seconds) and, cached, what its
    output says of the feature extraction (img/s after compiling) and the head's training."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [
            sys.executable,
            "-m",
            "jtransfer.main",
            f"--workdir={workdir}",
            f"--config={TRANSFER_CONFIG}:data={data},strategy=cached_probe,epochs={epochs}",
            f"--config.cache_features={cached}",
            *extra,
        ]
        began = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - began
        if out.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
        with open(os.path.join(workdir, "final_eval.json")) as f:
            final = json.load(f)
    run = {"wall": wall, "train": final["train_seconds"], "accuracy": final["eval"]["accuracy"]}
    head = re.search(r"trained the head on cached features: steps \S+ in ([\d.]+) s", out.stdout)
    rate = re.search(r"cached backbone features of train: .*\((\d+) img/s after\)", out.stdout)
    run["head"] = float(head.group(1)) if head else math.nan
    run["extraction"] = float(rate.group(1)) if rate else math.nan
    return run


def _synthetic_folder(root: str, examples: int, classes: int = 5) -> str:
    """`root/{train,val}/c<k>/*.jpg`: `examples` training images (and a fifth as many for
    validation) of `classes` classes, 96x128 noise tinted by class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", examples), ("val", max(classes, examples // 5))):
        for i in range(n):
            k = i % classes
            directory = os.path.join(root, split, f"c{k}")
            os.makedirs(directory, exist_ok=True)
            pixels = rng.integers(0, 160, (96, 128, 3)) + np.eye(3, dtype=int)[k % 3] * 40 * k // 2
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(f"{directory}/{i}.jpg")
    return root


def cmd_probe(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as synthetic:
        data = _synthetic_folder(synthetic, args.synthetic) if args.synthetic else args.data
        _probe_table(args, data)


def _probe_table(args: argparse.Namespace, data: str) -> None:
    # the eval step at the extraction's batch and resolution, measured here, between the runs
    batch = config_files.load(TRANSFER_CONFIG).get_config("strategy=cached_probe").eval_batch_size
    _, evaluate = _jax_runners(batch, 224)
    eval_rate = batch / statistics.median(_timed(evaluate, 10))
    print(
        f"linear probe on {args.data if not args.synthetic else f'{args.synthetic} synthetic'}, "
        "EfficientNet-Lite0: cached features vs step by step; train = train_seconds (feature "
        "extraction included), head = the head's training after extraction, extraction = img/s "
        f"after compiling (and its share of the eval step's {eval_rate:.0f} img/s at batch "
        f"{batch}, 224 px, median of 10), wall = whole process; medians of {args.repeats}"
    )
    print(
        f"{'epochs':>6s} {'acc cached':>10s} {'acc steps':>9s} {'head':>6s} {'extract':>13s} "
        f"{'train cached':>12s} {'train steps':>11s} {'ratio':>6s} "
        f"{'wall cached':>11s} {'wall steps':>10s} {'ratio':>6s}"
    )
    for epochs in args.epochs:
        runs = {True: [], False: []}
        for _ in range(args.repeats):  # alternating, so load from other processes hits both
            for cached in (True,) if args.cached_only else (True, False):
                runs[cached].append(_probe_run(data, epochs, cached, args.extra))
        med = {
            (cached, key): statistics.median(run[key] for run in runs[cached])
            if runs[cached]
            else math.nan
            for cached in runs
            for key in ("wall", "train", "accuracy", "head", "extraction")
        }
        print(
            f"{epochs:6d} {med[True, 'accuracy']:10.4f} {med[False, 'accuracy']:9.4f} "
            f"{med[True, 'head']:5.2f}s {med[True, 'extraction']:6.0f} "
            f"({med[True, 'extraction'] / eval_rate:4.0%}) "
            f"{med[True, 'train']:11.1f}s {med[False, 'train']:10.1f}s "
            f"{med[False, 'train'] / med[True, 'train']:5.1f}x "
            f"{med[True, 'wall']:10.1f}s {med[False, 'wall']:9.1f}s "
            f"{med[False, 'wall'] / med[True, 'wall']:5.1f}x",
            flush=True,
        )


def _checkpoint_bytes(
    model_name: str, strategy: str, resolution: int, repeats: int, steps: int = 5
) -> tuple[list[int], int]:
    """(bytes of the files of each of `repeats` saves, bytes of the arrays they hold) of the
    checkpoint a run of configs/transfer.py (`model_name`, `strategy`) writes after `steps`
    steps, seeded weights standing in for the pretrained source. After one step LoRA's `a`
    factors still have zero momentum (their gradient is zero while `b` is), which compresses to
    nothing; the files of small checkpoints also vary between identical saves (OCDBT writes a
    data file per batch of writes), the arrays do not."""
    transfer = config_files.load(TRANSFER_CONFIG)
    config = transfer.get_config(f"model={model_name},strategy={strategy},res={resolution}")
    task = tasks.build(config, ["a", "b", "c", "d", "e"])
    model = task.build_model()
    init = initializer(model, (resolution, resolution, 3))
    variables = jax.device_get(jax.jit(init)(jax.random.key(0)))
    # the seeded weights grafted onto themselves: `dont_load` (head, added parameters) is fresh
    variables, manifest = graft.graft(variables, variables, config.pretrained.dont_load)
    epochs = Epochs(1000, config.batch_size)
    policy = Policy.from_pairs(config.policy, epochs)
    norm_eval = NormEval.from_config(config.norm_eval, epochs)
    starts = sorted(set(policy.phase_starts()) | set(norm_eval.phase_starts()))
    config.pretrained.source = f"seeded {model_name}"
    frozen = frozen_part(config, variables, manifest, policy, norm_eval, starts)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    schedule = optax.constant_schedule(config.lr)
    phase = build_phase(config, task, policy, norm_eval, params, batch_stats, schedule=schedule)
    state = phase.init(params, batch_stats)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.uniform(-1, 1, (2, resolution, resolution, 3)), jnp.float32),
        "label": jnp.asarray([0, 1], jnp.int32),
    }
    for _ in range(steps):
        state, _ = phase.step(state, batch)
    saved = frozen.drop(state)
    files = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as directory:
            saver = checkpoint.Checkpointer(directory, asynchronous=False)
            saver.save(0, saved, frozen.record)
            saver.close()
            files.append(jtransfer_files.tree_bytes(directory))
    return files, sum(x.nbytes for x in jax.tree.leaves(saved))


def cmd_checkpoint(args: argparse.Namespace) -> None:
    print(
        f"{args.model}, {args.resolution}px, configs/transfer.py's optimizer: one checkpoint "
        "after 5 steps (frozen pretrained leaves left out) against full fine-tuning's, the bytes "
        f"of its files (median, min and max of {args.repeats} saves) and of the arrays it holds"
    )
    full = None
    for strategy in ["full", *args.strategies]:
        files, arrays = _checkpoint_bytes(args.model, strategy, args.resolution, args.repeats)
        full = full or (statistics.median(files), arrays)
        print(
            f"{strategy:14s} files {statistics.median(files):12,.0f} bytes "
            f"{100 * statistics.median(files) / full[0]:6.2f} % "
            f"({100 * min(files) / full[0]:.2f} to {100 * max(files) / full[0]:.2f})  "
            f"arrays {arrays:12,d} bytes {100 * arrays / full[1]:6.2f} %",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="train/eval step img/s, JAX vs the torch reference")
    step.add_argument("--resolution", type=int, default=96)
    step.add_argument("--batch", type=int, default=32)
    step.add_argument("--rounds", type=int, default=5)
    step.add_argument("--steps", type=int, default=3, help="timed steps per round")
    step.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    step.add_argument("--jax-only", action="store_true", help="without the torch reference")
    step.set_defaults(func=cmd_step)
    freeze = sub.add_parser("freeze", help="compiled FLOPs and wall time per freezing strategy")
    freeze.add_argument("--resolution", type=int, default=224)
    freeze.add_argument("--batch", type=int, default=32)
    freeze.add_argument("--steps", type=int, default=5, help="timed steps per strategy")
    freeze.set_defaults(func=cmd_freeze)
    scaling = sub.add_parser(
        "scaling", help="train step time over 1-8 fake devices; bfloat16 MFU on an accelerator"
    )
    scaling.add_argument("--model", default=MODEL_NAME)
    scaling.add_argument("--resolution", type=int, default=64)
    scaling.add_argument("--batch", type=int, default=32, help="global batch (fake devices)")
    scaling.add_argument("--steps", type=int, default=5, help="timed steps")
    scaling.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    scaling.add_argument("--accelerator-batch", type=int, default=256)
    scaling.add_argument("--peak-tflops", type=float, help="per device; default: by device kind")
    scaling.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    scaling.set_defaults(func=cmd_scaling)
    probe = sub.add_parser(
        "probe", help="cached-feature linear probe vs the same probe step by step, end to end"
    )
    probe.add_argument("--data", default="../shared/data/hymenoptera")
    probe.add_argument("--epochs", type=int, nargs="+", default=[10, 30, 100])
    probe.add_argument("--repeats", type=int, default=1)
    probe.add_argument("--synthetic", type=int, help="instead of --data: this many images")
    probe.add_argument("--cached-only", action="store_true", help="skip the step-by-step runs")
    probe.add_argument(
        "extra", nargs="*", help="after --: more --config.KEY=VALUE flags for both runs"
    )
    probe.set_defaults(func=cmd_probe)
    sizes = sub.add_parser("checkpoint", help="checkpoint bytes per strategy, against full")
    sizes.add_argument("--model", default="vit_b16")
    sizes.add_argument("--resolution", type=int, default=224)
    sizes.add_argument("--strategies", nargs="+", default=["linear_probe", "lora", "adapter"])
    sizes.add_argument("--repeats", type=int, default=5, help="saves of each state")
    sizes.set_defaults(func=cmd_checkpoint)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
