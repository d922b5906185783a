import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtransfer import optim
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


GRADUAL = [("head/.*", "train"), ("backbone/w", {"start_step": 3}), (".*", "frozen")]


def _gradual_tx(step, name="adamw", decay_toward="zero"):
    return build_optimizer(
        {"name": name},
        optax.constant_schedule(0.1),
        Policy.from_pairs(GRADUAL),
        PARAMS,
        1e-2,
        1.0,
        step=step,
        decay_toward=decay_toward,
    )


def test_state_per_phase_holds_only_that_phases_trainable_leaves():
    assert _state_size(_gradual_tx(0).init(PARAMS)) == 2 * 30
    assert _state_size(_gradual_tx(3).init(PARAMS)) == 2 * (30 + 100)
    # L2-SP keeps one starting copy of each trainable leaf
    assert _state_size(_gradual_tx(3, "sgd", "start").init(PARAMS)) == 2 * (30 + 100)


def test_carry_over_keeps_trained_groups_and_starts_new_ones_fresh():
    tx0, tx1 = _gradual_tx(0), _gradual_tx(3)
    state = tx0.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    for _ in range(3):
        _, state = tx0.update(grads, state, PARAMS)
    carried = optim.carry_over(state, tx1.init(PARAMS))
    assert jax.tree.structure(carried) == jax.tree.structure(tx1.init(PARAMS))
    head_state = carried[1].inner_states["rule0"]
    old_head_state = state[1].inner_states["rule0"]
    for new, old in zip(jax.tree.leaves(head_state), jax.tree.leaves(old_head_state), strict=True):
        np.testing.assert_array_equal(new, old)
    adam = carried[1].inner_states["rule1"].inner_state[0]
    assert int(adam.count) == 0 and not np.any(adam.mu["backbone"]["w"])
    assert int(carried[2].count) == 3  # the schedule keeps the run's step
    updates, _ = tx1.update(grads, carried, PARAMS)
    assert np.all(updates["backbone"]["w"] != 0) and not np.any(updates["backbone"]["b"])


def test_l2sp_pulls_toward_the_starting_weights():
    policy = Policy.from_pairs([(".*", "train")])
    tx = build_optimizer(
        {"name": "sgd", "momentum": 0.0},
        optax.constant_schedule(1.0),
        policy,
        PARAMS,
        0.5,
        decay_toward="start",
    )
    state = tx.init(PARAMS)
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    moved = jax.tree.map(lambda p: p + 2.0, PARAMS)
    updates, _ = tx.update(zero, state, PARAMS)
    assert not any(np.any(u) for u in jax.tree.leaves(updates))  # at the start: no pull
    updates, _ = tx.update(zero, state, moved)
    np.testing.assert_allclose(updates["head"]["w"], -1.0)  # -lr * 0.5 * (p - p0)
    with pytest.raises(ValueError, match="unknown decay_toward 'one'"):
        build_optimizer(
            {"name": "sgd"}, optax.constant_schedule(1.0), policy, PARAMS, 0.5, decay_toward="one"
        )
