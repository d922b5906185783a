"""Mesh, sharding rules and batch checks; FSDP memory of a ViT-B/16 state on 8 fake devices.

The rule and batch checks only read axis sizes, so they run on an `AbstractMesh` in this
process. What needs eight devices runs in a child process started with
`--xla_force_host_platform_device_count=8` (`python tests/test_sharding.py NAME` runs NAME).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from jtransfer import sharding
from jtransfer.sharding import AXES, ShardingError

PARAMS = {
    "backbone": {
        "embed": {"kernel": np.zeros((16, 48)), "bias": np.zeros(48)},
        "norm": {"scale": np.zeros(7)},
    },
    "head": {"dense": {"kernel": np.zeros((48, 10)), "bias": np.zeros(10)}},
}


def _mesh(data=1, fsdp=1, model=1):
    return AbstractMesh((data, fsdp, model), AXES)


def _specs(rules, mesh):
    layout = sharding.param_shardings(PARAMS, rules, mesh)
    return {path: s.spec for path, s in layout.shardings.items()}


def test_fsdp_shards_the_largest_divisible_dimension_and_replicates_the_rest():
    specs = _specs([(".*", "fsdp")], _mesh(data=2, fsdp=4))
    assert specs["backbone/embed/kernel"] == PartitionSpec(None, "fsdp")  # 48 > 16
    assert specs["backbone/embed/bias"] == PartitionSpec("fsdp")
    assert specs["head/dense/kernel"] == PartitionSpec("fsdp", None)  # 10 % 4 != 0
    assert specs["backbone/norm/scale"] == PartitionSpec()  # 7: nothing divides
    assert specs["head/dense/bias"] == PartitionSpec()
    layout = sharding.param_shardings(PARAMS, [(".*", "fsdp")], _mesh(data=2, fsdp=4))
    assert layout.summary() == "3 of 5 parameter leaves sharded, 341 of 1,313 parameters per device"
    # an fsdp axis of size 1 replicates everything
    assert set(_specs([(".*", "fsdp")], _mesh(data=8)).values()) == {PartitionSpec()}


def test_first_full_match_wins_and_a_named_dimension_goes_to_its_axis():
    rules = [
        ("head/.*", "replicate"),
        (".*/kernel", {"dim": -1, "axis": "model"}),
        (".*", "fsdp"),
    ]
    specs = _specs(rules, _mesh(fsdp=2, model=4))
    assert specs["head/dense/kernel"] == PartitionSpec()
    assert specs["backbone/embed/kernel"] == PartitionSpec(None, "model")
    assert specs["backbone/embed/bias"] == PartitionSpec("fsdp")


def test_a_rule_that_matches_nothing_is_an_error():
    with pytest.raises(ShardingError, match=r"match no parameter[^\n]*\n  neck/\.\*"):
        _specs([("neck/.*", "fsdp"), (".*", "fsdp")], _mesh(fsdp=2))
    with pytest.raises(ShardingError, match="matched by no rule:\n  head/dense/bias"):
        _specs([("backbone/.*", "fsdp"), ("head/dense/kernel", "fsdp")], _mesh(fsdp=2))


def test_a_rule_that_shards_a_dimension_it_does_not_divide_is_an_error():
    rules = [("head/dense/kernel", {"dim": 1, "axis": "model"}), (".*", "replicate")]
    with pytest.raises(ShardingError, match=r"head/dense/kernel \(48, 10\).*'model' of size 4"):
        _specs(rules, _mesh(model=4))
    with pytest.raises(ShardingError, match="has no dimension 2"):
        _specs([("head/dense/kernel", {"dim": 2, "axis": "model"}), (".*", "fsdp")], _mesh())
    for bad in ("shard", {"dim": 0, "axis": "tensor"}, {"dim": 0}):
        with pytest.raises(ShardingError):
            _specs([(".*", bad)], _mesh())


def test_a_mesh_that_does_not_divide_the_devices_is_an_error():
    devices = [object()] * 8  # the checks fail before any device is touched
    with pytest.raises(ShardingError, match="needs 3 devices, but there are 8"):
        sharding.make_mesh({"data": 3}, devices)
    with pytest.raises(ShardingError, match="needs a multiple of 3 devices, but there are 8"):
        sharding.make_mesh({"data": -1, "fsdp": 3}, devices)
    with pytest.raises(ShardingError, match="unknown mesh axes"):
        sharding.make_mesh({"batch": -1}, devices)
    with pytest.raises(ShardingError, match="one of them may be -1"):
        sharding.make_mesh({"data": -1, "fsdp": -1}, devices)


def test_the_batch_must_divide_over_the_data_parallel_devices():
    mesh = _mesh(data=2, fsdp=4, model=2)
    assert sharding.data_parallel_size(mesh) == 8
    sharding.check_batch_size(16, mesh)
    with pytest.raises(ShardingError, match=r"batch_size 12 is not divisible by the data-par"):
        sharding.check_batch_size(12, mesh)
    with pytest.raises(ShardingError, match="grad_accum_steps 4 × the data-parallel size 8"):
        sharding.check_batch_size(16, mesh, grad_accum_steps=4)


def test_optimizer_state_follows_its_parameter():
    layout = sharding.param_shardings(PARAMS, [(".*", "fsdp")], _mesh(fsdp=4))
    state = {
        "params": PARAMS,
        "opt_state": optax.adam(0.1).init(PARAMS),
        "batch_stats": {"backbone": {"norm": {"mean": np.zeros(48)}}},
    }
    shardings = layout.like(state)
    kernel = PartitionSpec(None, "fsdp")
    assert shardings["params"]["backbone"]["embed"]["kernel"].spec == kernel
    adam = shardings["opt_state"][0]
    assert adam.mu["backbone"]["embed"]["kernel"].spec == kernel
    assert adam.nu["backbone"]["embed"]["kernel"].spec == kernel
    assert adam.count.spec == PartitionSpec()
    assert shardings["batch_stats"]["backbone"]["norm"]["mean"].spec == PartitionSpec()


def _run_with_8_devices(name: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, __file__, name], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def fsdp_bytes() -> dict:
    """Per-device bytes of a ViT-B/16 AdamW train state (with EMA) under FSDP over 8 devices,
    read from the materialised arrays' shards; as the trainer builds and places it."""
    from jtransfer import models, optim, phase
    from jtransfer.policy import Policy

    model = models.build_model("vit_b16", 1000)
    images = jnp.zeros((1, 224, 224, 3))
    params = jax.eval_shape(lambda r: model.init(r, images, train=False), jax.random.key(0))
    params = params["params"]
    mesh = sharding.make_mesh({"data": -1, "fsdp": 8})
    layout = sharding.param_shardings(params, [(".*", "fsdp")], mesh)
    policy = Policy.from_pairs([(".*", "train")])
    tx = optim.build_optimizer(
        {"name": "adamw"}, optax.constant_schedule(1e-3), policy, params, 1e-4, 1.0
    )
    init = functools.partial(
        phase.initial_state, tx=tx, mask=policy.trainable_mask(params), phase=0, seed=0, ema=True
    )
    shardings = layout.like(jax.eval_shape(init, params, {}))
    # Zeros made inside the jitted function: each device computes only its shards.
    zeros = functools.partial(jax.tree.map, lambda x: jnp.zeros(x.shape, x.dtype), params)
    state = jax.jit(lambda: init(zeros(), {}), out_shardings=shardings)()

    per_device = {d.id: 0 for d in jax.devices()}
    total = replicated = 0
    for leaf in jax.tree.leaves(state):
        total += leaf.nbytes
        if leaf.sharding.is_fully_replicated:
            replicated += leaf.nbytes
        for shard in leaf.addressable_shards:
            per_device[shard.device.id] += shard.data.nbytes
    n_params = sum(x.size for x in jax.tree.leaves(params))
    return {
        "per_device": per_device,
        "total": total,
        "replicated": replicated,
        "n_params": n_params,
        "mesh": sharding.describe(mesh),
    }


def test_fsdp_vit_b16_state_holds_an_eighth_per_device():
    out = _run_with_8_devices("fsdp_bytes")
    assert out["mesh"] == "data=1 × fsdp=8 × model=1"
    # parameters, two Adam moments and the EMA, float32
    assert out["n_params"] > 86e6 and out["total"] >= 4 * 4 * out["n_params"]
    assert out["replicated"] < 1024  # step, phase, RNG, counts
    assert len(out["per_device"]) == 8
    for used in out["per_device"].values():
        assert used <= out["total"] / 8 + out["replicated"], (used, out)


def packed_round_trip() -> dict:
    """Arrays on 8 devices as a checkpoint saves an optimizer state (`frozen.pack_arrays`), saved,
    restored into the packing of zeros of the same layout, and unpacked."""
    import tempfile

    from jax.sharding import NamedSharding

    from jtransfer.checkpoint import Checkpointer
    from jtransfer.pretrained.frozen import pack_arrays, unpack_arrays

    mesh = sharding.make_mesh({"data": -1, "fsdp": 8})
    replicated = NamedSharding(mesh, PartitionSpec())
    rng = np.random.default_rng(0)
    arrays = [
        jax.device_put(rng.normal(size=(3, 5)).astype(np.float32), replicated),
        jax.device_put(np.int32(7), replicated),
        jax.device_put(
            rng.normal(size=16).astype(np.float32), NamedSharding(mesh, PartitionSpec("fsdp"))
        ),
        jax.device_put(rng.normal(size=(1, 7)).astype(np.float32), replicated),
        jax.device_put(rng.normal(size=300_000).astype(np.float32), replicated),  # over 1 MiB
        jax.device_put(np.array([True, False]), replicated),
    ]
    like = [jnp.zeros_like(x) for x in arrays]
    packed = pack_arrays(arrays)
    with tempfile.TemporaryDirectory() as directory:
        saver = Checkpointer(directory, asynchronous=False)
        saver.save(1, packed)
        back = unpack_arrays(saver.restore(1, pack_arrays(like)), like)
        saver.close()
    return {
        "packed": {dtype: list(x.shape) for dtype, x in packed["packed"].items()},
        "left": [str(x.dtype) for x in packed["arrays"]],
        "shapes": [list(b.shape) == list(a.shape) for a, b in zip(arrays, back, strict=True)],
        "equal": [bool(np.array_equal(a, b)) for a, b in zip(arrays, back, strict=True)],
        "sharding": [a.sharding == b.sharding for a, b in zip(arrays, back, strict=True)],
    }


def test_a_checkpoint_packs_small_replicated_arrays_and_keeps_every_sharding():
    out = _run_with_8_devices("packed_round_trip")
    # the two small float32 arrays in one, the int32 alone; the sharded, the large and the
    # boolean are saved as themselves
    assert out["packed"] == {"float32": [22], "int32": [1]}
    assert out["left"] == ["float32", "float32", "bool"]
    assert all(out["shapes"]) and all(out["equal"]) and all(out["sharding"]), out


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
