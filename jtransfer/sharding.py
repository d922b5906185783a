"""Device mesh, shardings and global batches: the only place that knows about devices.

One code path for every scale: a `Mesh` over all devices with the axes `data`, `fsdp` and
`model` (in that order; an axis the config leaves out has size 1), batches split along the two
data-like axes (`data` and `fsdp`), and each parameter placed by the first of an ordered list of
`(regex, rule)` pairs that fully matches its '/'-joined path, exactly as the parameter policy
decides trainability (`policy.first_full_match`: every parameter must match, every rule must
match something). A rule is

- `'replicate'`: every device holds the whole leaf;
- `'fsdp'`: the largest dimension divisible by the `fsdp` axis size is split over it (a leaf
  with no such dimension, or an `fsdp` axis of size 1, is replicated);
- `{'dim': d, 'axis': a}`: dimension `d` is split over mesh axis `a`, which must divide it.

Everything shaped like the parameters (optimizer moments, the EMA, the L2-SP anchor) follows
its parameter's sharding, found by path and shape (`ParamShardings.like`), so a rule is written
once. Each process hands in only its own rows of the global batch;
`jax.make_array_from_process_local_data` assembles the global array, so the jitted step sees the
same global shapes whether it runs on one CPU or a pod slice.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jtransfer.errors import JTransferError
from jtransfer.policy import first_full_match, flatten, unflatten

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MODEL_AXIS = "model"
AXES = (DATA_AXIS, FSDP_AXIS, MODEL_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch is split over both; `model` sees all of it
RULES = ("replicate", "fsdp", "{'dim': d, 'axis': a}")


class ShardingError(JTransferError):
    """A mesh, batch size or sharding rule that does not fit the devices or the parameters."""


def make_mesh(shape: Mapping[str, int] | None = None, devices: list | None = None) -> Mesh:
    """The mesh (data, fsdp, model) over `devices` (all by default).

    `shape` maps axis names to sizes; one size may be -1 (the devices left over), missing axes
    are 1; None means `{'data': -1}`.
    """
    devices = jax.devices() if devices is None else devices
    shape = dict(shape or {DATA_AXIS: -1})
    unknown = sorted(set(shape) - set(AXES))
    if unknown:
        raise ShardingError(f"unknown mesh axes {unknown}; valid: {list(AXES)}")
    sizes = [int(shape.get(axis, 1)) for axis in AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ShardingError(f"mesh sizes are positive, one of them may be -1; got {shape}")
    fixed = math.prod(s for s in sizes if s != -1)
    n = len(devices)
    if n % fixed or (not free and fixed != n):
        raise ShardingError(
            f"the mesh {shape} needs {'a multiple of ' if free else ''}{fixed} devices, "
            f"but there are {n}"
        )
    if free:
        sizes[free[0]] = n // fixed
    if jax.process_count() > 1:
        # Process p feeds rows [p*b, (p+1)*b) of the global batch (`data.train_batches`), so
        # its devices must hold exactly those: devices in process order, batch axes outermost.
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        return Mesh(np.asarray(ordered).reshape(sizes), AXES)
    return Mesh(mesh_utils.create_device_mesh(sizes, devices), AXES)


def describe(mesh: Mesh) -> str:
    """'data=4 × fsdp=2 × model=1'."""
    return " × ".join(f"{axis}={size}" for axis, size in mesh.shape.items())


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the data-like axes."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch_size(
    global_batch_size: int, mesh: Mesh, grad_accum_steps: int = 1, name: str = "batch_size"
) -> None:
    """Each micro-batch of the global batch must split evenly over the data-parallel devices."""
    size = data_parallel_size(mesh)
    if global_batch_size % (size * grad_accum_steps):
        accum = f"grad_accum_steps {grad_accum_steps} × " if grad_accum_steps > 1 else ""
        raise ShardingError(
            f"{name} {global_batch_size} is not divisible by {accum}the data-parallel size "
            f"{size} (mesh {describe(mesh)})"
        )


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch → global arrays sharded along the data-like axes."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _spec(path: str, shape: tuple[int, ...], pattern: str, rule: Any, mesh: Mesh):
    if rule == "replicate":
        return PartitionSpec()
    if rule == "fsdp":
        size = mesh.shape[FSDP_AXIS]
        dims = [d for d in np.argsort(shape, kind="stable")[::-1] if shape[d] % size == 0]
        if size == 1 or not dims:
            return PartitionSpec()
        dim, axis = int(dims[0]), FSDP_AXIS
    else:
        dim, axis = rule["dim"], rule["axis"]
        if not -len(shape) <= dim < len(shape):
            raise ShardingError(f"rule {pattern!r}: {path} {shape} has no dimension {dim}")
        if shape[dim] % mesh.shape[axis]:
            raise ShardingError(
                f"rule {pattern!r} shards dimension {dim} of {path} {shape} over mesh axis "
                f"{axis!r} of size {mesh.shape[axis]}, which does not divide {shape[dim]}"
            )
    spec = [None] * len(shape)
    spec[dim] = axis
    return PartitionSpec(*spec)


def _check_rule(pattern: str, rule: Any) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ShardingError(f"bad sharding regex {pattern!r}: {e}") from None
    if rule in ("replicate", "fsdp"):
        return
    if not (isinstance(rule, Mapping) and set(rule) == {"dim", "axis"}):
        raise ShardingError(f"a sharding rule is one of {list(RULES)}, got {rule!r}")
    if rule["axis"] not in AXES or not isinstance(rule["dim"], int):
        raise ShardingError(
            f"rule {pattern!r}: 'dim' is an int and 'axis' one of {list(AXES)}, got {rule!r}"
        )


@dataclasses.dataclass(frozen=True)
class ParamShardings:
    """The sharding of every parameter ('/'-joined path → sharding), and their shapes."""

    mesh: Mesh
    shardings: dict[str, NamedSharding]
    shapes: dict[str, tuple[int, ...]]

    def params(self) -> dict:
        """The shardings as a tree shaped like the parameters."""
        return unflatten(self.shardings)

    def summary(self) -> str:
        """How many leaves the rules shard, and how many parameters each device holds."""
        total = sum(math.prod(shape) for shape in self.shapes.values())
        held = sum(math.prod(self.shardings[p].shard_shape(s)) for p, s in self.shapes.items())
        sharded = sum(not s.is_fully_replicated for s in self.shardings.values())
        return (
            f"{sharded} of {len(self.shapes)} parameter leaves sharded, "
            f"{held:,} of {total:,} parameters per device"
        )

    def like(self, tree: Any) -> Any:
        """Shardings for any tree (a train state): a leaf whose trailing dict keys spell a
        parameter's path and whose shape is that parameter's takes its sharding (moments, EMA,
        the parameter itself); every other leaf (step, counts, BatchNorm statistics, RNG) is
        replicated."""
        replicated_ = replicated(self.mesh)

        def pick(key_path, leaf) -> NamedSharding:
            keys = []
            for key in reversed(key_path):
                if not isinstance(key, jax.tree_util.DictKey):
                    break
                keys.insert(0, str(key.key))
            for i in range(len(keys)):
                path = "/".join(keys[i:])
                if path in self.shardings:
                    if tuple(np.shape(leaf)) == self.shapes[path]:
                        return self.shardings[path]
                    break
            return replicated_

        return jax.tree_util.tree_map_with_path(pick, tree)


def param_shardings(params: Mapping, rules: Sequence[Sequence[Any]], mesh: Mesh) -> ParamShardings:
    """Each parameter's sharding from ordered `(regex, rule)` pairs (first full match wins).

    `params` may hold arrays or `jax.ShapeDtypeStruct`s (only shapes are read).
    """
    rules = [tuple(pair) for pair in rules]
    bad = [pair for pair in rules if len(pair) != 2]
    if bad or not rules:
        raise ShardingError(f"sharding rules are a non-empty list of (regex, rule) pairs: {bad}")
    for pattern, rule in rules:
        _check_rule(pattern, rule)
    shapes = {path: tuple(np.shape(x)) for path, x in flatten(params).items()}
    assigned = first_full_match([p for p, _ in rules], shapes, ShardingError)
    shardings = {
        path: NamedSharding(mesh, _spec(path, shapes[path], *rules[i], mesh))
        for path, i in assigned.items()
    }
    return ParamShardings(mesh, shardings, shapes)
