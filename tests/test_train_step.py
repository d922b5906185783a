"""The train step on a toy model: frozen leaves bit-identical and free of backward compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtransfer import base_config, cost, optim, tasks
from jtransfer.optim import build_optimizer
from jtransfer.phase import make_train_step
from jtransfer.policy import Policy

TASK = tasks.build(base_config.get_config(), ["a", "b", "c", "d"])


class Backbone(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        for i in range(3):
            x = nn.Conv(32, (3, 3), use_bias=False, name=f"stage{i + 1}")(x)
            x = nn.BatchNorm(use_running_average=not train, name=f"bn{i + 1}")(x)
            x = nn.relu(x)
        return x.mean((1, 2))


class Toy(nn.Module):
    def setup(self):
        self.backbone = Backbone()
        self.head = nn.Dense(4)

    def __call__(self, x, train):
        return self.head(self.backbone(x, train))


def _setup(policy_pairs):
    model = Toy()
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    policy = Policy.from_pairs(policy_pairs)
    params = variables["params"]
    tx = build_optimizer(
        {"name": "sgd"},
        optax.constant_schedule(0.1),
        policy,
        params,
        weight_decay=1e-3,
        grad_clip_norm=1.0,
    )
    state = {
        "step": jnp.int32(0),
        "params": params,
        "batch_stats": variables["batch_stats"],
        "opt_state": tx.init(params),
        "rng": jax.random.PRNGKey(2),
    }
    step = jax.jit(make_train_step(model, TASK.loss, tx, policy.trainable_mask(params)))
    batch = {"image": x, "label": jnp.arange(8) % 4, "mask": jnp.ones(8)}
    return model, state, step, batch


def test_frozen_parameters_bit_identical_and_trainable_ones_move():
    _, state, step, batch = _setup([("backbone/stage1/.*", "frozen"), (".*", "train")])
    before = jax.device_get(state["params"])
    for _ in range(3):
        state, metrics = step(state, batch)
    after = jax.device_get(state["params"])
    assert np.array_equal(
        after["backbone"]["stage1"]["kernel"], before["backbone"]["stage1"]["kernel"]
    )
    assert not np.array_equal(
        after["backbone"]["stage2"]["kernel"], before["backbone"]["stage2"]["kernel"]
    )
    assert not np.array_equal(after["head"]["kernel"], before["head"]["kernel"])
    assert int(state["step"]) == 3 and np.isfinite(metrics["grad_norm"])


def test_metrics_carry_the_learning_rate_of_the_step_they_took():
    model, state, _, batch = _setup([(".*", "train")])
    schedule = optim.build_schedule(0.5, 10, warmup_steps=4)
    policy = Policy.from_pairs([(".*", "train")])
    tx = build_optimizer({"name": "sgd"}, schedule, policy, state["params"], 0.0, 0.0)
    mask = policy.trainable_mask(state["params"])
    step = jax.jit(make_train_step(model, TASK.loss, tx, mask, schedule=schedule))
    state = {**state, "opt_state": tx.init(state["params"])}
    rates = []
    for _ in range(6):
        state, metrics = step(state, batch)
        rates.append(float(metrics["lr"]))
    np.testing.assert_allclose(rates, [float(schedule(s)) for s in range(6)], rtol=1e-6)
    assert rates[0] == 0.0 and rates[4] == 0.5  # the warm-up starts at zero and peaks at step 4


def _flops(pairs) -> float:
    _, state, step, batch = _setup(pairs)
    return step.lower(state, batch).compile().cost_analysis()["flops"]


def test_frozen_backbone_costs_no_backward_compute():
    full = _flops([(".*", "train")])
    probe = _flops([("head/.*", "train"), (".*", "frozen")])
    lower = _flops([("backbone/(stage1|bn1)/.*", "frozen"), (".*", "train")])
    model, state, _, batch = _setup([(".*", "train")])

    def forward(variables, batch):
        return TASK.loss(model.apply(variables, batch["image"], train=False), batch)[0]

    variables = {k: state[k] for k in ("params", "batch_stats")}
    forward_flops = cost.flops(jax.jit(forward), variables, batch)
    assert probe < 1.3 * forward_flops  # forward only, no backward through the convs
    assert lower < full and full > 2.5 * forward_flops


def test_classification_loss_counts_only_the_real_examples_of_a_padded_batch():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)), jnp.float32)
    labels = jnp.arange(8) % 4
    mask = jnp.array([1, 1, 1, 0, 0, 0, 0, 0], jnp.float32)
    loss, metrics = TASK.loss(logits, {"image": jnp.zeros((8, 1)), "label": labels, "mask": mask})
    real = tasks.cross_entropy(logits[:3], labels[:3])
    np.testing.assert_allclose(loss, real.mean(), rtol=1e-6)
    correct = jnp.argmax(logits[:3], -1) == labels[:3]
    np.testing.assert_allclose(metrics["accuracy"], correct.mean())
    unmasked, _ = TASK.loss(logits, {"image": jnp.zeros((8, 1)), "label": labels})
    np.testing.assert_allclose(unmasked, tasks.cross_entropy(logits, labels).mean(), rtol=1e-6)
