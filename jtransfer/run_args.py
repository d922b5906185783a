"""The command-line arguments that name one checkpoint of a run, shared by export and predict.

Both tools read a finished (or interrupted) run the same way: `--workdir` and an optional
`--step`, the latest by default. One parser keeps their flags, help and defaults identical. A
tool that can also work from pretrained weights alone (predict) passes `model_help`, and then
`--model=NAME` stands instead of `--workdir`: exactly one of the two.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parser(prog: str, doc: str | None, model_help: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with `--workdir` and `--step`; `doc` is its description.

    `--workdir` is required; with `model_help`, `--model` (helped by it) is its alternative.
    """
    p = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if model_help is None:
        p.add_argument("--workdir", required=True, help="the run's workdir")
    else:
        weights = p.add_mutually_exclusive_group(required=True)
        weights.add_argument("--workdir", help="the run's workdir")
        weights.add_argument("--model", help=model_help)
    p.add_argument("--step", type=int, help="checkpoint step; default: the latest")
    return p


def checkpoint(workdir: str | Path, step: int | None) -> Path:
    """The path `pretrained.load` reads for `step` of the run in `workdir` (None: latest)."""
    return Path(workdir) / "checkpoints" / str(step) if step is not None else Path(workdir)
