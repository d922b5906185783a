"""Command line: `python -m jtransfer.main --config=configs/x.py[:k=v,...] --workdir=DIR`.

Any config field can be overridden with `--config.a.b=value`; configs are locked, so a misspelt
key is an error that names it and the close matches (ml_collections does this for us).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:args]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("jtransfer").setLevel(logging.INFO)
    logging.getLogger().setLevel(logging.WARNING)  # orbax and TFDS are chatty at INFO
    from jtransfer import train  # after flag parsing: --help stays fast

    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a one-line error for a misspelt `--config.key` instead of a trace."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # ml_collections: unknown key in a locked config
        message = e
        while isinstance(message, BaseException) and message.args:
            message = message.args[0]
        sys.exit(f"unknown config key {message}")
    except ValueError as e:  # a bad `:key=value` argument of get_config
        sys.exit(f"bad config argument: {e}")


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
