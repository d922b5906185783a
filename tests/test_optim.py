import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtransfer.optim import build_optimizer, build_schedule
from jtransfer.policy import Policy

PARAMS = {
    "backbone": {"w": jnp.ones((10, 10)), "b": jnp.ones(10)},
    "head": {"w": jnp.ones((10, 3))},
}


def _state_size(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state) if np.ndim(x) > 0)


def test_frozen_leaves_hold_no_optimizer_state():
    policy = Policy.from_pairs([("head/.*", "train"), (".*", "frozen")])
    for name, slots in (("sgd", 1), ("adamw", 2)):
        tx = build_optimizer(
            {"name": name}, optax.constant_schedule(0.1), policy, PARAMS, 1e-4, 1.0
        )
        assert _state_size(tx.init(PARAMS)) == slots * 30  # head only


def test_clipping_reads_only_trainable_gradients():
    policy = Policy.from_pairs([("head/.*", "train"), (".*", "frozen")])
    tx = build_optimizer(
        {"name": "sgd", "momentum": 0.0},
        optax.constant_schedule(1.0),
        policy,
        PARAMS,
        grad_clip_norm=1.0,
    )
    grads = jax.tree.map(jnp.zeros_like, PARAMS)
    grads["head"]["w"] = jnp.full((10, 3), 0.01)  # norm 0.173 < 1: not clipped
    grads["backbone"]["w"] = jnp.full((10, 10), 1e6)  # would force clipping if it were read
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["head"]["w"], -0.01, rtol=1e-6)
    assert not np.any(updates["backbone"]["w"])


def test_lr_and_wd_multipliers():
    policy = Policy.from_pairs([("backbone/.*", {"lr_mult": 0.1, "wd_mult": 0.0}), (".*", "train")])
    tx = build_optimizer(
        {"name": "sgd", "momentum": 0.0}, optax.constant_schedule(1.0), policy, PARAMS, 0.5
    )
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["backbone"]["w"], -0.1)
    np.testing.assert_allclose(updates["head"]["w"], -1.5)  # grad 1 + decay 0.5 * param 1


def test_schedule_warmup_then_cosine():
    s = build_schedule(1.0, 100, warmup_steps=10, decay="cosine")
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(100)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown schedule decay 'step'"):
        build_schedule(1.0, 10, decay="step")
    with pytest.raises(ValueError, match="warmup_steps=20"):
        build_schedule(1.0, 10, warmup_steps=20)


def test_unknown_optimizer_lists_valid():
    with pytest.raises(ValueError, match=r"'lion'.*\['adamw', 'sgd'\]"):
        build_optimizer(
            {"name": "lion"},
            optax.constant_schedule(1.0),
            Policy.from_pairs([(".*", "train")]),
            PARAMS,
        )
