"""Sweep configs for the tests: configs/transfer.py on a tiny image folder at 32 px, a few steps."""

import os
import sys
from pathlib import Path

from cli import ROOT

CONFIG = """
from jtransfer import config_args, config_files

TRANSFER = config_files.load({transfer!r})
DEFAULTS = {{"strategy": "full", "seed": 0, "shots": 0, "percent": 100.0, "steps": {steps},
             "quick": False}}


def get_config(arg=None):
    a = config_args.parse(arg, DEFAULTS)
    c = TRANSFER.get_config(f"data={folder},strategy={{a['strategy']}},res=32,batch=4")
    c.seed = a["seed"]
    c.total_steps = a["steps"]
    c.schedule.warmup_steps = 1
    c.data.shots_per_class = a["shots"]
    c.data.percent_per_class = float(a["percent"])
    c.log_every = 1
    c.checkpoint_every = 2
    return c


def get_sweep(arg=None):
    return {runs!r}


def get_plots(arg=None):
    return [{{"file": "accuracy.png", "x": "strategy", "y": "eval/accuracy"}}]
"""


def write_config(directory: Path, folder: str, runs: list[dict], steps: int = 6) -> str:
    """A sweep config file over `runs` (override dicts) on the image folder `folder`."""
    path = directory / "sweep_config.py"
    transfer = os.path.join(ROOT, "configs", "transfer.py")
    path.write_text(CONFIG.format(transfer=transfer, folder=folder, runs=runs, steps=steps))
    return str(path)


def sweep_command(config: str, workdir, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jtransfer.sweep",
        f"--config={config}",
        f"--workdir={workdir}",
        *flags,
    ]
