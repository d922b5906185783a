"""EMA and WiSE-FT values of a real run, against hand computations from what the run saved.

One short run through the command line (module fixture) trains EfficientNet-Lite0 from its
ImageNet weights on a tiny image folder, with both a moving average (`ema_decay`) and the
WiSE-FT evaluations (`wise_ft_alphas=(0, 1)`), and saves a checkpoint at every step. Only
public outputs are read: the checkpoints (orbax), config.json and final_eval.json. The run
trains the top of the network only (`frozen_stages`, stages=6; the `ema` and `wise_ft`
strategies set just those two fields on top of full fine-tuning): the arithmetic under test
is the same, and the step compiles in a third of the time. A large learning rate makes the
head move far from zero in three steps, so that the evaluations below tell a trained head from
a zero one.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from cli import command, run
from flax import traverse_util
from images import dark_and_light

from jtransfer import data, pretrained
from jtransfer.models import build_model
from jtransfer.pretrained.orbax_reader import read_run

pytestmark = pytest.mark.slow
MODEL, STEPS, DECAY = "efficientnet_lite0", 3, 0.8


def _flat(tree: dict) -> dict[str, np.ndarray]:
    return traverse_util.flatten_dict(tree, sep="/")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = dark_and_light(tmp_path_factory.mktemp("images"))
    workdir = tmp_path_factory.mktemp("run")
    # bn=train: the top stages' BatchNorm statistics move too, and WiSE-FT's ends must hold them
    config = (
        f"configs/transfer.py:data={folder},strategy=frozen_stages,stages=6,res=32,batch=4,bn=train"
    )
    out = run(
        command(
            workdir,
            None,
            f"--config.total_steps={STEPS}",
            "--config.lr=1.0",
            "--config.schedule.warmup_steps=0",
            "--config.schedule.decay=constant",
            f"--config.ema_decay={DECAY}",
            "--config.wise_ft_alphas=(0.0, 1.0)",
            "--config.checkpoint_every=1",
            "--config.keep_checkpoints=100",
            config=config,
        )
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def _ema_params(workdir: Path, step: int) -> dict[str, np.ndarray]:
    """The flat `ema_params` of the checkpoint at `step` (orbax partial restore, as numpy)."""
    item = workdir / "checkpoints" / str(step) / "default"
    checkpointer = ocp.PyTreeCheckpointer()
    wanted = {"ema_params": checkpointer.metadata(item).item_metadata.tree["ema_params"]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    args = ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)
    return _flat(checkpointer.restore(item, args=args)["ema_params"])


def _evaluations(workdir: Path) -> dict[str, dict[str, float]]:
    """final_eval.json as {name: {'accuracy', 'loss', 'count', ...}}: 'eval' (the run's final
    weights), 'eval_ema', 'wise_ft_<alpha>'; the one place that knows the file's layout."""
    final = json.loads((workdir / "final_eval.json").read_text())
    return {k: v for k, v in final.items() if isinstance(v, dict)}


@pytest.fixture(scope="module")
def start() -> dict:
    """The variables the run started from: ImageNet weights, the 2-class head at zero (a new
    head starts at zero, `jtransfer.models.heads`)."""
    loaded = pretrained.load(f"{MODEL}/imagenet", model=MODEL)
    head = {"dense": {"kernel": np.zeros((1280, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    return {"params": {**loaded["params"], "head": head}, "batch_stats": loaded["batch_stats"]}


@pytest.fixture(scope="module")
def evaluate(workdir):
    """variables -> {'accuracy', 'loss', 'count'} on the run's eval split and pp_eval, computed
    here: a plain forward pass, cross-entropy by optax."""
    config = json.loads((workdir / "config.json").read_text())
    source = data.build_source(ml_collections.ConfigDict(config["data"]))
    split, pp = config["data"]["eval_split"], config["pp_eval"]
    batches = list(data.eval_batches(source, split, pp, 4, process_index=0, process_count=1))
    model = build_model(config["model"]["name"], source.num_classes)
    apply = jax.jit(lambda variables, images: model.apply(variables, images, train=False))

    def evaluate(variables: dict) -> dict[str, float]:
        losses, correct = [], []
        for batch in batches:
            real = batch["mask"] > 0
            logits = np.asarray(apply(variables, batch["image"]))[real]
            labels = batch["label"][real]
            losses.append(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
            correct.append(logits.argmax(-1) == labels)
        losses, correct = np.concatenate(losses), np.concatenate(correct)
        return {"accuracy": correct.mean(), "loss": losses.mean(), "count": len(losses)}

    return evaluate


def _assert_same_evaluation(ours: dict, run: dict) -> None:
    assert (run["accuracy"], run["count"]) == (ours["accuracy"], ours["count"])
    np.testing.assert_allclose(run["loss"], ours["loss"], rtol=0, atol=1e-5)


def test_ema_follows_the_trained_parameters_step_by_step(workdir, start):
    """ema_k = d * ema_(k-1) + (1 - d) * params_k for every averaged leaf, to float32 rounding,
    from ema_0 = the starting parameters; every leaf that trained is averaged."""
    d, rest = np.float32(DECAY), np.float32(1 - DECAY)
    initial = previous = _flat(start["params"])
    for step in range(1, STEPS + 1):
        params = _flat(read_run(workdir / "checkpoints" / str(step))["params"])
        ema = _ema_params(workdir, step)
        trained = {p for p in params if not np.array_equal(params[p], initial[p])}
        assert trained and trained <= ema.keys(), sorted(trained - ema.keys())
        for path, value in ema.items():
            a, b = d * previous[path], rest * params[path]
            # Each product and the sum round once in float32 (or fuse): a few ulps of the terms.
            bound = 3 * np.finfo(np.float32).eps * (np.abs(a) + np.abs(b))
            assert np.all(np.abs(value - (a + b)) <= bound), f"step {step}: {path}"
        previous = ema


def test_ema_evaluation_is_the_averaged_weights(workdir, evaluate):
    final = read_run(workdir)
    averaged = _flat(final["params"]) | _ema_params(workdir, STEPS)
    variables = {"params": traverse_util.unflatten_dict(averaged, sep="/")}
    ours = evaluate(variables | {"batch_stats": final["batch_stats"]})
    _assert_same_evaluation(ours, _evaluations(workdir)["eval_ema"])


def test_wise_ft_ends_are_the_pretrained_backbone_and_the_run(workdir, start, evaluate):
    """alpha = 0: the pretrained backbone (weights and BatchNorm statistics) with the run's own
    head; alpha = 1: the run's final weights, i.e. its own evaluation."""
    final, results = read_run(workdir), _evaluations(workdir)
    theta0 = {
        "params": {**start["params"], "head": final["params"]["head"]},
        "batch_stats": start["batch_stats"],
    }
    _assert_same_evaluation(evaluate(theta0), results["wise_ft_0"])
    # what it is not: the start itself (a zero head predicts uniformly), or the final weights
    assert evaluate(start)["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert abs(results["wise_ft_0"]["loss"] - np.log(2)) > 1e-4
    assert abs(results["wise_ft_0"]["loss"] - results["eval"]["loss"]) > 1e-4
    _assert_same_evaluation(evaluate(final), results["eval"])
    assert results["wise_ft_1"] == results["eval"]
