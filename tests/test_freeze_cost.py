"""Frozen means free: compiled FLOPs of the EfficientNet-Lite0 train step under freezing.

Invariant 2 of DESIGN.md, proved with XLA's own cost analysis at 224 px, batch 32: a full
step costs at most 3.3 forward passes (no wasted backward), a linear probe at most 0.40 of a
full step, freezing the first half of the blocks at most 0.85 — and switching on global-norm
clipping (which reads gradients) must not raise any of these.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from jtransfer import models, presets
from jtransfer.models import efficientnet_lite_spec
from jtransfer.optim import build_optimizer
from jtransfer.policy import Policy
from jtransfer.train import make_eval_step, make_train_step

pytestmark = pytest.mark.slow
MODEL = "efficientnet_lite0"


@pytest.fixture(scope="module")
def setup():
    model = models.build_model(MODEL, 1000)
    images = jnp.zeros((32, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images[:1], train=False))
    batch = {"image": images, "label": jnp.zeros(32, jnp.int32), "mask": jnp.ones(32)}
    return model, variables, batch


def _state(variables, tx):
    params = variables["params"]
    return {
        "step": jnp.int32(0),
        "params": params,
        "batch_stats": variables["batch_stats"],
        "opt_state": jax.eval_shape(tx.init, params),
        "rng": jax.random.PRNGKey(0),
    }


def _step_flops(setup, pairs, clip=None):
    model, variables, batch = setup
    policy = Policy.from_pairs(pairs)
    params = variables["params"]
    tx = build_optimizer({"name": "sgd"}, optax.constant_schedule(0.1), policy, params, 1e-5, clip)
    step = jax.jit(make_train_step(model, tx, policy.trainable_mask(params)))
    return step.lower(_state(variables, tx), batch).compile().cost_analysis()["flops"]


def test_frozen_layers_cost_no_backward(setup):
    model, variables, batch = setup
    tx = optax.sgd(0.1)
    forward = (
        jax.jit(make_eval_step(model)).lower(_state(variables, tx), batch).compile()
    ).cost_analysis()["flops"]
    half = efficientnet_lite_spec.block_names(MODEL)[
        : len(efficientnet_lite_spec.block_names(MODEL)) // 2
    ]
    half_pairs = [(f"backbone/(stem|{'|'.join(half)})/.*", "frozen"), (".*", "train")]
    probe_pairs = presets.freeze("head", MODEL)[0]
    for clip in (None, 1.0):
        full = _step_flops(setup, [(".*", "train")], clip)
        assert full <= 3.3 * forward, (clip, full / forward)
        assert _step_flops(setup, probe_pairs, clip) <= 0.40 * full
        assert _step_flops(setup, half_pairs, clip) <= 0.85 * full
