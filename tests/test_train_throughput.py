"""Gradient accumulation and bfloat16 compute in the train step (`phase.make_train_step`).

Accumulating k micro-batches must give the update of the whole batch (≤ 1e-5 relative) for a
model without batch statistics (ViT) and for BatchNorm in inference mode; BatchNorm that trains
its statistics normalises each micro-batch by its own, which is a different update (and the
check below sees the difference, so it can fail). bfloat16 compute keeps parameters and
optimizer state float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtransfer import base_config, models, optim, phase, tasks
from jtransfer.errors import JTransferError
from jtransfer.models.heads import ClassificationHead, ImageClassifier
from jtransfer.models.layers import ConvBN
from jtransfer.policy import Policy, flatten

BATCH = 16
NAMES = [str(i) for i in range(10)]


def _setup(model, pairs=((".*", "train"),)):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (BATCH, 32, 32, 3)), jnp.float32)
    batch = {"image": images, "label": jnp.arange(BATCH) % 10}
    variables = model.init(jax.random.key(0), images[:1], train=False)
    params = variables["params"]
    # A zero head (as initialised) sends no gradient into the backbone; give it weights.
    kernel = params["head"]["dense"]["kernel"]
    params["head"]["dense"]["kernel"] = jnp.asarray(rng.normal(0, 0.1, kernel.shape), jnp.float32)
    policy = Policy.from_pairs(pairs)
    mask = policy.trainable_mask(params)
    tx = optim.build_optimizer(
        {"name": "sgd"}, optax.constant_schedule(0.1), policy, params, 1e-4, 1.0
    )
    state = phase.initial_state(
        params, variables.get("batch_stats", {}), tx=tx, mask=mask, phase=0, seed=0, ema=False
    )
    return state, batch, tx, mask


def _updates(model, accum_steps, pairs=((".*", "train"),)):
    """(parameter updates, new batch statistics, metrics) of one step from the same state."""
    state, batch, tx, mask = _setup(model, pairs)
    loss = tasks.build(base_config.get_config(), NAMES).loss
    step = jax.jit(phase.make_train_step(model, loss, tx, mask, grad_accum_steps=accum_steps))
    new, metrics = step(state, batch)
    delta = jax.tree.map(jnp.subtract, new["params"], state["params"])
    return flatten(jax.device_get(delta)), jax.device_get(new["batch_stats"]), metrics


def _relative_difference(a: dict, b: dict) -> float:
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in b)
    return diff / max(float(np.max(np.abs(v))) for v in b.values())


def test_accumulating_vit_gradients_gives_the_update_of_the_whole_batch():
    model = models.build_model("vit_ti16", 10)
    whole, _, whole_metrics = _updates(model, 1)
    accumulated, _, metrics = _updates(model, 4)
    assert _relative_difference(accumulated, whole) <= 1e-5
    assert float(metrics["loss"]) == pytest.approx(float(whole_metrics["loss"]), rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(float(whole_metrics["accuracy"]))


class ConvNet(nn.Module):
    """Two ConvBN stages: the library's BatchNorm, which `norm_eval` holds in inference mode."""

    norm_eval: str = ""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i, width in enumerate((16, 32), start=1):
            x = ConvBN(width, 3, 2, norm_eval=self.norm_eval, name=f"stage{i}")(x, train=train)
        return x


def test_accumulation_with_batchnorm_in_inference_mode_and_frozen_layers():
    pairs = (("backbone/stage1/.*", "frozen"), (".*", "train"))
    held = ImageClassifier(ConvNet(norm_eval=".*"), ClassificationHead(10))
    whole, _, _ = _updates(held, 1, pairs)
    accumulated, _, _ = _updates(held, 4, pairs)
    assert _relative_difference(accumulated, whole) <= 1e-5
    assert not np.any(accumulated["backbone/stage1/conv/kernel"])  # frozen: bit-identical
    # Training statistics: each micro-batch is normalised by its own, a different update.
    training = ImageClassifier(ConvNet(), ClassificationHead(10))
    whole, _, _ = _updates(training, 1, pairs)
    accumulated, _, _ = _updates(training, 4, pairs)
    assert _relative_difference(accumulated, whole) > 1e-3


def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state():
    def task(dtype):
        config = base_config.get_config()
        config.model.name, config.compute_dtype = "vit_ti16", dtype
        return tasks.build(config, NAMES)

    losses = {}
    for dtype in ("float32", "bfloat16"):
        model = task(dtype).build_model()
        state, batch, tx, mask = _setup(model)
        step = jax.jit(phase.make_train_step(model, task(dtype).loss, tx, mask))
        if dtype == "bfloat16":
            assert "bf16" in str(jax.make_jaxpr(step)(state, batch))
        state, metrics = step(state, batch)
        losses[dtype] = float(metrics["loss"])
        leaves = jax.tree.leaves({k: state[k] for k in ("params", "opt_state")})
        assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {
            jnp.dtype(jnp.float32)
        }
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
    assert losses["bfloat16"] != losses["float32"]
    with pytest.raises(JTransferError, match="unknown compute_dtype 'float16'"):
        task("float16").build_model()
