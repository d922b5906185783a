"""The train step on a toy model: frozen leaves bit-identical and free of backward compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jtransfer.optim import build_optimizer
from jtransfer.policy import Policy
from jtransfer.train import make_eval_step, make_train_step


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
    step = jax.jit(make_train_step(model, tx, policy.trainable_mask(params)))
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


def _flops(pairs) -> float:
    _, state, step, batch = _setup(pairs)
    return step.lower(state, batch).compile().cost_analysis()["flops"]


def test_frozen_backbone_costs_no_backward_compute():
    full = _flops([(".*", "train")])
    probe = _flops([("head/.*", "train"), (".*", "frozen")])
    lower = _flops([("backbone/(stage1|bn1)/.*", "frozen"), (".*", "train")])
    model, state, _, batch = _setup([(".*", "train")])
    forward = jax.jit(make_eval_step(model)).lower(state, batch).compile().cost_analysis()["flops"]
    assert probe < 1.3 * forward  # forward only, no backward through the convs
    assert lower < full and full > 2.5 * forward


def test_eval_step_masks_padding():
    model, state, _, batch = _setup([(".*", "train")])
    batch["mask"] = jnp.array([1, 1, 1, 0, 0, 0, 0, 0], jnp.float32)
    out = jax.jit(make_eval_step(model))(state, batch)
    assert float(out["count"]) == 3


def test_strategy_settings_that_cannot_work_are_errors():
    import ml_collections
    import pytest

    from jtransfer.policy import NormEval, PolicyError
    from jtransfer.train import _check_strategies

    policy = Policy.from_pairs([("head/.*", "train"), (".*", {"start_step": 10})])
    norm = NormEval.from_config([("backbone/.*", 12)])

    def check(**fields):
        _check_strategies(ml_collections.ConfigDict(fields), policy, norm, 20)

    check(ema_decay=0.999, wise_ft_alphas=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"wise_ft_alphas must lie in \[0, 1\], got \[1.5, -0.1\]"):
        check(wise_ft_alphas=(0.5, 1.5, -0.1))
    with pytest.raises(ValueError, match="ema_decay must be in"):
        check(ema_decay=1.0)
    with pytest.raises(PolicyError, match=r"after the run's last step 9: '.\*' \(start_step 10\)"):
        _check_strategies(ml_collections.ConfigDict(), policy, NormEval(), 10)
    with pytest.raises(PolicyError, match=r"norm_eval 'backbone/.\*' \(until_step 12\)"):
        _check_strategies(
            ml_collections.ConfigDict(), Policy.from_pairs([(".*", "train")]), norm, 12
        )
