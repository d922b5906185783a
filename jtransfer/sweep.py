"""Sweeps: every setting of an ablation with one command, here, on Slurm, or printed.

    python -m jtransfer.sweep --config=configs/ablations/strategy.py --workdir=/tmp/abl/strategy
    python -m jtransfer.sweep ... --parallel=2          # two runs at a time, each on its own cores
    python -m jtransfer.sweep ... --launcher=slurm --slurm=slurm_partition=gpu  # a job array
    python -m jtransfer.sweep ... --launcher=print      # one command per run, for any scheduler
    python -m jtransfer.sweep --workdir=/tmp/abl/strategy --collect   # the results so far
    python -m jtransfer.sweep ... --quick               # the config's small variant (quick=True)

A sweep config is a config file with, beside `get_config(arg)`, `get_sweep(arg)`: a list of
override dicts, each of which is added to the file's `:key=value` argument for one run (so an
override key is a config argument, checked by `get_config` like one typed by hand). Optional:
`get_plots(arg)` (`jtransfer.sweep_collect`) and `get_findings(arg, table)`, sentences computed
from the results.

The sweep's workdir holds `runs/<name>/` (each run's own workdir, named from its overrides in
their order: `strategy=lp_ft,seed=1`), `logs/<name>.log` (the run's output) and
`logs/<name>.jsonl` (a line per process: exit status, seconds, compile time), `jax_cache/` (the
persistent compilation cache every run shares; `--jax_cache` puts it elsewhere, e.g. one for
several sweeps), `sweep.json` (what was swept, which `--collect` reads back), and the results:
`runs.csv`, `results.csv`, `results.md` (mean ± std over seeds) and the plots.

Everything that can be checked is checked before any run starts, each problem one line
(`error: ...`, exit status 2): the launcher is installed, every run's overrides are arguments of
the config and give a valid config, no two runs share a workdir name, each distinct dataset
opens with its splits, subsets and a whole batch (not under `--launcher=print`, whose runs may
read data this machine does not have), the model takes its options, the pretrained weights are
installed, and a run's existing workdir holds the same config. The launcher, the flags, the
config file, its arguments and the run names are checked before TensorFlow is imported, in a
second or two; the rest needs the trainer. Then runs that finished (a
`final_eval.json`) are skipped and the others start or resume (`jtransfer.main` resumes
exactly), so after a kill the same command finishes only what is left. A run that fails does
not stop the others; the sweep exits 1 and names it (its log ends with the reason).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sys
import types
from typing import Any

from absl import app, flags

from jtransfer import config_files, console
from jtransfer.console import usage_error
from jtransfer.errors import JTransferError

LAUNCHERS = ("local", "slurm", "print")

_CONFIG = flags.DEFINE_string("config", None, "Sweep config file, path.py[:key=value,...].")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's directory.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", LAUNCHERS, "Where the runs run.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "local: runs at a time, each pinned to its cores.")
_QUICK = flags.DEFINE_bool("quick", False, "The config's quick variant (adds quick=True).")
_COLLECT = flags.DEFINE_bool("collect", False, "Only gather results and draw plots; run nothing.")
_JAX_CACHE = flags.DEFINE_string(
    "jax_cache", None, "Persistent compilation cache (default WORKDIR/jax_cache); may be shared."
)
_SLURM = flags.DEFINE_multi_string(
    "slurm", [], "slurm: submitit executor parameter KEY=VALUE (e.g. slurm_partition=gpu)."
)
_CLUSTER = flags.DEFINE_enum(
    "submitit_cluster", "slurm", ["slurm", "local", "debug"], "slurm: submitit's executor kind."
)
flags.mark_flag_as_required("workdir")


@dataclasses.dataclass
class Run:
    name: str  # the workdir name, from the overrides
    overrides: dict[str, Any]
    arg: str  # the config file's argument for this run
    config: Any = None  # its ConfigDict, once built


@dataclasses.dataclass
class Sweep:
    path: str  # the config file, as given
    arg: str | None  # the sweep's own argument (with quick=True under --quick)
    module: types.ModuleType
    workdir: str
    runs: list[Run]
    jax_cache: str = ""  # the persistent compilation cache; "": WORKDIR/jax_cache

    def run_dir(self, run: Run) -> str:
        return os.path.join(self.workdir, "runs", run.name)

    def log(self, run: Run, suffix: str) -> str:
        return os.path.join(self.workdir, "logs", run.name + suffix)

    def finished(self, run: Run) -> bool:
        return os.path.exists(os.path.join(self.run_dir(run), "final_eval.json"))

    def command(self, run: Run, python: str = sys.executable, cpus=()) -> list[str]:
        """The run's process: `jtransfer.main` through `jtransfer.sweep_run`."""
        pin = [f"--cpus={','.join(map(str, cpus))}"] if cpus else []
        return [
            python,
            "-m",
            "jtransfer.sweep_run",
            f"--cache_dir={self.jax_cache or os.path.join(self.workdir, 'jax_cache')}",
            f"--record={self.log(run, '.jsonl')}",
            *pin,
            "--",
            f"--config={self.path}:{run.arg}",
            f"--workdir={self.run_dir(run)}",
        ]


def name_value(value: Any) -> str:
    """A value as it appears in a run's name: '0.001', 'lp_ft', '1-5-10' for [1, 5, 10]."""
    if isinstance(value, (list, tuple)):
        return "-".join(name_value(v) for v in value)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def run_name(overrides: dict[str, Any]) -> str:
    """`strategy=lp_ft,seed=1`: the overrides in their order; 'default' for none."""
    parts = [f"{name_value(k)}={name_value(v)}" for k, v in overrides.items()]
    return ",".join(parts) or "default"


def plan(spec: str, workdir: str, quick: bool = False) -> Sweep:
    """The sweep `spec` (`path.py[:arg]`) describes, each run's config built and checked."""
    path, arg = config_files.split(spec)
    module = config_files.load(path)
    for function in ("get_config", "get_sweep"):
        if not callable(getattr(module, function, None)):
            raise JTransferError(f"config file {path} has no {function}(arg); a sweep needs both")
    if quick:
        arg = ",".join(a for a in (arg, "quick=True") if a)
    overrides = module.get_sweep(arg)
    if not isinstance(overrides, list) or not overrides:
        raise JTransferError(f"{path}: get_sweep must return a non-empty list of dicts")
    runs, seen = [], {}
    for i, o in enumerate(overrides):
        if not isinstance(o, dict) or not all(isinstance(k, str) for k in o):
            raise JTransferError(f"{path}: get_sweep item {i} is {o!r}, not a dict of str keys")
        name = run_name(o)
        if name in seen:
            raise JTransferError(
                f"{path}: runs {seen[name][0]} {seen[name][1]} and {i} {o} would share the workdir "
                f"name {name!r}; make their override values differ in name"
            )
        if len(name) > 200 or name.startswith("."):
            raise JTransferError(f"{path}: run {i} {o} gets the unusable workdir name {name!r}")
        seen[name] = (i, o)
        runs.append(Run(name, dict(o), ",".join(a for a in (arg, config_files.format_arg(o)) if a)))
    sweep = Sweep(path, arg, module, os.path.abspath(workdir), runs)
    for run in runs:
        try:
            run.config = module.get_config(run.arg)
        except ValueError as e:  # JTransferError included: an unknown key, a bad value
            raise JTransferError(f"{path}: run {run.name}: {e}") from None
    return sweep


def preflight(sweep: Sweep, *, data_here: bool = True) -> None:
    """The checks that need more than the config file: config values, the pretrained weights,
    the datasets and the model's options (when `data_here`), and existing run workdirs."""
    from jtransfer import checkpoint, data, optim, pretrained, tasks, train
    from jtransfer.epochs import Epochs

    sources: dict[str, Any] = {}
    for run in sweep.runs:
        c = run.config
        try:
            train.check_config(c)
            weights = pretrained.SOURCES.get(c.pretrained.source)
            if weights is not None:
                try:
                    weights.path()
                except ImportError as e:
                    raise JTransferError(str(e)) from None
            if data_here:
                key = c.data.to_json()
                if key not in sources:
                    source = sources[key] = data.build_source(c.data)
                    for split in (c.data.train_split, c.data.eval_split):
                        source.check_split(split)
                tasks.build(c, sources[key].class_names).build_model()  # its options
                n = sources[key].num_examples(c.data.train_split)
                if n < c.batch_size:
                    raise JTransferError(
                        f"the training split has {n} examples, fewer than one batch of "
                        f"{c.batch_size}"
                    )
                steps = Epochs(n, c.batch_size).total_steps(c.num_epochs, c.total_steps)
                optim.build_schedule(c.lr, steps, c.schedule.warmup_steps, c.schedule.decay)
            saved = os.path.join(sweep.run_dir(run), "config.json")
            if os.path.exists(saved):
                with open(saved) as f:
                    checkpoint.check_resume_config(json.load(f), json.loads(c.to_json()))
        except JTransferError as e:
            raise JTransferError(f"run {run.name}: {e}") from None


def write_manifest(sweep: Sweep, quick: bool) -> None:
    """`sweep.json`: the config, its argument and the runs, which `--collect` reads back."""
    os.makedirs(sweep.workdir, exist_ok=True)
    manifest = {
        "config": os.path.abspath(sweep.path),
        "arg": sweep.arg,
        "quick": quick,
        "command": shlex.join(["python", "-m", "jtransfer.sweep", *sys.argv[1:]]),
        "runs": [{"name": r.name, "overrides": r.overrides, "arg": r.arg} for r in sweep.runs],
    }
    with open(os.path.join(sweep.workdir, "sweep.json"), "w") as f:
        json.dump(manifest, f, indent=2)


def from_manifest(workdir: str) -> Sweep:
    """The sweep whose `sweep.json` is in `workdir`, planned again from its config file."""
    path = os.path.join(workdir, "sweep.json")
    if not os.path.exists(path):
        raise JTransferError(f"{workdir} holds no sweep.json; run the sweep with --config first")
    with open(path) as f:
        manifest = json.load(f)
    spec = manifest["config"] + (f":{manifest['arg']}" if manifest["arg"] else "")
    return plan(spec, workdir)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {argv[1:]}")
    from jtransfer import sweep_collect, sweep_launch

    try:
        if _LAUNCHER.value == "slurm" and not _COLLECT.value:
            sweep_launch.require_submitit()
        bad = [p for p in _SLURM.value if "=" not in p]
        if bad:
            raise JTransferError(f"--slurm takes KEY=VALUE (e.g. slurm_partition=gpu), got {bad}")
        if _PARALLEL.value < 1:
            raise JTransferError(f"--parallel must be >= 1, got {_PARALLEL.value}")
        if _COLLECT.value and not _CONFIG.value:
            sweep = from_manifest(_WORKDIR.value)
        else:
            if not _CONFIG.value:
                raise JTransferError("--config is required (only --collect can do without it)")
            sweep = plan(_CONFIG.value, _WORKDIR.value, quick=_QUICK.value)
        console.quiet_libraries()  # the checks above need no TensorFlow: they fail fast
        sweep.jax_cache = os.path.abspath(_JAX_CACHE.value) if _JAX_CACHE.value else ""
        if not _COLLECT.value:
            preflight(sweep, data_here=_LAUNCHER.value != "print")
            write_manifest(sweep, _QUICK.value)
            pending = [r for r in sweep.runs if not sweep.finished(r)]
            if _LAUNCHER.value == "print":
                sweep_launch.print_commands(sweep, pending)
                return
            if _LAUNCHER.value == "local":
                status = sweep_launch.local(sweep, pending, _PARALLEL.value)
            else:
                pairs = (p.partition("=")[::2] for p in _SLURM.value)
                params = {k: config_files.literal(v) for k, v in pairs}
                status = sweep_launch.slurm(sweep, pending, params, _CLUSTER.value)
        sweep_collect.collect(sweep)
    except JTransferError as e:
        usage_error(str(e))
    if not _COLLECT.value and status:
        sys.exit(status)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
