import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jtransfer.models import layers


def _normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _vjp(fn, x, kernel):
    """fn(x, kernel) and its gradients for a random cotangent (jitted: eager is slower)."""
    y = jax.eval_shape(fn, x, kernel)
    return jax.jit(lambda x, kernel, ct: (fn(x, kernel), *jax.vjp(fn, x, kernel)[1](ct)))(
        x, kernel, _normal(3, *y.shape)
    )


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_shifted_matches_native(size, k, stride):
    x = _normal(0, 2, size, size + 1, 6)
    kernel = _normal(1, k, k, 1, 6)
    native = _vjp(lambda x, w: layers.depthwise_native(x, w, stride), x, kernel)
    shifted = _vjp(lambda x, w: layers.depthwise_shifted(x, w, stride), x, kernel)
    assert shifted[0].shape == (2, -(-size // stride), -(-(size + 1) // stride), 6)
    for name, a, b in zip(("output", "d input", "d kernel"), native, shifted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_depthwise_impl_auto_picks_by_backend():
    expected = layers.depthwise_shifted if jax.default_backend() == "cpu" else None
    if expected is not None:
        assert layers.resolve_depthwise_impl("auto") is expected
    assert layers.resolve_depthwise_impl("native") is layers.depthwise_native
    with pytest.raises(ValueError, match="depthwise_impl"):
        layers.resolve_depthwise_impl("fast")


@pytest.mark.parametrize(("k", "stride"), [(1, 1), (3, 2), (3, 1)])
def test_conv_matches_lax_convolution(k, stride):
    x = _normal(0, 2, 9, 8, 3)
    conv = layers.Conv(5, k, stride)
    shapes = jax.eval_shape(conv.init, jax.random.key(1), x)
    assert shapes["params"]["kernel"].shape == (k, k, 3, 5)
    kernel = _normal(1, k, k, 3, 5)

    def reference(x, kernel):
        dims = ("NHWC", "HWIO", "NHWC")
        return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=dims)

    ours = _vjp(lambda x, w: conv.apply({"params": {"kernel": w}}, x), x, kernel)
    ref = _vjp(reference, x, kernel)
    for a, b in zip(ref, ours, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_batch_norm_train_gradient_matches_autodiff():
    x = _normal(0, 4, 3, 3, 5) * 2 + 1
    scale, bias = jnp.linspace(0.5, 2, 5), jnp.linspace(-1, 1, 5)
    weights = _normal(1, 3, 4, 3, 3, 5)

    def reference(x, scale, bias):
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        return (x - mean) * lax.rsqrt(var + 1e-3) * scale + bias, mean, var

    def loss(fn, *args):
        y, mean, var = fn(*args)  # the statistics are outputs too: their gradient must be right
        return jnp.sum(y * weights[0]) + jnp.sum(mean * weights[1, 0, 0, 0]) + jnp.sum(var)

    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    ref = grad(reference, x, scale, bias)
    for shift in (jnp.zeros(5), jnp.full(5, 1.2)):  # the shift changes rounding, not the result
        ours = grad(lambda *a, s=shift: layers.batch_norm_train(*a, s, 1e-3), x, scale, bias)
        for a, b in zip(ref, ours, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batch_norm_statistics_survive_a_large_mean():
    # One-pass E[x²] - E[x]² in float32 loses the variance when |mean| >> std; the shift
    # (the running mean in the model) keeps it.
    x = 1000.0 + _normal(0, 64, 4, 4, 3) * 0.01
    _, mean, var = layers.batch_norm_train(x, jnp.ones(3), jnp.zeros(3), jnp.full(3, 1000.0), 1e-3)
    np.testing.assert_allclose(var, np.var(np.asarray(x, np.float64), (0, 1, 2)), rtol=1e-3)


class _Net(nn.Module):
    norm_eval: str

    @nn.compact
    def __call__(self, x, train):
        x = layers.BatchNorm(self.norm_eval, name="first")(x, train=train)
        return layers.BatchNorm(self.norm_eval, name="second")(x, train=train)


def test_batch_norm_norm_eval_matches_module_path():
    x = _normal(0, 8, 2, 2, 3) * 3 + 2
    net = _Net(norm_eval="^sec")
    variables = net.init(jax.random.key(1), x, train=False)
    variables["batch_stats"]["second"] = {"mean": jnp.full(3, 0.5), "var": jnp.full(3, 4.0)}
    y, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])

    stats = updates["batch_stats"]
    assert not np.allclose(stats["first"]["mean"], 0)  # trained: running stats move
    np.testing.assert_array_equal(stats["second"]["mean"], 0.5)  # frozen: bit-identical
    np.testing.assert_array_equal(stats["second"]["var"], 4.0)
    first = layers.batch_norm_train(x, jnp.ones(3), jnp.zeros(3), jnp.zeros(3), 1e-3)[0]
    np.testing.assert_allclose(y, (first - 0.5) * lax.rsqrt(4.0 + 1e-3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("k", "stride", "cin", "padding"),
    [
        (3, 2, 3, "symmetric"),  # im2col on CPU
        (3, 2, 8, "symmetric"),  # XLA's convolution
        (7, 2, 3, "symmetric"),
        (1, 2, 8, "symmetric"),  # strided slice + matrix product
        (1, 2, 8, "same"),
    ],
)
def test_conv_padding_matches_lax_convolution(k, stride, cin, padding):
    x, kernel = _normal(0, 2, 8, 10, cin), _normal(1, k, k, cin, 5)
    conv = layers.Conv(5, k, stride, padding=padding)
    pads = [(k // 2, k // 2)] * 2 if padding == "symmetric" else "SAME"

    def reference(x, kernel):
        dims = ("NHWC", "HWIO", "NHWC")
        return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=dims)

    ours = _vjp(lambda x, w: conv.apply({"params": {"kernel": w}}, x), x, kernel)
    for a, b in zip(_vjp(reference, x, kernel), ours, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="padding"):
        layers.conv2d(x, _normal(1, 3, 3, cin, 5), 1, "valid")


def test_std_conv_standardises_each_output_channel():
    kernel = _normal(0, 3, 3, 4, 5) * 3 + 2
    std = layers.standardize_kernel(kernel, 1e-8)
    np.testing.assert_allclose(std.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(std.var(axis=(0, 1, 2)), 1, atol=1e-4)
    x = _normal(1, 1, 6, 6, 4)
    y = layers.StdConv(5, 3).apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_allclose(y, layers.conv2d(x, std, 1, "symmetric"), rtol=1e-6)


def test_conv_bn_activation_and_constants():
    unit = layers.ConvBN(4, 3, padding="symmetric", act_fn=nn.relu, bn_epsilon=1e-5)
    x = _normal(0, 1, 5, 5, 2)
    shapes = jax.eval_shape(functools.partial(unit.init, train=False), jax.random.key(0), x)
    variables = jax.tree.map(lambda s: jnp.ones(s.shape), shapes)
    variables["params"]["bn"]["bias"] = jnp.full(4, 10.0)
    variables["batch_stats"]["bn"]["mean"] = jnp.full(4, 2.0)
    y = unit.apply(variables, x, train=False)
    conv = layers.conv2d(x, variables["params"]["conv"]["kernel"], 1, "symmetric")
    np.testing.assert_allclose(y, nn.relu((conv - 2.0) / jnp.sqrt(1 + 1e-5) + 10), rtol=1e-5)
    assert float(y.max()) > 6  # ReLU, not the default ReLU6


def test_fresh_kernels_have_tf_efficientnets_he_variance():
    """He's variance 2 / fan-out with TF EfficientNet's fan-out: k·k·out_filters for a
    convolution, k·k for a depthwise kernel, whose output filters TF counts per channel. With
    Flax's fan-out of the (k, k, 1, C) layout (k·k·C), a Lite0 from scratch evaluated as one
    class."""
    x = jnp.zeros((1, 8, 8, 672))
    depthwise = layers.DepthwiseConv(5).init(jax.random.key(0), x)["params"]["kernel"]
    assert depthwise.shape == (5, 5, 1, 672)
    np.testing.assert_allclose(np.var(depthwise), 2 / 25, rtol=0.05)
    pointwise = layers.conv_init(jax.random.key(1), (1, 1, 112, 672))
    np.testing.assert_allclose(np.var(pointwise), 2 / 672, rtol=0.05)
