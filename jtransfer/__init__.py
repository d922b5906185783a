"""jtransfer: transfer learning and fine-tuning of pretrained vision models in JAX/Flax.

Run as a command (`python -m jtransfer.predict`, `.export`, `.pretrained`, ...), the package
silences TensorFlow's start-up lines before the command's module can import TensorFlow
(`console.quiet_libraries`; `--verbose` keeps them), so a user sees the command's own output
only. Python sets `sys.argv[0]` to "-m" while it imports the packages of the `-m` module, which
is how this knows; imported as a library, nothing changes. The training and sweep commands
import no TensorFlow before they have parsed their flags and config file, and silence it
themselves after that: bad input there is refused without waiting seconds for TensorFlow.
"""

import sys

__version__ = "0.1.0"
_QUIET_AFTER_PARSING = ("jtransfer.main", "jtransfer.sweep", "jtransfer.sweep_run")


def _module_run() -> str:
    """MODULE of the `python [options] -m MODULE ...` that started this process, or ''."""
    argv = sys.orig_argv
    return argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""


if sys.argv[:1] == ["-m"] and _module_run() not in _QUIET_AFTER_PARSING:
    from jtransfer import console

    console.quiet_libraries(verbose="--verbose" in sys.argv)
