"""Tasks: what a run learns to predict. `build(config, class_names)` returns the one named by
`config.task.name`; see `tasks.base.Task` for what a task provides to the trainer."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import ml_collections

from jtransfer.errors import JTransferError
from jtransfer.tasks.base import COMPUTE_DTYPES, Task
from jtransfer.tasks.classification import Classification, cross_entropy
from jtransfer.tasks.detection import Detection
from jtransfer.tasks.segmentation import Segmentation

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (Classification, Segmentation, Detection)
}

__all__ = ["COMPUTE_DTYPES", "TASKS", "Task", "build", "cross_entropy"]


def build(config: ml_collections.ConfigDict, class_names: Sequence[str]) -> Task:
    """The task `config.task.name` over `class_names`."""
    name = config.task.name
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise JTransferError(f"unknown task {name!r}{hint}; valid: {sorted(TASKS)}")
    return TASKS[name](config, class_names)
