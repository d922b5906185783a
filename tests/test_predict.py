"""A tiny real run (3 steps on an image folder made here), then predict and fine-tune from it."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from jtransfer import data, pretrained, train
from jtransfer.predict import Predictor
from jtransfer.pretrained.native import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"blue": (20, 40, 220), "red": (220, 30, 20)}
STEPS = 3
pytestmark = pytest.mark.slow  # one real run, about 40 s on 2 CPU cores


def _quickstart(**overrides):
    spec = importlib.util.spec_from_file_location("quickstart", f"{ROOT}/configs/quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    with config.unlocked():
        for key, value in overrides.items():
            target = config
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
    return config


def _image_folder(root) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for name, colour in COLOURS.items():
            os.makedirs(root / split / name)
            for i in range(count):
                noise = rng.integers(-20, 20, (40, 48, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    _image_folder(root)
    workdir = str(tmp_path_factory.mktemp("run"))
    config = _quickstart(
        **{
            "data.name": str(root),
            "pp_train": "decode|resize(32)|value_range(-1, 1)",
            "pp_eval": "decode|resize(32)|value_range(-1, 1)",
            "total_steps": STEPS,
            "batch_size": 4,
            "eval_batch_size": 4,
            "log_every": 1,
            "schedule.warmup_steps": 0,
        }
    )
    train.train_and_evaluate(config, workdir)
    return root, workdir, config


def _checkpoint_state(workdir) -> dict:
    """The whole saved train state, read by orbax with no target: not through jtransfer."""
    path = os.path.join(workdir, "checkpoints", str(STEPS), "default")
    return ocp.StandardCheckpointer().restore(path)


def test_predictions_are_the_eval_pipelines(run):
    root, workdir, config = run
    predictor = Predictor(workdir)
    assert predictor.class_names == ["blue", "red"]
    source = data.build_source(config.data)
    batch = next(iter(data.eval_batches(source, "test", config.pp_eval, 6)))
    state = _checkpoint_state(workdir)
    model = train.build_model(config, 2)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    expected = jax.nn.softmax(model.apply(variables, batch["image"], train=False))
    paths = [root / "test" / name / f"{i}.png" for name in COLOURS for i in range(3)]
    got = np.stack([predictor.probabilities(p) for p in paths])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_command_line_prints_top_k_class_names(run):
    root, workdir, _ = run
    images = [str(root / "test" / "red" / "0.png"), str(root / "test" / "blue" / "1.png")]
    cmd = [sys.executable, "-m", "jtransfer.predict", f"--workdir={workdir}", "--top_k=2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([*cmd, *images], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [lines[0], lines[3]] == images and len(lines) == 6
    for block in (lines[1:3], lines[4:6]):
        probs, names = zip(*(line.split() for line in block), strict=True)
        assert sorted(names) == ["blue", "red"]
        assert float(probs[0]) >= float(probs[1]) and abs(sum(map(float, probs)) - 1) < 2e-4


def test_unreadable_image_names_the_file(run, tmp_path):
    _, workdir, _ = run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        Predictor(workdir).top_k(bad)


def test_fine_tune_from_the_run_starts_from_exactly_its_weights(run, tmp_path):
    root, workdir, config = run
    with config.unlocked():
        config.pretrained.source = workdir
        config.pretrained.dont_load = ()
    model = train.build_model(config, 2)
    variables, _ = train.initial_variables(model, config, (32, 32, 3), str(tmp_path))
    state = _checkpoint_state(workdir)
    saved = flatten({"params": state["params"], "batch_stats": state["batch_stats"]})
    started = flatten(variables)
    assert started.keys() == saved.keys()
    for key, value in saved.items():
        assert started[key].dtype == value.dtype, key
        np.testing.assert_array_equal(started[key], value, err_msg=key)
    with open(tmp_path / "graft_manifest.json") as f:
        manifest = json.load(f)
    assert manifest["source"] == workdir and len(manifest["loaded"]) == len(saved)
    assert not manifest["reinitialized"] and not manifest["resampled"]
    # The run's own weights moved away from the ImageNet ones it started from.
    imagenet = flatten(pretrained.load("efficientnet_lite0/imagenet"))
    key = "params/backbone/top/conv/kernel"
    assert not np.array_equal(saved[key], imagenet[key])
