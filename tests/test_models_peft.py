"""Tests for jtransfer.models.peft and ViT's prompts: LoRA, adapters and VPT on real backbones.

Each model runs at 32 px with base weights that are not trivial (EfficientNet-Lite0's ImageNet
weights, seeded draws for ViT-Ti/16) and a random head, so that logits show any difference in
the features; the added parameters take the values their own initialisers give (only those
leaves are jitted, as `train.initial_variables` does). Forward passes are compiled once per
model and reused with other values.
"""

import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from seeded import seeded_state_dict

from jtransfer import graft, models, pretrained
from jtransfer.errors import JTransferError
from jtransfer.models import bit, peft, resnet
from jtransfer.policy import flatten, unflatten

IMAGES = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
ADDED = re.compile(r"params/(.*/(lora|adapter)/.*|backbone/prompts/.*)")


def _init_abstract(model):
    init = lambda r: model.init({"params": r, "dropout": r}, IMAGES[:1], train=False)  # noqa: E731
    return init, jax.eval_shape(init, jax.random.key(0))


def _variables(name: str, **options) -> tuple[dict, dict]:
    """(base variables, the adapted model's variables): the same base weights, and the added
    leaves as the adapted model initialises them."""
    adapted = models.build_model(name, 3, **options)
    init, abstract = _init_abstract(adapted)
    shapes = {k: v.shape for k, v in flatten(abstract).items()}
    added = [k for k in shapes if ADDED.fullmatch(k)]

    def added_values(r):  # only these leaves are computed (and `init` traced once)
        flat = flatten(init(r))
        return {k: flat[k] for k in added}

    fresh = jax.jit(added_values)(jax.random.key(0))
    head = {k: v for k, v in shapes.items() if k.startswith("params/head/")}
    if name == "efficientnet_lite0":
        base_abstract = _init_abstract(models.build_model(name, 3))[1]
        loaded = pretrained.load("efficientnet_lite0/imagenet")
        base = flatten(graft.graft(base_abstract, loaded, ["head/.*"])[0])
        base.update(seeded_state_dict(head, 0))
    else:
        base = seeded_state_dict({k: v for k, v in shapes.items() if k not in added}, 0)
    return unflatten(base), unflatten({**base, **jax.device_get(fresh)})


def _forward(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=False))


@pytest.fixture(scope="module", params=["vit_ti16", "efficientnet_lite0"])
def lora(request):
    name = request.param
    base, adapted = _variables(name, lora_rank=4, adapter_dim=8)
    base_fn = _forward(models.build_model(name, 3))
    adapted_fn = _forward(models.build_model(name, 3, lora_rank=4, adapter_dim=8))
    return name, base, adapted, base_fn, adapted_fn


def test_lora_and_adapters_start_as_the_base_model(lora):
    name, base, adapted, base_fn, adapted_fn = lora
    flat = flatten(adapted)
    factors = [k for k in flat if k.endswith("/lora/b")]
    adapters = [k for k in flat if k.endswith("/adapter/up/kernel")]
    if name == "vit_ti16":  # qkv, proj, fc1, fc2 in each of 12 blocks; an adapter after each
        assert len(factors) == 48 and len(adapters) == 12
        assert flat["params/backbone/block3/attn/qkv/lora/a"].shape == (192, 4)
        assert flat["params/backbone/block3/attn/qkv/lora/b"].shape == (4, 576)
        assert flat["params/backbone/block3/mlp/fc1/lora/b"].shape == (4, 768)
    else:  # the 1x1 convolutions: 16 project, 15 expand (not stage1's), top; 16 blocks
        assert len(factors) == 32 and len(adapters) == 16
        assert flat["params/backbone/stage2/block1/expand/conv/lora/a"].shape == (1, 1, 16, 4)
        assert flat["params/backbone/top/conv/lora/b"].shape == (4, 1280)
    assert all(np.any(flat[k[:-1] + "a"]) and not np.any(flat[k]) for k in factors)
    np.testing.assert_array_equal(adapted_fn(adapted, IMAGES), base_fn(base, IMAGES))


def test_merged_lora_gives_the_adapted_logits_in_the_base_model(lora):
    name, base, adapted, base_fn, adapted_fn = lora
    rng = np.random.default_rng(2)
    flat = {k: np.asarray(v) for k, v in flatten(adapted).items()}
    for key in [k for k in flat if k.endswith("/lora/b")]:
        flat[key] = rng.normal(0, 0.05, flat[key].shape).astype(np.float32)
    with_lora = adapted_fn(unflatten(flat), IMAGES)  # the adapters still add nothing
    without_adapters = {k: v for k, v in flat.items() if "/adapter/" not in k}
    merged = unflatten(peft.merge_lora(without_adapters, 1.0))
    assert not any("/lora/" in k for k in flatten(merged))
    np.testing.assert_allclose(base_fn(merged, IMAGES), with_lora, atol=1e-5, rtol=1e-5)
    before = base_fn(base, IMAGES)
    assert np.abs(with_lora - before).max() > 0.05 * np.abs(before).max()  # the factors acted


def _tiny_backbone(kind: str) -> nn.Module:
    """One ResNet basic block (3x3/2 and 1x1/2 convolutions, PyTorch padding) or one BiT
    pre-activation bottleneck (weight-standardised: LoRA goes before standardisation), 32 -> 64
    channels at stride 2, with a backbone's call signature."""

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, *, train, return_stages=False):
            if kind == "resnet":
                return resnet.ResidualBlock(16, 64, 2, False, name="block1")(x, train=train)
            return bit.PreActBottleneck(32, 64, 2, name="block1")(x)

    return Tiny()


@pytest.mark.parametrize(
    "kind, targets",
    [("resnet", r"block1/(conv1|downsample)/conv/kernel"), ("bit", r"block1/.*conv[0-9]?/kernel")],
)
def test_lora_merges_exactly_into_strided_and_standardised_convolutions(kind, targets):
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 32)).astype(np.float32)
    plain = _tiny_backbone(kind)
    adapted = peft.adapt(plain, lora_rank=3, lora_scale=0.5, lora_targets=targets)
    variables = jax.jit(lambda r: adapted.init(r, x, train=False))(jax.random.key(0))
    flat = {k: np.asarray(v) for k, v in flatten(variables).items()}
    adapted_paths = sorted(k for k in flat if k.endswith("/lora/a"))
    expected = 2 if kind == "resnet" else 4  # bit: conv1, conv2 (3x3/2), conv3, downsample
    assert len(adapted_paths) == expected, adapted_paths
    rng = np.random.default_rng(4)
    for key in [k for k in flat if "/lora/" in k]:
        flat[key] = rng.normal(0, 0.2, flat[key].shape).astype(np.float32)
    apply = lambda m, v: m.apply(v, x, train=False, mutable=False)  # noqa: E731
    with_lora = apply(adapted, unflatten(flat))
    merged = unflatten(peft.merge_lora(flat, 0.5))
    np.testing.assert_allclose(apply(plain, merged), with_lora, atol=1e-5, rtol=1e-5)
    before = unflatten({k: v for k, v in flat.items() if "/lora/" not in k})
    assert np.abs(with_lora - apply(plain, before)).max() > 0.05  # the factors did something


def test_prompts_deep_and_shallow():
    shallow = models.build_model("vit_ti16", 3, prompts=5, deep_prompts=False)
    shallow_keys = [k for k in flatten(_init_abstract(shallow)[1]) if "/prompts/" in k]
    assert shallow_keys == ["params/backbone/prompts/block1"]

    # VPT-deep with average pooling: the prompts must stay out of the pooled features too
    deep = models.build_model("vit_ti16", 3, prompts=5, pool="gap")
    _, variables = _variables("vit_ti16", prompts=5, pool="gap")
    flat = flatten(variables)
    prompts = {k: v.shape for k, v in flat.items() if "/prompts/" in k}
    assert prompts == {f"params/backbone/prompts/block{i}": (5, 192) for i in range(1, 13)}
    assert np.any(flat["params/backbone/prompts/block1"])

    def stages_and_pooled(module, images):
        return module.backbone(images, train=False, return_stages=True), module.features(images)

    run = jax.jit(lambda v: deep.apply(v, IMAGES, method=stages_and_pooled))
    grids, pooled = run(variables)
    assert grids["block1"].shape == (2, 2, 2, 192)  # the prompts are not in the grids
    np.testing.assert_allclose(pooled, grids["norm"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # block 3's own prompts are attended to by block 3, and come after block 2
    noise = np.random.default_rng(5).normal(size=(5, 192)).astype(np.float32)
    flat["params/backbone/prompts/block3"] = flat["params/backbone/prompts/block3"] + noise
    changed, _ = run(unflatten(flat))
    for stage in ("embed", "block1", "block2"):
        np.testing.assert_array_equal(changed[stage], grids[stage])
    assert np.abs(changed["block3"] - grids["block3"]).max() > 1e-2


def _error(name, **options) -> str:
    model = models.build_model(name, 3, **options)
    with pytest.raises(JTransferError) as info:
        _init_abstract(model)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_lora_pattern_that_matches_no_kernel():
    message = _error("efficientnet_lite0", lora_rank=4, lora_targets=r"backbone/stem/kernel")
    assert message.startswith("lora_targets 'backbone/stem/kernel' matches no kernel LoRA can")
    assert "backbone/stem/conv/kernel" in message  # what it could have named
    # depthwise kernels are not adapted: a pattern naming only them matches nothing
    assert "matches no kernel" in _error(
        "efficientnet_lite0", lora_rank=4, lora_targets=r".*/depthwise/conv/kernel"
    )


def test_a_rank_larger_than_a_kernel():
    message = _error("efficientnet_lite0", lora_rank=17)
    assert message == (
        "lora_rank=17 is larger than the smaller dimension 16 of "
        "backbone/stage1/block1/project/conv/kernel (1, 1, 32, 16): use a rank <= 16 or "
        "lora_targets that leave it out"
    )
    assert "smaller dimension 192 of backbone/block1/attn/qkv/kernel (192, 576)" in _error(
        "vit_ti16", lora_rank=193
    )


def test_prompts_on_a_cnn_and_other_bad_options():
    with pytest.raises(JTransferError, match=r"^prompts=4: visual prompt tuning needs a ViT"):
        models.build_model("efficientnet_lite0", 3, prompts=4)
    with pytest.raises(JTransferError, match=r"lora_rank must be a whole number >= 0 .* -1"):
        models.build_model("resnet50", 3, lora_rank=-1)
    with pytest.raises(JTransferError, match=r"lora_targets 'conv\(' is not a regex"):
        models.build_model("resnet50", 3, lora_rank=2, lora_targets="conv(")
    assert "prompts must be a whole number >= 0" in _error("vit_ti16", prompts=-2)


def test_default_targets_follow_the_family():
    assert models.lora_targets("resnet50") == (
        r"backbone/stage\d+/block\d+/(conv1|conv3|downsample)/conv/kernel"
    )
    assert models.lora_targets("resnet18") == r"backbone/stage\d+/block\d+/downsample/conv/kernel"
