"""A run's files on any file system TensorFlow reaches: a local path, `gs://`, `ram://` in tests.

On a Cloud TPU pod slice the workdir is a Cloud Storage path that every host reads and writes
directly, not a FUSE mount of the bucket (which cannot rename a directory atomically, and shows
a file only once it is closed). So the trainer's own files in the workdir — `config.json`,
`graft_manifest.json`, `metrics.jsonl`, `final_eval.json`, the TensorBoard directory — go
through here and never through `open` or `os`; checkpoints go through orbax
(`jtransfer.checkpoint`), which reaches `gs://` itself.

The path library is `tf.io.gfile`, not etils.epath (orbax's): TensorFlow is a dependency already
and writes the TensorBoard events through these same file systems, so events and JSON files
share one layer and one set of credentials (epath, too, hands `gs://` to `tf.io.gfile` when
TensorFlow is installed); and gfile's in-memory `ram://` file system lets the tests run this I/O
somewhere that is not the local disk, where any leftover `open` or `os` call fails. TensorFlow
is imported on first use, so that `jtransfer.checkpoint` can use `is_url` without it.

A file that another process may read half-written (every host reads `config.json`) is written
under a temporary name and renamed: atomic on a local disk; on Cloud Storage an object appears
whole or not at all, and the rename of one small object is a copy and a delete.

A workdir URL is checked before anything is built (`check_workdir`): without credentials, without
a network or in a bucket that does not exist, the first write would fail only after the dataset
and the pretrained weights are loaded, with TensorFlow's multi-line error.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any

from jtransfer.errors import JTransferError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)")


class WorkdirError(JTransferError):
    """A workdir whose file system cannot be reached."""


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def is_url(path: str) -> bool:
    """Whether `path` names a file system by scheme (`gs://bucket/run`) rather than a local path."""
    return _URL.match(str(path)) is not None


def exists(path: str) -> bool:
    return _gfile().exists(path)


def makedirs(path: str) -> None:
    """Creates the directory `path` and its parents; nothing if it exists."""
    _gfile().makedirs(path)


def read_text(path: str) -> str:
    with _gfile().GFile(path) as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_text(path: str, text: str) -> None:
    """Writes `path` whole: under a temporary name, then renamed over it."""
    gfile = _gfile()
    with gfile.GFile(path + ".tmp", "w") as f:
        f.write(text)
    gfile.rename(path + ".tmp", path, overwrite=True)


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))


def open_append(path: str) -> IO[str]:
    """`path` opened for appending text (created if absent); `flush()` makes writes visible."""
    return _gfile().GFile(path, "a")


def rmtree(path: str) -> None:
    """Deletes the directory `path` and everything below it; nothing if it does not exist."""
    gfile = _gfile()
    if gfile.exists(path):
        gfile.rmtree(path)


def tree_bytes(path: str) -> int:
    """The bytes of the files below the directory `path` (a checkpoint step, a workdir)."""
    gfile = _gfile()
    return sum(
        gfile.stat(gfile.join(d, f)).length for d, _, names in gfile.walk(path) for f in names
    )


def check_workdir(workdir: str) -> None:
    """Raises `WorkdirError`, one line naming `workdir`, when a workdir URL cannot be reached:
    no file system for its scheme, no credentials or no network, or (`gs://`) no such bucket.
    Reads only. A local path passes: the error of its first write names it."""
    match = _URL.match(str(workdir))
    if match is None:
        return
    import tensorflow as tf

    scheme, bucket = match.group(1), f"{match.group(1)}://{match.group(2)}"
    try:
        tf.io.gfile.exists(workdir)  # False when absent; raises when it cannot tell
        if scheme == "gs":
            try:
                found = tf.io.gfile.exists(bucket)
            except tf.errors.PermissionDeniedError:
                found = True  # object access without the bucket's metadata is enough
            if not found:
                raise WorkdirError(
                    f"the workdir {workdir} is in the bucket {bucket}, which does not exist "
                    "(or these credentials cannot see it): create it, or fix the path"
                )
    except tf.errors.OpError as e:
        hint = (
            "; on a Cloud TPU VM its service account needs read/write access to the bucket, "
            "elsewhere run `gcloud auth application-default login`"
            if scheme == "gs"
            else ""
        )
        raise WorkdirError(
            f"cannot reach the workdir {workdir}: {' '.join(e.message.split())}{hint}"
        ) from e
