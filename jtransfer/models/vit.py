"""Vision Transformer backbone in Flax linen: pre-LN encoder as in timm and big_vision.

The backbone returns the pooled (N, D) vector (final class token, or the mean of the patch tokens
for `pool='gap'`), which `heads.ClassificationHead` takes as is; `return_stages=True` instead
gives every stage's patch tokens as (N, h, w, D) maps for dense heads.

Parameter layout, chosen so that policy regexes read as sentences and resampling is shape-driven:

* `embed/patch/{kernel,bias}`: the patch projection, kernel (p, p, C, D) as a convolution's;
* `embed/pos_embedding`: (1, h, w, D), the *grid* of patch positions only. The class token's
  position embedding is folded into `embed/cls_token` (both are constants added to the same
  token, so the sum is exact); the grid then resamples to another input size with no guessing
  about a class-token slot, and the model's own shape says which grid it wants;
* `block{i}/{norm1, attn/{qkv, proj}, norm2, mlp/{fc1, fc2}}`, 1-based; `qkv` is one (D, 3D)
  projection whose output is ordered (q|k|v, head, head_dim), timm's layout;
* `norm`: the final LayerNorm;
* `prompts/block{i}`: with `prompts` > 0, visual prompt tuning's learned tokens (Jia et al.
  2022), (prompts, D) for each block that gets its own: every block (VPT-deep) or the first
  (`deep_prompts=False`, VPT-shallow). They sit between the class token and the patch tokens;
  a block with its own prompts replaces the previous block's outputs at those positions. Pooled
  features and stage grids leave them out.

The patch projection is a reshape and one matrix product rather than a strided convolution:
the same arithmetic, as fast forward on XLA:CPU and twice as fast for the kernel gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtransfer.errors import JTransferError
from jtransfer.models import vit_spec as spec
from jtransfer.models.vit_spec import layer_names, stage_names

__all__ = ["ViT", "layer_names", "stage_names"]

POOLS = ("cls", "gap")
LN_EPS = 1e-6

_dense_init = dict(
    kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6)
)


class PatchEmbed(nn.Module):
    """(N, H, W, C) -> (N, h, w, D): non-overlapping p x p patches, each projected to D.

    Rows and columns beyond the last whole patch are dropped, as a 'VALID' strided conv does.
    """

    width: int
    patch: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p, (n, height, width, c) = self.patch, x.shape
        h, w = height // p, width // p
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        x = x[:, : h * p, : w * p].astype(self.dtype)
        patches = x.reshape(n, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, p * p * c)
        y = patches @ kernel.reshape(p * p * c, self.width).astype(self.dtype)
        return (y + bias.astype(self.dtype)).reshape(n, h, w, self.width)


class Embed(nn.Module):
    """Patch tokens plus the grid position embedding, then the class token (if any) in front."""

    width: int
    patch: int
    class_token: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = PatchEmbed(self.width, self.patch, self.dtype, name="patch")(x)
        n, h, w, d = x.shape
        posemb = self.param("pos_embedding", nn.initializers.normal(d**-0.5), (1, h, w, d))
        x = (x + posemb.astype(self.dtype)).reshape(n, h * w, d)
        if self.class_token:
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d))
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, d)), x], axis=1)
        return x


class Attention(nn.Module):
    """Multi-head self-attention with one fused `qkv` projection and an output `proj`."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, d = x.shape
        qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv", **_dense_init)(x)
        q, k, v = jnp.moveaxis(qkv.reshape(n, t, 3, self.num_heads, d // self.num_heads), 2, 0)
        y = jax.nn.dot_product_attention(q, k, v).reshape(n, t, d)
        return nn.Dense(d, dtype=self.dtype, name="proj", **_dense_init)(y)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> dropout -> fc2."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1", **_dense_init)(x)
        y = nn.Dropout(self.dropout)(nn.gelu(y, approximate=False), deterministic=not train)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2", **_dense_init)(y)


class Block(nn.Module):
    """Pre-LN encoder block: x + attn(norm1(x)), then x + mlp(norm2(x)); dropout on each branch."""

    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")(x)
        y = Attention(self.num_heads, self.dtype, name="attn")(y)
        x = x + drop(y, deterministic=not train)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")(x)
        y = Mlp(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train=train)
        return x + drop(y, deterministic=not train)


class Prompts(nn.Module):
    """VPT's prompt tokens: `block{i}` of shape (count, width) for each i in `blocks`."""

    count: int
    width: int
    blocks: tuple[int, ...]
    patch: int

    @nn.compact
    def __call__(self) -> dict[int, jax.Array]:
        # VPT's initialisation: uniform in +-sqrt(6 / (3 p^2 + D)), Xavier's for the patch fan-in.
        bound = (6 / (3 * self.patch**2 + self.width)) ** 0.5
        init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)  # noqa: E731
        return {i: self.param(f"block{i}", init, (self.count, self.width)) for i in self.blocks}


class ViT(nn.Module):
    """ViT feature extractor: NHWC images -> pooled (N, D) features.

    `pool` is 'cls' (a class token, its final state is the output) or 'gap' (no class token,
    the mean of the final patch tokens, big_vision's `pool_type='gap'`). `patch_size` overrides
    the variant's patch size (FlexiViT-style: grafting resizes a checkpoint's patch kernel).
    `dropout` applies after the embedding and on each residual branch; `dtype` is the
    computation dtype (parameters stay float32). `prompts` > 0 adds that many visual prompt
    tokens to every block (`deep_prompts`) or to the first one only.
    """

    variant: str = "vit_b16"
    pool: str = "cls"
    patch_size: int | None = None
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    prompts: int = 0
    deep_prompts: bool = True

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_stages: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        v = spec.variant(self.variant)
        patch = self.patch_size or v.patch
        h, w = x.shape[1] // patch, x.shape[2] // patch
        prefix = int(self.pool == "cls")
        if not isinstance(self.prompts, int) or isinstance(self.prompts, bool) or self.prompts < 0:
            raise JTransferError(
                f"prompts must be a whole number >= 0 (0: off), got {self.prompts!r}"
            )
        prompts = {}
        if self.prompts:
            blocks = tuple(range(1, v.depth + 1)) if self.deep_prompts else (1,)
            prompts = Prompts(self.prompts, v.width, blocks, patch, name="prompts")()
        skip = prefix  # tokens before the patch tokens: the class token, then any prompts

        def grid(tokens: jax.Array) -> jax.Array:
            return tokens[:, skip:].reshape(tokens.shape[0], h, w, tokens.shape[-1])

        x = Embed(v.width, patch, class_token=bool(prefix), dtype=self.dtype, name="embed")(x)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        features = {"embed": grid(x)} if return_stages else {}
        for i in range(1, v.depth + 1):
            if i in prompts:
                tokens = jnp.broadcast_to(
                    prompts[i].astype(x.dtype), (x.shape[0], *prompts[i].shape)
                )
                x = jnp.concatenate([x[:, :prefix], tokens, x[:, skip:]], axis=1)
                skip = prefix + self.prompts
            x = Block(v.mlp_dim, v.num_heads, self.dropout, self.dtype, name=f"block{i}")(
                x, train=train
            )
            if return_stages:
                features[f"block{i}"] = grid(x)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)
        if return_stages:
            features["norm"] = grid(x)
            return features
        return x[:, 0] if self.pool == "cls" else jnp.mean(x[:, skip:], axis=1)
