"""predict from a tiny real run (3 steps on an image folder made here), and from ImageNet weights.

The run half also fine-tunes from the run. The pretrained half labels scikit-image's photos
with EfficientNet-Lite0's own ImageNet head and class names; the measured top-5 are in the tests.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import skimage.data
from cli import run as run_cli
from PIL import Image

from jtransfer import data, predict, pretrained, tasks, train
from jtransfer.policy import unflatten
from jtransfer.predict import PredictError, Predictor
from jtransfer.pretrained.frozen import frozen_leaves
from jtransfer.pretrained.native import flatten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {"blue": (20, 40, 220), "red": (220, 30, 20)}
STEPS = 3
slow = pytest.mark.slow  # the run: about 40 s on 2 CPU cores
PREDICT = [sys.executable, "-m", "jtransfer.predict"]


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
    """The saved train state, read by orbax with no target (not through jtransfer), with the
    frozen leaves it leaves out taken from the pretrained weights the run started from."""
    step = os.path.join(workdir, "checkpoints", str(STEPS))
    state = ocp.StandardCheckpointer().restore(os.path.join(step, "default"))
    with open(os.path.join(step, "frozen", "metadata")) as f:
        record = json.load(f)
    source = flatten(pretrained.load(record["source"]))
    for collection in ("params", "batch_stats"):
        leaves = flatten(state[collection])
        frozen = [p for p in frozen_leaves(record) if p.startswith(collection)]
        leaves.update({p.split("/", 1)[1]: source[p] for p in frozen})
        state[collection] = unflatten(leaves)
    return state


@slow
def test_predictions_are_the_eval_pipelines(run):
    root, workdir, config = run
    predictor = Predictor.from_run(workdir)
    assert predictor.class_names == ["blue", "red"]
    source = data.build_source(config.data)
    batch = next(iter(data.eval_batches(source, "test", config.pp_eval, 6)))
    state = _checkpoint_state(workdir)
    model = tasks.build(config, ["blue", "red"]).build_model()
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    expected = jax.nn.softmax(model.apply(variables, batch["image"], train=False))
    paths = [root / "test" / name / f"{i}.png" for name in COLOURS for i in range(3)]
    got = np.stack([predictor.probabilities(p) for p in paths])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@slow
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


@slow
def test_unreadable_image_names_the_file(run, tmp_path):
    _, workdir, _ = run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PredictError, match=f"cannot read image {bad}"):
        Predictor.from_run(workdir).top_k(bad)


@slow
def test_fine_tune_from_the_run_starts_from_exactly_its_weights(run, tmp_path):
    root, workdir, config = run
    with config.unlocked():
        config.pretrained.source = workdir
        config.pretrained.dont_load = ()
    model = tasks.build(config, ["blue", "red"]).build_model()
    variables, manifest = train.initial_variables(model, config, (32, 32, 3))
    state = _checkpoint_state(workdir)
    saved = flatten({"params": state["params"], "batch_stats": state["batch_stats"]})
    started = flatten(variables)
    assert started.keys() == saved.keys()
    for key, value in saved.items():
        assert started[key].dtype == value.dtype, key
        np.testing.assert_array_equal(started[key], value, err_msg=key)
    assert len(manifest["loaded"]) == len(saved)
    assert not manifest["reinitialized"] and not manifest["resampled"]
    # The run's own weights moved away from the ImageNet ones it started from.
    imagenet = flatten(pretrained.load("efficientnet_lite0/imagenet"))
    key = "params/backbone/top/conv/kernel"
    assert not np.array_equal(saved[key], imagenet[key])


# --- From ImageNet weights alone (--model) -------------------------------------------------

# Measured: EfficientNet-Lite0's top-5 for skimage.data.coffee() saved losslessly (PNG).
COFFEE_TOP5 = [
    ("espresso", 0.9539),
    ("cup", 0.0145),
    ("consomme", 0.0077),
    ("chocolate sauce, chocolate syrup", 0.0038),
    ("coffee mug", 0.0033),
]


def _photo(directory, name: str, suffix: str) -> str:
    path = str(directory / f"{name}{suffix}")
    Image.fromarray(getattr(skimage.data, name)()).save(path)
    return path


@pytest.fixture(scope="module")
def lite0():
    return Predictor.from_pretrained("efficientnet_lite0")


def test_imagenet_class_names_are_the_synsets_in_class_index_order():
    names = predict.imagenet_class_names()
    with open(os.path.join(ROOT, "jtransfer", "pretrained", predict.IMAGENET_CLASSES)) as f:
        synsets = json.load(f)["synsets"]
    assert len(names) == len(synsets) == len(set(synsets)) == 1000
    assert synsets == sorted(synsets)  # ImageNet-1k's class index is the sorted WordNet ids
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert (synsets[967], names[967]) == ("n07920052", "espresso")
    assert (
        names[504] == "coffee mug" and names[999] == "toilet tissue, toilet paper, bathroom tissue"
    )


def test_reference_preprocessing_is_the_central_87_5_percent_at_native_resolution():
    sources = pretrained.SOURCES
    assert predict.imagenet_models() == [
        *(f"efficientnet_lite{n}" for n in range(3)),
        "resnet50",
        *("vit_b16", "vit_b32", "vit_l16", "vit_s16"),
    ]
    # tensorflow/tpu's EfficientNet eval: crop padding round(res / 7) around the native size.
    expected = {0: (256, 224), 1: (274, 240), 2: (297, 260)}
    for n, (resize, res) in expected.items():
        assert predict.reference_pp(sources[f"efficientnet_lite{n}/imagenet"]) == (
            f"decode|resize_small({resize})|central_crop({res})|value_range(-1.0, 1.0)"
        )


def test_pretrained_head_labels_photos(lite0, tmp_path):
    assert lite0.pp == "decode|resize_small(256)|central_crop(224)|value_range(-1.0, 1.0)"
    top5 = lite0.top_k(_photo(tmp_path, "coffee", ".png"))
    assert [name for name, _ in top5] == [name for name, _ in COFFEE_TOP5]
    np.testing.assert_allclose([p for _, p in top5], [p for _, p in COFFEE_TOP5], atol=2e-3)
    assert lite0.top_k(_photo(tmp_path, "coffee", ".jpg"), 1)[0][0] == "espresso"
    # chelsea: 0.386 tiger cat, 0.367 Egyptian cat, 0.162 tabby; camera (grayscale): 0.942 tripod
    cats = {name for name, _ in lite0.top_k(_photo(tmp_path, "chelsea", ".png"), 3)}
    assert cats == {"tiger cat", "Egyptian cat", "tabby, tabby cat"}
    (name, prob), *_ = lite0.top_k(_photo(tmp_path, "camera", ".png"))
    assert name == "tripod" and prob > 0.9


def test_command_line_with_model_prints_imagenet_names(tmp_path):
    coffee = _photo(tmp_path, "coffee", ".jpg")
    done = run_cli([*PREDICT, "--model=efficientnet_lite0", "--top_k=3", coffee])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == coffee and len(lines) == 4
    probs, names = zip(*(line.split(maxsplit=1) for line in lines[1:]), strict=True)
    assert names[0] == "espresso" and float(probs[0]) > 0.8
    assert list(map(float, probs)) == sorted(map(float, probs), reverse=True)


def _refused(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # One line: TensorFlow's start-up lines (which TF_CPP_MIN_LOG_LEVEL=3 does not stop) too are
    # silenced when jtransfer runs as a command.
    assert done.stderr.splitlines() == [f"python -m jtransfer.predict: error: {message}"]
    assert done.stdout == ""


def test_unknown_model_is_one_line_naming_it_and_the_valid_ones(tmp_path):
    done = run_cli([*PREDICT, "--model=resnet5", _photo(tmp_path, "coffee", ".jpg")])
    _refused(
        done,
        "no ImageNet weights for model 'resnet5'; "
        "valid: ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2', 'resnet50', "
        "'vit_b16', 'vit_b32', 'vit_l16', 'vit_s16']",
    )


def test_unreadable_image_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    done = run_cli([*PREDICT, "--model=efficientnet_lite0", str(bad)])
    _refused(
        done,
        f"cannot read image {bad}: Unknown image file format. "
        "One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.",
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["img.jpg"], "one of the arguments --workdir --model is required"),
        (["--workdir=w", "--model=efficientnet_lite0", "img.jpg"], "not allowed with argument"),
        (["--model=efficientnet_lite0", "--step=3", "img.jpg"], "--step picks a checkpoint"),
    ],
)
def test_exactly_one_of_workdir_and_model(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_directory_without_config_is_not_a_run(tmp_path):
    with pytest.raises(PredictError, match=f"^{tmp_path} is not a run's workdir"):
        Predictor.from_run(tmp_path)
