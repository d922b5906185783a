"""Frozen means free: compiled FLOPs of the EfficientNet-Lite0 train step under freezing.

Invariant 2 of DESIGN.md, proved with XLA's own cost analysis at 224 px, batch 32: a full
step costs at most 3.3 forward passes (no wasted backward), a linear probe at most 0.40 of a
full step, freezing the first half of the blocks at most 0.85. The steps clip gradients by their
global norm, as configs/transfer.py does, and report the gradients' norm: both read gradients,
so a frozen leaf's gradient computed and masked afterwards (differentiating the whole tree)
would show here. `scripts/benchmark.py freeze` prints the same figures for every strategy, with
wall times.
"""

import jax
import jax.numpy as jnp
import pytest

from jtransfer import cost, models, presets, tasks
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


def _step_flops(setup, pairs):
    variables, batch = setup
    config = cost.strategy_config(MODEL, pairs, grad_clip_norm=1.0)
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
    full = _step_flops(setup, [(".*", "train")])
    assert full <= 3.3 * forward, full / forward
    assert _step_flops(setup, probe_pairs) <= 0.40 * full
    assert _step_flops(setup, half_frozen_pairs()) <= 0.85 * full


def test_a_frozen_backbone_costs_no_backward_in_a_dense_model():
    """Segmentation (FPN neck + head on Lite0, 96 px): freezing the backbone removes its
    backward pass and nothing else. What remains is the forward pass plus about twice the
    neck and head's forward (their backward); what freezing saved is at least 1.5 times the
    backbone's forward. Freezing stages in between costs in between."""
    images = jnp.zeros((4, 96, 96, 3))
    batch = {"image": images, "segmentation": jnp.zeros((4, 96, 96), jnp.int32)}
    batch["mask"] = batch["label"] = jnp.ones(4, jnp.int32)

    def config(pairs, task="segmentation"):
        c = cost.strategy_config(MODEL, pairs, norm_eval=("backbone/.*",))
        c.task.name = task
        return c

    def variables(task):
        model = tasks.build(config([], task), ["a", "b"]).build_model()
        return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images[:1], train=False))

    dense = variables("segmentation")
    forward = cost.flops(cost.forward(config([]), 2), dense, batch)
    backbone = cost.flops(
        cost.forward(config([], "classification"), 2), variables("classification"), batch
    )

    def step(pairs):
        return cost.flops(*cost.step_and_state(config(pairs), dense, 2), batch)

    full = step([(".*", "train")])
    frozen_backbone = step(presets.freeze("head", MODEL, neck=True)[0])
    frozen_stages = step(presets.freeze(3, MODEL)[0])
    assert frozen_backbone <= forward + 2.1 * (forward - backbone)
    assert full >= frozen_backbone + 1.5 * backbone
    assert frozen_backbone < frozen_stages < full
