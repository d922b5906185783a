"""Evaluators: what a run measures, built from `config.evals` as plugins.

`config.evals` maps a name to an evaluator config, `{'type': TYPE, **options}`; each is built
once with `build(config, context)` and then `run(variables)` gives `{metric: value}` for the
variables it is handed, at every evaluation of the run (big_vision's `evaluators/common.py` has
the idea; the registry and the `Context` are this project's). The evaluator named 'eval' (the
first one when none has that name) is the run's main measure: it is also run on the EMA and
WiSE-FT weights. An empty `config.evals` means `{'eval': {'type': task.default_evaluator}}`.

Options every evaluator of a split takes: `split` (default `config.data.eval_split`) and `pp`
(default `config.pp_eval`). Evaluation visits every example once at any device count: the last
batch is padded and the padding masked (`data.eval_batches`).

`features.extract_features` and `fewshot` score a representation without its head;
`classification` (accuracy and loss), `segmentation` (mean IoU) and `detection` (COCO mAP)
score the task's outputs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jtransfer.errors import JTransferError
from jtransfer.evaluators import classification, detection, fewshot, segmentation
from jtransfer.evaluators.base import MAIN, Context, Evaluator
from jtransfer.tasks import Task

__all__ = ["EVALUATORS", "MAIN", "Context", "Evaluator", "build", "evaluator_configs"]

# type -> constructor (options without 'type', context)
EVALUATORS: dict[str, Callable[[Mapping[str, Any], Context], Evaluator]] = {
    "classification": classification.AccuracyEvaluator,
    "segmentation": segmentation.SegmentationEvaluator,
    "detection": detection.DetectionEvaluator,
    "fewshot": fewshot.ModelFewShot,
}


def evaluator_configs(config: ml_collections.ConfigDict, task: Task) -> dict[str, dict]:
    """`config.evals` as plain dicts, or the task's default; every type checked."""
    evals = {name: dict(cfg) for name, cfg in config.evals.items()} or {
        MAIN: {"type": task.default_evaluator}
    }
    for name, cfg in evals.items():
        kind = cfg.get("type")
        if kind not in EVALUATORS:
            close = difflib.get_close_matches(str(kind), EVALUATORS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise JTransferError(
                f"evals.{name}.type is {kind!r}{hint}; valid: {sorted(EVALUATORS)}"
            )
    return evals


def build(config: ml_collections.ConfigDict, context: Context) -> dict[str, Evaluator]:
    """The evaluators `config.evals` names, the main one first."""
    evals = evaluator_configs(config, context.task)
    main = MAIN if MAIN in evals else next(iter(evals))
    order = [main, *(n for n in evals if n != main)]
    return {
        name: EVALUATORS[evals[name]["type"]](
            {k: v for k, v in evals[name].items() if k != "type"}, context
        )
        for name in order
    }
