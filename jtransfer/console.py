"""What a user sees on the console: the run's own lines, and bad input as one line.

- `say`: a line of the run, printed by process 0 only, so a multi-host run has one console.
- `usage_error`: how every command refuses bad input: `error: ...` on one line of stderr and
  exit status 2, no traceback.
- `quiet_libraries`: TensorFlow prints start-up lines from C++ when it is imported ("oneDNN
  custom operations are on", the absl pre-initialisation warning) that no environment variable
  of this TensorFlow version turns off, and absl, TFDS and orbax log warnings a run does not
  act on. Unless the user asks for them (`--verbose`), TensorFlow is imported with stderr
  pointed at /dev/null and the Python loggers are set to errors only. The warnings jtransfer
  itself gives (boxes dropped from a dataset, ...) print as `warning: ...` lines, without the
  source line that Python's default format adds.
- TensorFlow (2.16 and later) imports all of Keras 3 while it is imported, to register Keras's
  optimizers for SavedModel; Keras imports matplotlib, scikit-learn and SciPy with it. That is
  about a third of TensorFlow's import time, paid by every command for nothing it uses
  (jtransfer reads data with tf.data only). The commands import TensorFlow with `keras` hidden
  from the import system, so TensorFlow's guard (`except ImportError: pass`) skips it; Keras
  stays importable afterwards, and `tf.keras` loads it when asked.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import NoReturn

import jax

from jtransfer.errors import USAGE_EXIT_CODE


def say(message: str) -> None:
    """A console line, from process 0 only."""
    if jax.process_index() == 0:
        print(message, flush=True)


def usage_error(message: str) -> NoReturn:
    """`error: message` as one line on stderr, then exit status 2."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT_CODE)


def quiet_libraries(verbose: bool = False) -> None:
    """Imports TensorFlow (without Keras), silencing its start-up lines and the libraries'
    warnings unless `verbose`; call it before anything else imports TensorFlow."""
    if verbose:
        _import_tensorflow()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        _import_tensorflow()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # orbax, TFDS and JAX log through it
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"


def _import_tensorflow() -> None:
    """Imports TensorFlow without the Keras it would import eagerly (see the module docstring)."""
    hide = "keras" not in sys.modules
    if hide:
        sys.modules["keras"] = None  # `import keras` raises ImportError while this is here
    try:
        import tensorflow  # noqa: F401
    finally:
        if hide:
            del sys.modules["keras"]
