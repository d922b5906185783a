import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtransfer.models import efficientnet_lite_spec as spec
from jtransfer.models.efficientnet_lite import EfficientNetLite

# EfficientNet-Lite0, written out: (stage/block, in, expanded, out, kernel).
LITE0_BLOCKS = [
    ("stage1/block1", 32, 32, 16, 3),
    ("stage2/block1", 16, 96, 24, 3),
    ("stage2/block2", 24, 144, 24, 3),
    ("stage3/block1", 24, 144, 40, 5),
    ("stage3/block2", 40, 240, 40, 5),
    ("stage4/block1", 40, 240, 80, 3),
    ("stage4/block2", 80, 480, 80, 3),
    ("stage4/block3", 80, 480, 80, 3),
    ("stage5/block1", 80, 480, 112, 5),
    ("stage5/block2", 112, 672, 112, 5),
    ("stage5/block3", 112, 672, 112, 5),
    ("stage6/block1", 112, 672, 192, 5),
    ("stage6/block2", 192, 1152, 192, 5),
    ("stage6/block3", 192, 1152, 192, 5),
    ("stage6/block4", 192, 1152, 192, 5),
    ("stage7/block1", 192, 1152, 320, 3),
]


def _shapes(model, x):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def _random_variables(model, x, seed=0):
    """Variables of the right shapes without compiling Flax's initialisers (slow on CPU)."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype)
        return jnp.full(s.shape, {"scale": 1.0, "var": 1.0}.get(name, 0.0), s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, _shapes(model, x))


def _flat_shapes(tree):
    return {k: v.shape for k, v in flax.traverse_util.flatten_dict(tree, sep="/").items()}


def _expected_lite0():
    convs = {"stem": (3, 3, 3, 32), "top": (1, 1, 320, 1280)}
    for name, cin, hidden, cout, k in LITE0_BLOCKS:
        if hidden != cin:
            convs[f"{name}/expand"] = (1, 1, cin, hidden)
        convs[f"{name}/depthwise"] = (k, k, 1, hidden)
        convs[f"{name}/project"] = (1, 1, hidden, cout)
    params, stats = {}, {}
    for layer, kernel in convs.items():
        params[f"{layer}/conv/kernel"] = kernel
        params[f"{layer}/bn/scale"] = params[f"{layer}/bn/bias"] = (kernel[-1],)
        stats[f"{layer}/bn/mean"] = stats[f"{layer}/bn/var"] = (kernel[-1],)
    return params, stats


def test_lite0_parameter_tree_is_exact():
    model = EfficientNetLite("efficientnet_lite0")
    shapes = _shapes(model, jnp.zeros((1, 64, 64, 3)))
    params, stats = _expected_lite0()
    assert set(shapes) == {"params", "batch_stats"}
    assert _flat_shapes(shapes["params"]) == params
    assert _flat_shapes(shapes["batch_stats"]) == stats
    assert "expand" not in shapes["params"]["stage1"]["block1"]
    assert len(spec.block_names("efficientnet_lite0")) == len(LITE0_BLOCKS) == 16


def test_block_layout_follows_spec_for_lite4():
    model = EfficientNetLite("efficientnet_lite4")
    shapes = _shapes(model, jnp.zeros((1, 64, 64, 3)))
    blocks = [
        f"{s}/{b}" for s in shapes["params"] if s.startswith("stage") for b in shapes["params"][s]
    ]
    assert sorted(blocks) == sorted(spec.block_names("efficientnet_lite4"))


@pytest.mark.parametrize("size", [64, 65])
def test_return_stages_shapes(size):
    model = EfficientNetLite("efficientnet_lite0")
    x = jnp.zeros((2, size, size, 3))
    variables = _shapes(model, x)
    stages = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, return_stages=True), variables, x
    )
    # Output stride after the stem (2) and each stage (strides 1, 2, 2, 2, 1, 2, 1).
    strides = {"stem": 2, "stage1": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 16}
    strides.update({"stage6": 32, "stage7": 32, "top": 32})
    channels = dict(stem=32, stage1=16, stage2=24, stage3=40, stage4=80, stage5=112)
    channels.update(stage6=192, stage7=320, top=1280)
    assert set(stages) == set(strides)
    for name, feature in stages.items():
        side = -(-size // strides[name])
        assert feature.shape == (2, side, side, channels[name]), name
    final = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert final.shape == stages["top"].shape


@pytest.fixture(scope="module")
def trained_step():
    """Variables of a small lite0 and a jitted train-mode apply for a given norm_eval."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)), jnp.float32)
    variables = _random_variables(EfficientNetLite(), x)
    # Running statistics that differ from any batch's, so that using them is visible.
    variables["batch_stats"] = jax.tree.map(lambda s: s + 0.5, variables["batch_stats"])

    @functools.cache
    def run(norm_eval, train=True):
        model = EfficientNetLite(norm_eval=norm_eval, drop_connect_rate=0.0)
        apply = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"]))
        return apply(variables, x)

    return variables, run


def test_norm_eval_keeps_matching_statistics(trained_step):
    variables, run = trained_step
    _, updates = run("stage1")
    before, after = variables["batch_stats"], updates["batch_stats"]
    for layer in ("depthwise", "project"):
        for stat in ("mean", "var"):
            old = before["stage1"]["block1"][layer]["bn"][stat]
            new = after["stage1"]["block1"][layer]["bn"][stat]
            np.testing.assert_array_equal(new, old)
    for name in ("stem", "stage2"):
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), after[name], before[name])
        assert all(jax.tree.leaves(changed)), name


def test_norm_eval_matching_everything_is_eval_mode(trained_step):
    variables, run = trained_step
    frozen, updates = run(".*")
    evaluated, _ = run("", train=False)
    np.testing.assert_array_equal(frozen, evaluated)
    assert jax.tree.all(
        jax.tree.map(jnp.array_equal, updates["batch_stats"], variables["batch_stats"])
    )


def test_train_mode_differs_from_eval_mode(trained_step):
    _, run = trained_step
    trained, _ = run("")
    evaluated, _ = run("", train=False)
    assert not np.allclose(trained, evaluated)


def test_drop_connect_needs_dropout_rng_and_varies():
    x = jnp.ones((4, 32, 32, 3))
    model = EfficientNetLite(drop_connect_rate=0.5)
    variables = _random_variables(model, x)

    @jax.jit
    def apply(key):
        return model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )[0]

    assert not np.allclose(apply(jax.random.key(1)), apply(jax.random.key(2)))


def test_computation_dtype():
    model = EfficientNetLite(drop_connect_rate=0.0, dtype=jnp.bfloat16)
    x = jnp.zeros((1, 32, 32, 3))
    variables = _shapes(model, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    assert out[0].dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(out[1])} == {jnp.dtype(jnp.float32)}


def test_stage_and_layer_names():
    stages = ["stem", *(f"stage{s}" for s in range(1, 8)), "top"]
    assert spec.stage_names("efficientnet_lite0") == stages
    layers = spec.layer_names("efficientnet_lite0")
    assert layers == ["stem", *(name for name, *_ in LITE0_BLOCKS), "top"]
    model = EfficientNetLite("efficientnet_lite0")
    x = jnp.zeros((1, 32, 32, 3))
    out = jax.eval_shape(
        functools.partial(model.apply, train=False, return_stages=True), _shapes(model, x), x
    )
    assert set(out) == set(stages)
