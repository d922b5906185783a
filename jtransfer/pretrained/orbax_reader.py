"""Read the weights of a jtransfer run's orbax checkpoint: fine-tune from a fine-tune.

A run saves the part of its train state that changes (`jtransfer.checkpoint`): parameters and
batch statistics, but also the step, optimizer state, RNG and whatever later versions add; the
frozen part of its pretrained weights is read again from their source (`pretrained.frozen`). A
reader that rebuilt that structure to restore into would break each time the state gains a
field, and would need the optimizer of the earlier run. So this reader asks orbax for the
checkpoint's own tree metadata and restores only the `params` and `batch_stats` subtrees
(orbax's partial restore), as host numpy arrays: no target structure, no device placement, no
sharding of the run that saved it.

A path may be the run's workdir (its latest step under `checkpoints/` is read), its
`checkpoints/` directory, or one step directory `checkpoints/<step>`, on a local disk or at a
URL orbax reaches (`gs://bucket/runs/RUN`: pass it as a string). A step counts only once its save
is complete (`checkpoint.is_complete`: orbax's commit marker; a step written in place on Cloud
Storage has its final name before it is complete), so the latest complete step is the largest
complete all-digit name, and a step directory named explicitly must be complete. Every failure
is an `OrbaxCheckpointError` naming the directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jtransfer.checkpoint import ITEM, is_complete, read_frozen_record
from jtransfer.errors import JTransferError
from jtransfer.policy import overlay
from jtransfer.pretrained import frozen

COLLECTIONS = ("params", "batch_stats")


class OrbaxCheckpointError(JTransferError):
    """The directory holds no readable orbax checkpoint of a jtransfer run."""


def step_dir(path: str | os.PathLike) -> epath.Path:
    """The complete step directory that `path` (workdir, checkpoints/ or a step directory)
    stands for."""
    path = epath.Path(path)
    if (path / ITEM).is_dir():
        if not is_complete(path):
            raise OrbaxCheckpointError(
                f"{path} is a checkpoint whose save did not finish (it has no commit marker); "
                "name a complete step, or the run's workdir for its latest complete step"
            )
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    steps = [int(p.name) for p in root.iterdir() if p.name.isdigit() and is_complete(p)]
    if not steps:
        raise OrbaxCheckpointError(
            f"{path} holds no orbax checkpoint whose save finished: expected a run's workdir "
            "(with checkpoints/), its checkpoints/ directory or a step directory "
            f"checkpoints/<step>/{ITEM}"
        )
    return root / str(max(steps))


def read_run(path: str | os.PathLike, load: Callable[[str, str], Mapping] | None = None) -> dict:
    """`{'params': ..., 'batch_stats': ...}` (nested dicts of numpy arrays) of the run at `path`:
    what its checkpoint holds, and the frozen leaves it left out, read again with
    `load(source, model)` (default `pretrained.load`; `pretrained.frozen.rebuild`)."""
    if load is None:
        from jtransfer.pretrained import load  # noqa: PLC0415 (the package imports this module)

    step = step_dir(path)
    item = step / ITEM
    checkpointer = ocp.PyTreeCheckpointer()
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns of every optional metadata file it lacks
    try:
        metadata = checkpointer.metadata(item).item_metadata
        tree = getattr(metadata, "tree", None)
        if not isinstance(tree, dict) or "params" not in tree:
            top = sorted(tree) if isinstance(tree, dict) else None
            raise OrbaxCheckpointError(
                f"{item} is not a readable orbax checkpoint of a jtransfer run "
                f"(no tree metadata with 'params'; top-level keys: {top})"
            )
        wanted = {k: tree[k] for k in COLLECTIONS if k in tree}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        args = ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)
        restored = checkpointer.restore(item, args=args)
    except OrbaxCheckpointError:
        raise
    except Exception as e:  # orbax and tensorstore raise many types for damaged files
        raise OrbaxCheckpointError(f"{item} could not be restored: {e}") from e
    finally:
        absl_logger.setLevel(level)
    saved = {k: restored.get(k) or {} for k in COLLECTIONS}
    record = read_frozen_record(step)
    if record is None:
        return saved
    return overlay(frozen.rebuild(record, load, f"the checkpoint {step}"), saved)
