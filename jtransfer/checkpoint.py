"""Checkpoints through orbax: periodic saves, keep-N, automatic resume from the workdir.

A checkpoint holds what a run changes: the step, the parameters and batch statistics that
train, the optimizer state, RNG and EMA; the data position needs nothing extra because the input
order is a pure function of (seed, step). What never changes, the frozen part of the pretrained
weights, is left out and read again from its source on resume, checked against a fingerprint
saved in the checkpoint's `frozen` item (`pretrained.frozen`), so a linear probe's checkpoint
holds its head.

A step counts once orbax has committed it: only committed steps are resumed from (orbax's own
`latest_step`) or read (`is_complete`, used by `pretrained.orbax_reader`), so a run killed
mid-save resumes from the last complete step. How orbax commits depends on the file system. On
a local disk it writes the step under a temporary name and renames the directory. Cloud Storage
has no directories to rename (a "rename" copies every object and then deletes it, so a reader
could see half a step under the final name), and neither have FUSE mounts of object stores
(gcsfuse refuses directory renames, or emulates them the same way); there the step is written in
place under its final name, and `commit_success.txt`, written after every byte of it, is the
commit: orbax's `AtomicityOptions(mode=COMMIT_FILE)`, which `needs_commit_file` picks for URLs
and such mounts. Both ways leave the marker in a committed step, which is what `is_complete`
checks. A half-written step of a killed run is deleted when the next run opens the directory
(`cleanup_tmp_directories`; its first save waits for that).

A workdir resumes only the run that made it: `check_resume_config` compares the config saved
beside the checkpoints with the new one and names every field that would change the state or
the data order. Fields that only change what is logged, evaluated or kept, or where the state
lives (the mesh: a preempted run may come back on another slice), may differ
(`RESUME_HARMLESS`); everything else, including fields one of the two configs lacks, must match,
since an exact resume is only defined for one config.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from flax import traverse_util

from jtransfer.errors import JTransferError
from jtransfer.files import is_url

# Dotted config fields (or prefixes of them) that a resumed run may change: what is logged,
# evaluated or kept, and where the state lives (not its values).
RESUME_HARMLESS = (
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_batch_size",
    "pp_eval",
    "data.eval_split",
    "data.data_dir",
    "evals",
    "wise_ft_alphas",
    "mesh",  # the device layout: a run may resume on another slice (same global batch)
    "sharding_rules",
    "prefetch",
)


class ResumeConfigError(JTransferError):
    """The workdir holds a checkpoint of a run with a different config."""


class CheckpointLayoutError(JTransferError):
    """A checkpoint does not fit the state it is restored into."""


def check_resume_config(saved: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raises `ResumeConfigError` naming the fields (dotted) in which `new` differs from
    `saved`, both as JSON-like dicts (`json.loads(config.to_json())`)."""
    a = traverse_util.flatten_dict(dict(saved), sep=".")
    b = traverse_util.flatten_dict(dict(new), sep=".")
    absent = object()

    def show(flat: dict, key: str) -> str:
        return repr(flat[key]) if key in flat else "<absent>"

    differ = [
        f"{key}: {show(a, key)} -> {show(b, key)}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, absent) != b.get(key, absent)
        and not any(key == h or key.startswith(h + ".") for h in RESUME_HARMLESS)
    ]
    if differ:
        raise ResumeConfigError(
            "the workdir holds checkpoints of a run with a different config (saved -> new): "
            + "; ".join(differ)
            + ". Use another workdir, or restore the saved values to resume."
        )


# Orbax's default splits the writing of each replicated array among its replicas, which first
# compiles a slicing program per array and device: 14 s for the first save of a Lite0 state on 8
# CPU devices, against 0.7 s when one replica writes each shard (measured). The saved bytes are
# the same either way. The override is deliberate: orbax's warning about it is kept off stderr.
_verbosity = absl_logging.get_verbosity()
absl_logging.set_verbosity(absl_logging.ERROR)
try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
    )
finally:
    absl_logging.set_verbosity(_verbosity)


# File systems (`/proc/mounts` types) that cannot rename a directory atomically: FUSE mounts of
# object stores.
NO_ATOMIC_RENAME = ("fuse.gcsfuse", "fuse.s3fs", "fuse.rclone")
COMMIT_FILE = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.COMMIT_FILE)
RENAME = ocp.options.AtomicityOptions(mode=ocp.options.AtomicityMode.ATOMIC_RENAME)
ITEM = "default"  # the train state (the name orbax gives a single item: older readers find it)
FROZEN_ITEM = "frozen"  # what the state leaves out, and where to read it again


def mount_type(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system mounted where `path` lies (None where the mount table cannot
    be read: not Linux)."""
    try:
        with open(mounts) as f:
            table = [line.split()[1:3] for line in f if line.strip()]
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = "", None
    for point, fstype in table:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)  # \040: space
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fstype
    return kind


def needs_commit_file(directory: str, mounts: str = "/proc/mounts") -> bool:
    """Whether saves to `directory` must be committed by a marker file rather than a rename: a
    URL (`gs://`), or a path on a mount in `NO_ATOMIC_RENAME`."""
    return is_url(directory) or mount_type(directory, mounts) in NO_ATOMIC_RENAME


def is_complete(step_directory: str | os.PathLike) -> bool:
    """Whether a step directory holds a finished save: it has orbax's commit marker, which both
    ways of committing write last (a step written in place has its final name from the start)."""
    return ocp.step.is_path_finalized(epath.Path(step_directory), atomicity_options=COMMIT_FILE)


def read_frozen_record(step_directory: str | os.PathLike) -> dict[str, Any] | None:
    """The `frozen` item of a complete step directory: the record of the leaves the save left
    out, to be read from their pretrained source (`pretrained.frozen`); None when it holds the
    whole state."""
    file = epath.Path(step_directory) / FROZEN_ITEM / "metadata"
    return json.loads(file.read_text()) if file.exists() else None


class Checkpointer:
    def __init__(
        self,
        directory: str,
        keep: int = 2,
        asynchronous: bool = True,
        commit_file: bool | None = None,
    ):
        """Checkpoints in `directory` (a local path or a URL such as `gs://bucket/run/checkpoints`).
        `commit_file`: commit each save with a marker file instead of a rename; None decides
        from the directory (`needs_commit_file`)."""
        directory = str(directory) if is_url(directory) else os.path.abspath(directory)
        if commit_file is None:
            commit_file = needs_commit_file(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=asynchronous,
            create=True,
            cleanup_tmp_directories=True,
            atomicity_options=COMMIT_FILE if commit_file else RENAME,
        )
        self._manager = ocp.CheckpointManager(
            directory, options=options, item_names=(ITEM, FROZEN_ITEM)
        )

    def latest_step(self) -> int | None:
        """The last complete step (None if there is none)."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, frozen: Mapping[str, Any] | None = None) -> None:
        """Saves `state`; `frozen`: the record of the leaves it leaves out
        (`pretrained.frozen.FrozenPart.record`), saved beside it as the item `frozen`."""
        items = {ITEM: ocp.args.StandardSave(state)}
        if frozen is not None:
            items[FROZEN_ITEM] = ocp.args.JsonSave(dict(frozen))
        self._manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, step: int, like: Any) -> Any:
        """Restore `step` into the structure, shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(**{ITEM: ocp.args.StandardRestore(abstract)})
        try:
            return self._manager.restore(step, args=args)[ITEM]
        except ValueError as e:  # orbax's word for another tree structure or another shape
            why = str(e).strip().splitlines()[0].rstrip(":.")
            raise CheckpointLayoutError(
                f"the checkpoint at step {step} in {self._manager.directory} does not fit this "
                f"run's state ({why}): it was written by another version of jtransfer; resume "
                "it with that version, or use another workdir"
            ) from None

    def frozen_record(self, step: int) -> dict[str, Any] | None:
        """The record of the leaves the save of `step` left out (None: it holds them all)."""
        return read_frozen_record(epath.Path(self._manager.directory) / str(step))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
