"""Model registry: a plain dict from name to a builder returning an `ImageClassifier`.

`build_model` is the classifier's entry point; builders take `num_classes` plus the backbone's
keyword options, so a config can pass them through without knowing the family. The options of
parameter-efficient fine-tuning (`peft.OPTIONS`: LoRA, adapters) are taken by every builder and
wrap the backbone (`peft.adapt`); ViT's visual prompts are its own options.
`build_segmenter` and `build_detector` build the dense models (`dense.DenseModel`) on the same
backbones, with the same backbone options, plus the options of `dense.segmenter` /
`dense.detector` (channels, strides, ...); `feature_levels` says which backbone stage feeds
which stride of their feature pyramid.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable

import flax.linen as nn

from jtransfer.errors import JTransferError
from jtransfer.models import bit_spec, dense, efficientnet_lite_spec, peft, resnet_spec, vit_spec
from jtransfer.models.bit import BiT
from jtransfer.models.dense import DenseModel
from jtransfer.models.efficientnet_lite import EfficientNetLite
from jtransfer.models.heads import ClassificationHead, ImageClassifier
from jtransfer.models.resnet import ResNet
from jtransfer.models.vit import ViT


def _backbone(backbone: type[nn.Module], variant: str, kwargs: dict) -> nn.Module:
    """`backbone(variant, **kwargs)`, adapted by the `peft.OPTIONS` among `kwargs`."""
    options = {k: kwargs.pop(k) for k in peft.OPTIONS if k in kwargs}
    return peft.adapt(backbone(variant, **kwargs), **options)


def _efficientnet_lite(
    variant: str,
    num_classes: int,
    *,
    dropout_rate: float | None = None,
    head_init: str = "zeros",
    **backbone_kwargs,
) -> ImageClassifier:
    if dropout_rate is None:
        dropout_rate = efficientnet_lite_spec.variant(variant).dropout
    return ImageClassifier(
        backbone=_backbone(EfficientNetLite, variant, backbone_kwargs),
        head=ClassificationHead(num_classes, dropout_rate, head_init),
    )


def _classifier(
    backbone: type[nn.Module],
    variant: str,
    num_classes: int,
    *,
    dropout_rate: float = 0.0,
    head_init: str = "zeros",
    **backbone_kwargs,
) -> ImageClassifier:
    return ImageClassifier(
        backbone=_backbone(backbone, variant, backbone_kwargs),
        head=ClassificationHead(num_classes, dropout_rate, head_init),
    )


# Model name -> its backbone class, whose fields are the model's options.
BACKBONES: dict[str, type[nn.Module]] = {
    **dict.fromkeys(efficientnet_lite_spec.VARIANTS, EfficientNetLite),
    **dict.fromkeys(resnet_spec.VARIANTS, ResNet),
    **dict.fromkeys(bit_spec.VARIANTS, BiT),
    **dict.fromkeys(vit_spec.VARIANTS, ViT),
}

MODELS: dict[str, Callable[..., ImageClassifier]] = {
    **{
        name: functools.partial(_efficientnet_lite, name)
        for name in efficientnet_lite_spec.VARIANTS
    },
    **{name: functools.partial(_classifier, ResNet, name) for name in resnet_spec.VARIANTS},
    **{name: functools.partial(_classifier, BiT, name) for name in bit_spec.VARIANTS},
    **{name: functools.partial(_classifier, ViT, name) for name in vit_spec.VARIANTS},
}


_SPECS = {
    **dict.fromkeys(efficientnet_lite_spec.VARIANTS, efficientnet_lite_spec),
    **dict.fromkeys(resnet_spec.VARIANTS, resnet_spec),
    **dict.fromkeys(bit_spec.VARIANTS, bit_spec),
    **dict.fromkeys(vit_spec.VARIANTS, vit_spec),
}


def _known(name: str) -> None:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise JTransferError(f"unknown model {name!r}; valid: {sorted(MODELS)}.{hint}")


def stage_names(name: str) -> list[str]:
    """Backbone subtrees from input to output (`stem`, `stage1`, ...): what presets freeze."""
    _known(name)
    return _SPECS[name].stage_names(name)


def layer_names(name: str) -> list[str]:
    """Backbone subtrees at block granularity, input to output (layer-wise learning rates)."""
    _known(name)
    return _SPECS[name].layer_names(name)


def has_batch_norm(name: str) -> bool:
    """Whether the backbone has BatchNorm layers, i.e. takes a `norm_eval` policy."""
    _known(name)
    return "norm_eval" in inspect.signature(BACKBONES[name]).parameters


def has_prompts(name: str) -> bool:
    """Whether the backbone takes visual prompt tokens (`prompts`: ViT)."""
    _known(name)
    return "prompts" in inspect.signature(BACKBONES[name]).parameters


def lora_targets(name: str) -> str:
    """The kernels LoRA adapts by default (a regex over parameter paths): ViT's attention and
    MLP projections, the CNNs' 1x1 convolutions."""
    _known(name)
    return peft.default_targets(BACKBONES[name](name))


def lora_rank(name: str) -> int:
    """The rank LoRA uses by default on model `name` (`peft.default_rank`)."""
    _known(name)
    return peft.default_rank(BACKBONES[name](name))


def _check_kwargs(
    name: str, kwargs: dict, own: frozenset[str] = frozenset({"dropout_rate", "head_init"})
) -> None:
    allowed = own | set(peft.OPTIONS) | set(inspect.signature(BACKBONES[name]).parameters)
    allowed -= {"variant"}
    unknown = sorted(set(kwargs) - allowed)
    if "prompts" in unknown:
        raise JTransferError(
            f"prompts={kwargs['prompts']!r}: visual prompt tuning needs a ViT backbone "
            f"({', '.join(vit_spec.VARIANTS)}), not {name!r}"
        )
    if unknown:
        raise JTransferError(
            f"model {name!r} got unknown options {unknown}; valid: {sorted(allowed)}"
        )


def build_model(name: str, num_classes: int, **kwargs) -> ImageClassifier:
    """The registered model `name` with a fresh `num_classes`-way head."""
    _known(name)
    _check_kwargs(name, kwargs)
    return MODELS[name](num_classes, **kwargs)


def feature_levels(name: str, patch_size: int | None = None) -> dict[int, str]:
    """Stride -> the backbone stage (a key of `return_stages=True`) that a feature pyramid reads
    at that stride: strides 4, 8, 16, 32 for the CNNs, the patch size (`patch_size` where the
    model overrides the variant's) for ViT."""
    _known(name)
    if _SPECS[name] is vit_spec:
        return vit_spec.feature_levels(name, patch_size)
    return _SPECS[name].feature_levels(name)


def _build_dense(build: Callable[..., DenseModel], name: str, num_classes: int, kwargs: dict):
    """`build(backbone, levels, num_classes, **own options)`: kwargs split between `build`'s
    keyword options and the backbone's fields; `dtype` goes to both."""
    _known(name)
    own = {p.name for p in inspect.signature(build).parameters.values() if p.kind == p.KEYWORD_ONLY}
    _check_kwargs(name, kwargs, frozenset(own))
    dense_kwargs = {k: kwargs.pop(k) for k in own & set(kwargs) if k != "dtype"}
    if "dtype" in kwargs:
        dense_kwargs["dtype"] = kwargs["dtype"]
    levels = feature_levels(name, kwargs.get("patch_size"))
    return build(_backbone(BACKBONES[name], name, kwargs), levels, num_classes, **dense_kwargs)


def build_segmenter(name: str, num_classes: int, **kwargs) -> DenseModel:
    """Backbone `name` -> feature pyramid -> semantic segmentation head (`dense.segmenter`)."""
    return _build_dense(dense.segmenter, name, num_classes, kwargs)


def build_detector(name: str, num_classes: int, **kwargs) -> DenseModel:
    """Backbone `name` -> feature pyramid -> FCOS detection head (`dense.detector`)."""
    return _build_dense(dense.detector, name, num_classes, kwargs)
