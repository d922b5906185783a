import pytest

from jtransfer.errors import JTransferError
from jtransfer.models import MODELS, build_model
from jtransfer.models.efficientnet_lite import EfficientNetLite
from jtransfer.models.heads import ImageClassifier


def test_registry_names():
    assert {f"efficientnet_lite{i}" for i in range(5)} <= set(MODELS)
    assert {"resnet18", "resnet50", "resnet101", "bit_r50x1", "bit_r50x3"} <= set(MODELS)


def test_build_model_passes_options_through():
    model = build_model("efficientnet_lite2", 7, norm_eval="stem", dropout_rate=0.1)
    assert isinstance(model, ImageClassifier)
    assert isinstance(model.backbone, EfficientNetLite)
    assert model.backbone.variant == "efficientnet_lite2"
    assert model.backbone.norm_eval == "stem"
    assert (model.head.num_classes, model.head.dropout_rate) == (7, 0.1)
    assert build_model("efficientnet_lite2", 7).head.dropout_rate == 0.3  # the variant's own


def test_unknown_name_lists_valid_ones_and_close_matches():
    with pytest.raises(ValueError) as e:
        build_model("efficientnet-lite0", 10)
    message = str(e.value)
    assert "efficientnet_lite4" in message
    assert "Did you mean ['efficientnet_lite0'" in message


def test_unknown_option_is_an_error():
    with pytest.raises(JTransferError, match=r"unknown options \['norm_evl'\].*norm_eval"):
        build_model("efficientnet_lite0", 10, norm_evl="stem")


def test_options_are_the_familys_own():
    assert build_model("resnet50", 3, norm_eval="stem").backbone.norm_eval == "stem"
    with pytest.raises(JTransferError, match=r"unknown options \['depthwise_impl'\]"):
        build_model("resnet50", 3, depthwise_impl="native")
    with pytest.raises(JTransferError, match=r"unknown options \['norm_eval'\]"):
        build_model("bit_r50x1", 3, norm_eval="stem")  # GroupNorm: no statistics to freeze
