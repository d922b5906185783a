"""The command-line arguments that name one checkpoint of a run, shared by export and predict.

Both tools read a finished (or interrupted) run the same way: `--workdir` and an optional
`--step`, the latest by default. One parser keeps their flags, help and defaults identical.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with `--workdir` (required) and `--step`; `doc` is its description."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", required=True, help="the run's workdir")
    p.add_argument("--step", type=int, help="checkpoint step; default: the latest")
    return p


def checkpoint(workdir: str | Path, step: int | None) -> Path:
    """The path `pretrained.load` reads for `step` of the run in `workdir` (None: latest)."""
    return Path(workdir) / "checkpoints" / str(step) if step is not None else Path(workdir)
