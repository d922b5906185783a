"""Tests for jtransfer.models.vit: parameter layout, pooling, stages, dropout, options.

Layout checks use `jax.eval_shape` (no compilation); the forward checks run ViT-Ti/32 on 64 px
inputs (a 2 x 2 grid) with numpy-drawn variables, several outputs per compiled program:
`model.init` alone compiles for over 10 s on a 2-core CPU. Numerical parity with timm is in
test_pretrained_vit.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jtransfer.models import build_model
from jtransfer.models.vit import ViT, layer_names, stage_names


def _shapes(model, shape=(1, 224, 224, 3)) -> dict[str, tuple]:
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    return {k: v.shape for k, v in traverse_util.flatten_dict(variables, sep="/").items()}


def test_b16_layout():
    shapes = _shapes(build_model("vit_b16", 10))
    expected = {
        "params/backbone/embed/patch/kernel": (16, 16, 3, 768),
        "params/backbone/embed/patch/bias": (768,),
        "params/backbone/embed/cls_token": (1, 1, 768),
        "params/backbone/embed/pos_embedding": (1, 14, 14, 768),
        "params/backbone/norm/scale": (768,),
        "params/backbone/norm/bias": (768,),
        "params/head/dense/kernel": (768, 10),
        "params/head/dense/bias": (10,),
    }
    for i in range(1, 13):
        block = f"params/backbone/block{i}"
        for norm in ("norm1", "norm2"):
            expected[f"{block}/{norm}/scale"] = expected[f"{block}/{norm}/bias"] = (768,)
        for name, kernel in (
            ("attn/qkv", (768, 2304)),
            ("attn/proj", (768, 768)),
            ("mlp/fc1", (768, 3072)),
            ("mlp/fc2", (3072, 768)),
        ):
            expected[f"{block}/{name}/kernel"] = kernel
            expected[f"{block}/{name}/bias"] = kernel[-1:]
    assert shapes == expected
    # timm's vit_base_patch16_224 with a 10-way head, less the class token's position embedding
    # (folded into cls_token here).
    assert sum(np.prod(s) for s in shapes.values()) == 86_567_656 - 990 * 769 - 768


def test_sizes_and_options_shape_the_tree():
    l32 = _shapes(build_model("vit_l32", 10), (1, 384, 384, 3))
    assert l32["params/backbone/embed/patch/kernel"] == (32, 32, 3, 1024)
    assert l32["params/backbone/embed/pos_embedding"] == (1, 12, 12, 1024)
    assert "params/backbone/block24/mlp/fc1/kernel" in l32
    gray_gap = _shapes(build_model("vit_ti16", 10, pool="gap", patch_size=8), (1, 64, 48, 1))
    assert gray_gap["params/backbone/embed/patch/kernel"] == (8, 8, 1, 192)
    assert gray_gap["params/backbone/embed/pos_embedding"] == (1, 8, 6, 192)
    assert not any("cls_token" in path for path in gray_gap)


def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
    model = build_model("vit_ti32", 10, dtype=jnp.bfloat16)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    features = jax.eval_shape(lambda v: model.apply(v, x, method="features"), variables)
    stages = jax.eval_shape(
        lambda v: model.backbone.apply(v, x, train=False, return_stages=True),
        {"params": variables["params"]["backbone"]},
    )
    assert features.dtype == jnp.float32  # the head pools in float32
    assert {s.dtype for s in stages.values()} == {jnp.dtype(jnp.bfloat16)}


def test_stage_and_layer_names_cover_the_backbone_in_order():
    names = stage_names("vit_s32")
    assert names == ["embed", *(f"block{i}" for i in range(1, 13)), "norm"]
    assert layer_names("vit_s32") == names
    assert len(stage_names("vit_l16")) == 26
    tops = {p.split("/")[2] for p in _shapes(build_model("vit_s32", 10)) if "/backbone/" in p}
    assert tops == set(names)


def _random_variables(model, x) -> dict:
    """Variables of `model`'s shapes drawn by numpy: `model.init` compiles for 10+ s here."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)


@jax.jit
def _run(variables, x):
    """(pooled features, stage maps, trained-mode features, logits) of `_ti32` in one program."""
    pooled = _ti32.apply(variables, x, train=False)
    stages = _ti32.apply(variables, x, train=False, return_stages=True)
    trained = _ti32.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    return pooled, stages, trained


_ti32 = ViT("vit_ti32", dropout=0.1)
_X = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)


def test_return_stages_gives_token_maps_and_cls_output():
    pooled, stages, _ = _run(_random_variables(_ti32, _X), _X)
    assert set(stages) == set(stage_names("vit_ti32"))  # jit returns dicts key-sorted
    assert all(v.shape == (2, 2, 2, 192) for v in stages.values())
    assert pooled.shape == (2, 192)
    # The class token is pooled, not the patch tokens.
    assert not np.allclose(pooled, stages["norm"].mean(axis=(1, 2)), atol=1e-2)


def test_dropout_only_in_training():
    pooled, _, trained = _run(_random_variables(_ti32, _X), _X)
    assert not np.allclose(trained, pooled)


def test_gap_pooling_is_the_mean_of_the_final_maps():
    backbone = ViT("vit_ti32", pool="gap")

    @jax.jit
    def run(variables):
        stages = backbone.apply(variables, _X, train=False, return_stages=True)
        return backbone.apply(variables, _X, train=False), stages["norm"].mean(axis=(1, 2))

    pooled, mean = run(_random_variables(backbone, _X))
    np.testing.assert_allclose(pooled, mean, rtol=1e-5, atol=1e-6)


def test_classifier_head_takes_the_pooled_vector():
    model = build_model("vit_ti32", 5)
    variables = _random_variables(model, _X)
    features, logits = jax.jit(
        lambda v: (model.apply(v, _X, method="features"), model.apply(v, _X, train=False))
    )(variables)
    assert features.shape == (2, 192)
    head = variables["params"]["head"]["dense"]
    np.testing.assert_allclose(
        logits, features @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5
    )


def test_unknown_pool_is_an_error():
    with pytest.raises(ValueError, match="pool must be one of"):
        jax.eval_shape(lambda: ViT("vit_ti32", pool="map").init(jax.random.key(0), _X, train=False))
