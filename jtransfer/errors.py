"""The one exception type for bad input, so that the command line can tell it from a bug.

Every error a user can cause and fix — a config value that cannot work, a file that is not a
checkpoint, a dataset without the features a task needs, a workdir that belongs to another run —
is a `JTransferError` (or a subclass that says which part refused it), raised with a message of
one line that names the bad value and what would be valid. The command-line tools print that line
and exit with status 2, before anything is written to the workdir where they can; any other
exception is a bug and keeps its traceback.

It subclasses `ValueError` so that code and tests written against `ValueError` keep working.
"""

from __future__ import annotations


class JTransferError(ValueError):
    """Bad input: a config value, file, dataset or workdir that cannot work as given."""


USAGE_EXIT_CODE = 2  # what the command-line tools exit with on a `JTransferError`
