import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtransfer.errors import JTransferError
from jtransfer.models import build_model
from jtransfer.models.heads import ClassificationHead, ImageClassifier


class _Backbone(nn.Module):
    """A stand-in feature extractor: (N, H, W, 3) -> (N, H/2, W/2, 8)."""

    @nn.compact
    def __call__(self, x, *, train):
        return nn.Conv(8, (2, 2), strides=2, name="conv")(x)


def _model(dropout_rate=0.0):
    return ImageClassifier(backbone=_Backbone(), head=ClassificationHead(5, dropout_rate))


def test_tree_names_and_zero_head():
    x = jnp.ones((2, 8, 8, 3))
    variables = _model().init(jax.random.key(0), x, train=False)
    assert set(variables["params"]) == {"backbone", "head"}
    head = variables["params"]["head"]
    assert set(head) == {"dense"}
    assert head["dense"]["kernel"].shape == (8, 5)
    np.testing.assert_array_equal(head["dense"]["kernel"], 0)
    np.testing.assert_array_equal(head["dense"]["bias"], 0)
    np.testing.assert_array_equal(_model().apply(variables, x, train=False), 0)


def test_features_are_pooled_backbone_output():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    model = _model()
    variables = model.init(jax.random.key(0), x, train=False)
    features = model.apply(variables, x, method="features")
    maps = _Backbone().apply({"params": variables["params"]["backbone"]}, x, train=False)
    np.testing.assert_allclose(features, maps.mean(axis=(1, 2)), rtol=1e-6)
    assert features.shape == (2, 8)


def test_dropout_only_in_training():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
    model = _model(dropout_rate=0.5)
    variables = model.init(jax.random.key(0), x, train=False)
    variables["params"]["head"]["dense"]["kernel"] = jnp.ones((8, 5))
    evaluated = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(evaluated, model.apply(variables, x, train=False))
    trained = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(trained, evaluated)


def test_a_random_head_has_lecun_normal_variance_and_a_zero_bias():
    x = jnp.ones((1, 224, 224, 3))
    model = build_model("efficientnet_lite0", 50, head_init="lecun_normal")
    kernels = []
    for seed in (0, 1):
        head = jax.jit(lambda r: model.init(r, x, train=False))(jax.random.key(seed))
        head = head["params"]["head"]["dense"]
        np.testing.assert_array_equal(head["bias"], 0)
        kernels.append(np.asarray(head["kernel"]))
    # fan-in 1280: std sqrt(1 / 1280) = 0.0280 (truncated normal), over 64,000 draws
    assert kernels[0].shape == (1280, 50)
    assert abs(kernels[0].std() - 1280**-0.5) < 0.001
    assert not np.array_equal(kernels[0], kernels[1])  # the seed draws it


def test_an_unknown_head_init_is_an_error_naming_it():
    with pytest.raises(JTransferError, match=r"head_init='normal' .* valid: \['zeros', 'lecun"):
        build_model("vit_ti16", 3, head_init="normal")
