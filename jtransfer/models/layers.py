"""Convolution building blocks: ConvBN, a BatchNorm with a per-path eval policy, depthwise conv.

Families ported from TF (EfficientNet) pad convolutions as TF 'SAME' does; families ported from
PyTorch (ResNet, BiT) pad k // 2 on every side ('symmetric'). The two differ on strided layers
over even inputs, so `Conv` and `ConvBN` take the rule as a field. `StdConv` is the
weight-standardised convolution of BiT.

XLA's CPU backend runs a depthwise convolution (`feature_group_count == channels`) an order of
magnitude slower than the same arithmetic written as k*k shifted multiply-adds, so the depthwise
layer picks its implementation by backend. Both implementations share the parameter layout
(`kernel` of shape (k, k, 1, C), HWIO as Flax and the pretrained key map expect).

The other CPU-speed choices, each measured on the EfficientNet-Lite0 train step
(scripts/benchmark.py step): the shifted depthwise conv has a hand-written VJP (XLA fuses
autodiff's badly), and a 1x1 convolution is a 2-D matrix product. Both are plain JAX that other
backends run as well.

BatchNorm is written out here rather than wrapping `nn.BatchNorm` so that its variables sit
directly under `bn` (`bn/scale`, `bn/bias`, `bn/mean`, `bn/var`) and so that the decision to
normalise with running statistics can be taken per module from its path (`norm_eval`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# TF EfficientNet's kernel initialiser, He's with fan-out = k·k·out_filters; only new
# (non-pretrained) layers and runs from scratch ever see it.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
# The same for a depthwise kernel (k, k, 1, C), whose out_filters TF counts per channel (its
# layout is (k, k, C, 1)): fan-out k·k. Flax's fan-out of (k, k, 1, C) would be k·k·C, which
# drew weights C times too small in variance, so that a Lite0 from scratch ran its deep depthwise
# layers at activations of variance ~1e-4; BatchNorm hid it in training, but running
# variances started at 1 were still ~100x too large after 450 steps and evaluation collapsed to
# one class.
depthwise_init = nn.initializers.variance_scaling(
    2.0, "fan_out", "truncated_normal", in_axis=-1, out_axis=-2
)

DEPTHWISE_IMPLS = ("auto", "native", "shifted")
PADDINGS = ("same", "symmetric")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (low, high) of one spatial dimension: output size ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_native(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise conv as one grouped convolution: the right choice on GPU and TPU."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _paddings(x: jax.Array, k: int, stride: int, padding: str) -> list[tuple[int, int]]:
    """(low, high) zero padding of H and W under `padding` (one of `PADDINGS`)."""
    if padding == "same":
        return [same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)]
    return [(k // 2, k // 2)] * 2


def _pad_same(x: jax.Array, k: int, stride: int) -> jax.Array:
    """Zero-pad H and W of an NHWC array as TF 'SAME' does for a k x k window."""
    return jnp.pad(x, ((0, 0), *_paddings(x, k, stride, "same"), (0, 0)))


def _windows(xp: jax.Array, k: int, stride: int, out_h: int, out_w: int) -> list[jax.Array]:
    """The k*k strided (out_h, out_w) windows of a padded input, one per kernel tap, row-major."""
    n, c = xp.shape[0], xp.shape[-1]
    return [
        lax.slice(
            xp,
            (0, i, j, 0),
            (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
            (1, stride, stride, 1),
        )
        for i in range(k)
        for j in range(k)
    ]


def _window_sum(xp: jax.Array, kernel: jax.Array, stride: int, out_h: int, out_w: int):
    """'VALID' depthwise conv of a padded input: sum over taps of window * kernel tap."""
    k = kernel.shape[0]
    y = None
    for window, tap in zip(
        _windows(xp, k, stride, out_h, out_w), kernel.reshape(k * k, -1), strict=True
    ):
        y = window * tap if y is None else y + window * tap
    return y


def depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise conv as k*k shifted multiply-adds, which XLA:CPU fuses into one loop."""
    return _depthwise_valid(_pad_same(x, kernel.shape[0], stride), kernel, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_valid(xp: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """'VALID' depthwise conv of an already padded input, with hand-written gradients.

    Autodiff's input gradient sums k*k bounds-checked pads and recomputes their producers for
    every tap (3x slower), and its kernel gradient copies every shifted window to memory before
    reducing it (10x slower).
    """
    k = kernel.shape[0]
    out_h, out_w = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    return _window_sum(xp, kernel, stride, out_h, out_w)


def _depthwise_valid_fwd(xp, kernel, stride):
    return _depthwise_valid(xp, kernel, stride), (xp, kernel)


def _depthwise_valid_bwd(stride, residuals, g):
    xp, kernel = residuals
    k = kernel.shape[0]
    # Input gradient: the transposed convolution, i.e. a stride-1 'VALID' conv with the flipped
    # kernel over g dilated by the stride and padded by k - 1 (plus any rows no window read).
    config = [(0, 0, 0)]
    for size, out in ((xp.shape[1], g.shape[1]), (xp.shape[2], g.shape[2])):
        unread = size - (out - 1) * stride - k
        config.append((k - 1, k - 1 + unread, stride - 1))
    g_dilated = lax.pad(g, jnp.zeros((), g.dtype), [*config, (0, 0, 0)])
    dxp = _window_sum(g_dilated, kernel[::-1, ::-1], 1, *xp.shape[1:3])
    # Kernel gradient: one variadic reduce over (H, W) reads every window in place, then a
    # small sum over the batch; k*k separate reductions would each copy their window first.
    products = [window * g for window in _windows(xp, k, stride, *g.shape[1:3])]
    per_image = lax.reduce(
        products,
        [jnp.zeros((), g.dtype)] * len(products),
        lambda a, b: [u + v for u, v in zip(a, b, strict=True)],
        (1, 2),
    )
    dkernel = jnp.stack(per_image).sum(axis=1).reshape(kernel.shape)
    return dxp, dkernel


_depthwise_valid.defvjp(_depthwise_valid_fwd, _depthwise_valid_bwd)


def resolve_depthwise_impl(impl: str) -> Callable[[jax.Array, jax.Array, int], jax.Array]:
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = "shifted" if jax.default_backend() == "cpu" else "native"
    return depthwise_shifted if impl == "shifted" else depthwise_native


class DepthwiseConv(nn.Module):
    """k x k depthwise convolution, TF 'SAME' padding, no bias."""

    kernel_size: int
    stride: int = 1
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", depthwise_init, (k, k, 1, x.shape[-1]))
        conv = resolve_depthwise_impl(self.impl)
        return conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride)


# Patch length (k * k * input channels) up to which `conv2d` uses im2col on CPU: EfficientNet's
# 3x3 RGB stem (27), for which a GEMM over patches was measured faster than XLA:CPU's
# convolution. For wider patches (ResNet's 3x3 convolutions, its 7x7 RGB stem) XLA's
# convolution measured 2-4x faster than im2col, forward and backward.
_IM2COL_MAX_PATCH = 32


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
    """NHWC x HWIO convolution without bias, output size ceil(input / stride) for odd kernels."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    k, _, c, features = kernel.shape
    if k == 1:
        # A 2-D matrix product: XLA:CPU runs a 1x1 convolution with a slower kernel, and a
        # dot over 4-D operands gets canonicalised with an activation-sized transpose in
        # its weight gradient.
        x = x[:, ::stride, ::stride]
        y = x.reshape(-1, c) @ kernel[0, 0]
        return y.reshape(*x.shape[:-1], features)
    pads = _paddings(x, k, stride, padding)
    if k * k * c > _IM2COL_MAX_PATCH or jax.default_backend() != "cpu":
        return lax.conv_general_dilated(
            x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    n, h, w, _ = x.shape
    out_h = (h + sum(pads[0]) - k) // stride + 1
    out_w = (w + sum(pads[1]) - k) // stride + 1
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    patches = jnp.concatenate(_windows(xp, k, stride, out_h, out_w), axis=-1)
    y = patches.reshape(-1, k * k * c) @ kernel.reshape(k * k * c, features)
    return y.reshape(n, out_h, out_w, features)


class Conv(nn.Module):
    """k x k convolution without bias; `padding` is 'same' (TF) or 'symmetric' (PyTorch)."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    padding: str = "same"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features))
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)


def standardize_kernel(kernel: jax.Array, epsilon: float) -> jax.Array:
    """Each output channel of an HWIO kernel shifted and scaled to mean 0, (biased) variance 1."""
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
    return (kernel - mean) * lax.rsqrt(var + epsilon)


class StdConv(nn.Module):
    """Weight-standardised convolution (BiT, timm's `StdConv2d`): the kernel is standardised per
    output channel in float32 on every call, so the stored parameter is the raw one.

    `kernel_delta` is added to the raw kernel before standardisation: LoRA's update
    (`models.peft`), which can then be merged into the stored kernel exactly.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    padding: str = "symmetric"
    epsilon: float = 1e-8

    @nn.compact
    def __call__(self, x: jax.Array, kernel_delta: jax.Array | None = None) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features))
        if kernel_delta is not None:
            kernel = kernel + kernel_delta
        kernel = standardize_kernel(kernel, self.epsilon)
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)


def _moments(x: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased) variance in float32, from one pass over x and x**2.

    The sums are taken of `x - shift` (the shifted-data algorithm): with `shift` near the mean
    (the running mean) E[x²] - E[x]² does not cancel catastrophically, so the statistics do not
    depend on summation order beyond float32 rounding, e.g. across device counts.
    """
    axes = tuple(range(x.ndim - 1))
    xs = x - shift.astype(x.dtype)
    mean_s = jnp.mean(xs, axes, dtype=jnp.float32)
    mean_sq = jnp.mean(jnp.square(xs), axes, dtype=jnp.float32)
    return mean_s + shift, jnp.maximum(mean_sq - jnp.square(mean_s), 0.0)


def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, shift: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Normalise x with its own batch statistics: (y, batch mean, batch variance).

    `shift` (no gradient) is any per-channel value near the batch mean; see `_moments`.
    Autodiff's gradient is as fast here as a hand-written VJP (measured on the Lite0 train step).
    """
    mean, var = _moments(x, lax.stop_gradient(shift))
    mul = scale * lax.rsqrt(var + epsilon)
    y = x * mul.astype(x.dtype) + (bias - mean * mul).astype(x.dtype)
    return y, mean, var


class BatchNorm(nn.Module):
    """BatchNorm over all but the channel axis; TF defaults (eps 1e-3, momentum 0.99).

    `momentum` is the weight of the old running statistics (PyTorch's momentum 0.1 is 0.9 here).

    With `train=True` it normalises with batch statistics and updates the running ones, unless
    its module path ('/'-joined from the root) matches the regex `norm_eval`: then it behaves as
    in evaluation and leaves the running statistics untouched.
    """

    norm_eval: str = ""
    momentum: float = 0.99
    epsilon: float = 1e-3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
        x = x.astype(self.dtype)

        frozen = bool(self.norm_eval) and re.search(self.norm_eval, "/".join(self.path))
        if train and not frozen:
            y, mean, var = batch_norm_train(x, scale, bias, ra_mean.value, self.epsilon)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var
            return y
        mul = scale * lax.rsqrt(ra_var.value + self.epsilon)
        return x * mul.astype(self.dtype) + (bias - ra_mean.value * mul).astype(self.dtype)


def relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0, 6)


class ConvBN(nn.Module):
    """Convolution (no bias) -> BatchNorm -> optional activation, as submodules `conv` and `bn`.

    The defaults are EfficientNet's (TF padding, ReLU6, TF BatchNorm constants); ResNet passes
    'symmetric' padding, `nn.relu` and PyTorch's BatchNorm constants.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    depthwise: bool = False
    act: bool = True
    norm_eval: str = ""
    depthwise_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    padding: str = "same"
    act_fn: Callable[[jax.Array], jax.Array] = relu6
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.depthwise:
            conv = DepthwiseConv(
                self.kernel_size, self.stride, self.depthwise_impl, self.dtype, name="conv"
            )
        else:
            conv = Conv(
                self.features, self.kernel_size, self.stride, self.dtype, self.padding, name="conv"
            )
        y = conv(x)
        y = BatchNorm(
            self.norm_eval, self.bn_momentum, self.bn_epsilon, dtype=self.dtype, name="bn"
        )(y, train=train)
        return self.act_fn(y) if self.act else y
