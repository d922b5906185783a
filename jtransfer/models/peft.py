"""Parameter-efficient fine-tuning: LoRA factors and bottleneck adapters added to any backbone.

`adapt(backbone, ...)` wraps a backbone in `Adapted`, which shares the backbone's scope
(`nn.share_scope`, so no path changes) and runs it under a Flax method interceptor
(`nn.intercept_methods`) that adds, inside the layers it intercepts:

* **LoRA** (Hu et al. 2021) on every kernel whose parameter path fully matches `lora_targets`
  (a regex like a policy's): factors `<layer>/lora/a` (the kernel's input axes × rank, for a
  k x k convolution (k, k, in, rank)) and `<layer>/lora/b` (rank × outputs, zero-initialised, so
  the adapted model starts equal to the base model). The layer computes
  `x W + s (x A) B` with `s = lora_scale`: the update runs beside the frozen kernel, so the
  backward pass needs no gradient of `W` itself, only of the low-rank path. The exception is
  BiT's weight-standardised convolution, whose kernel is standardised before use: there the
  update is added to the raw kernel, `std(W + s A B)`, which is what makes it mergeable, at the
  price of that kernel's full gradient. `merge_lora` folds `W + s A B` into plain kernels that
  the un-adapted model loads. Adaptable layers are `nn.Dense` and `layers.Conv` / `StdConv`
  (any kernel size; "the kernel's smaller dimension" is that of its matrix view,
  (k·k·in, out)); depthwise convolutions and ViT's patch embedding are left alone.
* **Adapters** (Houlsby et al. 2019): after each residual block (`BLOCKS`), `y + up(gelu(down(y)))`
  in `<block>/adapter/{down,up}`, with `up` zero-initialised (again: equal at the start).

Visual prompt tuning changes how ViT's token sequence is laid out, so it lives in
`models.vit.ViT` (`prompts`, `deep_prompts`), not here.

The added parameters live in their own named subtrees (`lora`, `adapter`, ViT's `prompts`), so
a policy trains them like anything else (`SUBTREES` are the patterns the presets use) and
`dont_load` re-initialises them on purpose when pretrained weights are grafted.

Why not qwix's LoRA (`qwix.LoraProvider`, the LoRA of Google's JAX quantisation library), which
intercepts `dot_general` / `conv_general_dilated` / `einsum` inside linen modules by path rules:
tried on these models (qwix 0.1.8), it (1) adapts ViT's `nn.Dense` layers but finds no kernel in
the CNNs, whose 1x1 convolutions are matrix products of `kernel[0, 0]` (`layers.conv2d`): qwix
recognises a weight by tracing the operand back through unary primitives to a parameter, and
indexing is not one; (2) names its factors `kernel_lora_a` / `kernel_lora_b` beside the kernel,
not in their own subtree; (3) has no merge of the factors into the kernel; (4) cannot put the
update before BiT's kernel standardisation; and it patches JAX functions globally while a model
runs. Flax's own method interception does what is needed in a few lines, with the factors where
the conventions of DESIGN.md want them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtransfer.errors import JTransferError
from jtransfer.models import resnet_spec
from jtransfer.models.bit import BiT, PreActBottleneck
from jtransfer.models.efficientnet_lite import EfficientNetLite, MBConv
from jtransfer.models.layers import Conv, StdConv, conv2d
from jtransfer.models.resnet import ResidualBlock, ResNet
from jtransfer.models.vit import Block, ViT

LORA, ADAPTER, PROMPTS = "lora", "adapter", "prompts"
# The added parameters as policy / dont_load patterns, by strategy name.
SUBTREES = {"lora": f".*/{LORA}/.*", "adapter": f".*/{ADAPTER}/.*", "vpt": f"backbone/{PROMPTS}/.*"}
# Model options this module takes (`config.model.*`); ViT's `prompts`, `deep_prompts` are its own.
OPTIONS = ("lora_rank", "lora_scale", "lora_targets", "adapter_dim")

DEFAULT_SCALE = 1.0  # `lora_scale` when none is given

BLOCKS = (Block, MBConv, ResidualBlock, PreActBottleneck)  # each gets an adapter after it
_LORA_LAYERS = (nn.Dense, Conv, StdConv)


def default_targets(backbone: nn.Module) -> str:
    """The kernels LoRA adapts unless told otherwise: ViT's attention and MLP projections, the
    1x1 convolutions of the CNN families."""
    if isinstance(backbone, ViT):
        return r"backbone/block\d+/(attn/(qkv|proj)|mlp/(fc1|fc2))/kernel"
    if isinstance(backbone, EfficientNetLite):
        return r"backbone/(stage\d+/block\d+/(expand|project)|top)/conv/kernel"
    if isinstance(backbone, ResNet):
        bottleneck = resnet_spec.variant(backbone.variant).bottleneck
        convs = "(conv1|conv3|downsample)" if bottleneck else "downsample"
        return rf"backbone/stage\d+/block\d+/{convs}/conv/kernel"
    if isinstance(backbone, BiT):
        return r"backbone/stage\d+/block\d+/(conv1|conv3|downsample/conv)/kernel"
    raise JTransferError(f"no default LoRA targets for {type(backbone).__name__}")


def default_rank(backbone: nn.Module) -> int:
    """The rank LoRA uses unless told otherwise: the one that trains about the same share of the
    backbone (1.4 %) on each family. Rank 8 does that on ViT-B/16 and ResNet-50, whose adapted
    kernels are 768 and 64 to 2,048 wide on their narrower side; EfficientNet-Lite's 1x1
    convolutions meet its narrow bottlenecks (16 to 320 channels, median 112), where rank 8 would
    train 5.4 % of Lite0 and rank 2 trains 1.35 %."""
    return 2 if isinstance(backbone, EfficientNetLite) else 8


class LoraFactors(nn.Module):
    """`a` (the kernel's input axes, rank), drawn at random, and `b` (rank, outputs), zeros."""

    kernel_shape: tuple[int, ...]
    rank: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        *inputs, outputs = self.kernel_shape
        # PEFT's / loralib's initialisation of A: uniform in ±1/sqrt(fan_in).
        init_a = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        a = self.param("a", init_a, (*inputs, self.rank))
        b = self.param("b", nn.initializers.zeros, (self.rank, outputs))
        return a, b


class Adapter(nn.Module):
    """Houlsby bottleneck on the last axis: y + up(gelu(down(y))), `up` starting at zero."""

    dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        h = nn.Dense(self.dim, dtype=self.dtype, name="down")(y)
        zeros = nn.initializers.zeros
        up = nn.Dense(y.shape[-1], dtype=self.dtype, kernel_init=zeros, name="up")
        return y + up(nn.gelu(h, approximate=False))


def _kernel_shape(module: nn.Module, x: jax.Array) -> tuple[int, ...]:
    if isinstance(module, nn.Dense):
        return (x.shape[-1], module.features)
    k = module.kernel_size
    return (k, k, x.shape[-1], module.features)


class Adapted(nn.Module):
    """`backbone` with LoRA (`lora_rank` > 0) and/or adapters (`adapter_dim` > 0).

    Same call signature and parameter paths as `backbone`, plus the added subtrees.
    """

    backbone: nn.Module
    lora_rank: int = 0
    lora_scale: float = DEFAULT_SCALE
    lora_targets: str = ""
    adapter_dim: int = 0

    def setup(self):
        nn.share_scope(self, self.backbone)

    def __call__(self, x: jax.Array, *, train: bool, return_stages: bool = False):
        seen, matched = [], []
        intercept = functools.partial(self._intercept, seen, matched)
        with nn.intercept_methods(intercept):
            out = self.backbone(x, train=train, return_stages=return_stages)
        if self.lora_rank and not matched:
            raise JTransferError(
                f"lora_targets {self.lora_targets!r} matches no kernel LoRA can adapt in "
                f"{type(self.backbone).__name__}; it has {len(seen)}, e.g. {', '.join(seen[:3])}"
            )
        return out

    @nn.nowrap  # a wrapped method would itself be intercepted
    def _intercept(self, seen: list, matched: list, next_fun, args, kwargs, context):
        module = context.module
        path = module.path
        if context.method_name != "__call__" or LORA in path or ADAPTER in path:
            return next_fun(*args, **kwargs)
        if isinstance(module, BLOCKS) and self.adapter_dim:
            y = next_fun(*args, **kwargs)
            return Adapter(self.adapter_dim, getattr(module, "dtype", None), name=ADAPTER)(y)
        if not (self.lora_rank and isinstance(module, _LORA_LAYERS)):
            return next_fun(*args, **kwargs)
        kernel = "/".join(path) + "/kernel"
        seen.append(kernel)
        if not re.fullmatch(self.lora_targets, kernel):
            return next_fun(*args, **kwargs)
        matched.append(kernel)
        x = args[0]
        shape = _kernel_shape(module, x)
        smaller = min(int(np.prod(shape[:-1])), shape[-1])
        if self.lora_rank > smaller:
            raise JTransferError(
                f"lora_rank={self.lora_rank} is larger than the smaller dimension {smaller} of "
                f"{kernel} {shape}: use a rank <= {smaller} or lora_targets that leave it out"
            )
        a, b = LoraFactors(shape, self.lora_rank, name=LORA)()
        if isinstance(module, StdConv):
            delta = self.lora_scale * (a.reshape(-1, self.lora_rank) @ b).reshape(shape)
            return next_fun(*args, **kwargs, kernel_delta=delta)
        dtype = module.dtype or x.dtype
        x, a, b = x.astype(dtype), a.astype(dtype), b.astype(dtype)
        if isinstance(module, nn.Dense):
            low = x @ a
        else:
            low = conv2d(x, a, module.stride, module.padding)
        return next_fun(*args, **kwargs) + (low @ b) * jnp.asarray(self.lora_scale, dtype)


def adapt(
    backbone: nn.Module,
    *,
    lora_rank: int = 0,
    lora_scale: float = DEFAULT_SCALE,
    lora_targets: str | None = None,
    adapter_dim: int = 0,
) -> nn.Module:
    """`backbone` as it is, or `Adapted` when LoRA or adapters are asked for; `lora_targets`
    None (or '') means `default_targets(backbone)`."""
    for name, value in (("lora_rank", lora_rank), ("adapter_dim", adapter_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise JTransferError(f"{name} must be a whole number >= 0 (0: off), got {value!r}")
    if not (lora_rank or adapter_dim):
        return backbone
    targets = lora_targets or default_targets(backbone)
    try:
        re.compile(targets)
    except re.error as e:
        raise JTransferError(f"lora_targets {targets!r} is not a regex: {e}") from None
    return Adapted(backbone, lora_rank, float(lora_scale), targets, adapter_dim)


def merge_lora(flat: Mapping[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """'/'-joined variables with every `<layer>/lora/{a,b}` folded into `<layer>/kernel` as
    `W + scale · A B` and dropped: the tree the un-adapted model loads."""
    out = dict(flat)
    for key in [k for k in flat if k.endswith(f"/{LORA}/a")]:
        layer = key[: -len(f"/{LORA}/a")]
        a, b = out.pop(key), out.pop(f"{layer}/{LORA}/b")
        kernel = out[f"{layer}/kernel"]
        delta = a.reshape(-1, a.shape[-1]).astype(np.float64) @ b.astype(np.float64)
        merged = kernel.astype(np.float64) + scale * delta.reshape(kernel.shape)
        out[f"{layer}/kernel"] = merged.astype(kernel.dtype)
    return out
