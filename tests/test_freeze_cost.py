"""Frozen means free: compiled FLOPs of the EfficientNet-Lite0 train step under freezing.

Invariant 2 of DESIGN.md, proved with XLA's own cost analysis at 224 px, batch 32: a full
step costs at most 3.3 forward passes (no wasted backward), a linear probe at most 0.40 of a
full step, freezing the first half of the blocks at most 0.85 — and switching on global-norm
clipping (which reads gradients) must not raise any of these. `scripts/benchmark.py freeze`
prints the same figures for every strategy, with wall times.
"""

import jax
import jax.numpy as jnp
import pytest

from jtransfer import cost, models, presets
from jtransfer.models import efficientnet_lite_spec

pytestmark = pytest.mark.slow
MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def setup():
    model = models.build_model(MODEL, 1000)
    images = jnp.zeros((32, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images[:1], train=False))
    batch = {"image": images, "label": jnp.zeros(32, jnp.int32), "mask": jnp.ones(32)}
    return variables, batch


def _step_flops(setup, pairs, grad_clip_norm=0.0):
    variables, batch = setup
    config = cost.strategy_config(MODEL, pairs, grad_clip_norm=grad_clip_norm)
    step, state = cost.step_and_state(config, variables, 1000)
    return cost.flops(step, state, batch)


def half_frozen_pairs():
    blocks = efficientnet_lite_spec.block_names(MODEL)
    half = blocks[: len(blocks) // 2]
    return [(f"backbone/(stem|{'|'.join(half)})/.*", "frozen"), (".*", "train")]


def test_frozen_layers_cost_no_backward(setup):
    variables, batch = setup
    forward = cost.flops(cost.forward(cost.strategy_config(MODEL, []), 1000), variables, batch)
    probe_pairs = presets.freeze("head", MODEL)[0]
    for clip in (0.0, 1.0):
        full = _step_flops(setup, [(".*", "train")], grad_clip_norm=clip)
        assert full <= 3.3 * forward, (clip, full / forward)
        assert _step_flops(setup, probe_pairs, grad_clip_norm=clip) <= 0.40 * full
        assert _step_flops(setup, half_frozen_pairs(), grad_clip_norm=clip) <= 0.85 * full
