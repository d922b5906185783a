"""Command line: `python -m jtransfer.main --config=configs/x.py[:k=v,...] --workdir=DIR`.

Any config field can be overridden with `--config.a.b=value`; configs are locked, so a misspelt
key is an error that names it and the close matches (ml_collections does this for us).

What the user sees is the run's own lines: TensorFlow's, absl's and orbax's start-up chatter is
off unless `--verbose`. Bad input — a config argument, a field value, a dataset, a checkpoint, a
workdir holding another run — is one line on stderr (`error: ...`) and exit status 2, before
anything is written to the workdir; anything else is a bug and keeps its traceback. Flags and
the config file are read before TensorFlow is imported (jtransfer's config files import none),
so a typo there is refused within a couple of seconds.

Multi-process runs (`jtransfer.distributed`): on a GPU cluster give every process the same
`--coordinator_address=HOST:PORT --num_processes=N` and its own `--process_id` (or the
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` variables); on a Cloud TPU VM
pod pass `--distributed=on` on every worker and JAX finds the rest. A run stopped by SIGTERM
saves its state and exits with status 75 (`distributed.PREEMPTED_EXIT_CODE`); rerun the same
command to resume.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from jtransfer import console
from jtransfer.console import usage_error
from jtransfer.errors import JTransferError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:args]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' logs (TF, absl, orbax).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Call jax.distributed.initialize: auto = when a coordinator address is given (flag or "
    "JAX_COORDINATOR_ADDRESS); on = always, letting JAX detect TPU pods, Slurm or Open MPI.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator (multi-process runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, N).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Seconds to wait for the coordinator and every process."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {argv[1:]}")
    console.quiet_libraries(verbose=_VERBOSE.value)  # flags and config read: now TensorFlow
    logging.getLogger("jtransfer").setLevel(logging.INFO)
    from jtransfer import distributed, train  # after flag parsing: --help stays fast

    try:
        distributed.initialize(
            mode=_DISTRIBUTED.value,
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
            timeout_s=_INIT_TIMEOUT.value,
        )
        with distributed.Preemption() as preemption:
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, preemption)
    except distributed.DistributedInitError as e:
        sys.exit(f"error: {e}")
    except JTransferError as e:
        usage_error(str(e))
    except distributed.Preempted as e:
        console.say(str(e))
        sys.exit(distributed.PREEMPTED_EXIT_CODE)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with one line instead of stacked tracebacks for a bad flag, a misspelt
    `--config.key` or a bad `:key=value` argument of the config file."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ml_collections: unknown key in a locked config
        message = e
        while isinstance(message, BaseException) and message.args:
            message = message.args[0]
        usage_error(f"unknown config key {message}")
    except flags.Error as e:  # a flag absl cannot parse, or an error of the config file
        cause = _root_cause(e)
        if cause is e:
            usage_error(str(e).splitlines()[0])
        if isinstance(cause, ValueError):  # a bad argument (a bug keeps its traceback)
            usage_error(str(cause))
        raise


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
