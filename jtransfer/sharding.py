"""Device mesh, shardings and global batches: the only place that knows about devices.

One code path for every scale: a `Mesh` over all devices with a `data` axis, parameters
replicated, batches split along `data`. Each process hands in only its own rows of the global
batch; `jax.make_array_from_process_local_data` assembles the global array, so the jitted step
sees the same global shapes whether it runs on one CPU or a pod slice.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"the global batch size {global_batch_size} is not divisible by the "
            f"{devices} devices of the mesh"
        )


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch → global arrays sharded along the data axis."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
