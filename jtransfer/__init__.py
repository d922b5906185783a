"""jtransfer: transfer learning and fine-tuning of pretrained vision models in JAX/Flax.

Run as a command (`python -m jtransfer.predict`, `.export`, `.pretrained`, ...), the package
silences TensorFlow's start-up lines before the command's module can import TensorFlow
(`console.quiet_libraries`; `--verbose` keeps them), so a user sees the command's own output
only. Python sets `sys.argv[0]` to "-m" while it imports the packages of the `-m` module, which
is how this knows; imported as a library, nothing changes.
"""

import sys

__version__ = "0.1.0"

if sys.argv[:1] == ["-m"]:
    from jtransfer import console

    console.quiet_libraries(verbose="--verbose" in sys.argv)
