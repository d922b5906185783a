"""The offline data sets beside the repository (`../shared/data/<name>`), for tests that read them.

They are never copied into the repository, so a checkout without them cannot run those tests. On
a workstation that is a skip; in CI (`CI=true`, as CI services set it) it is a failure, since a
CI run that quietly skips its real-data tests reports a success it has not checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """`../shared/data/<name>`; skips the calling test if it is missing, fails it under CI."""
    path = SHARED_DATA / name
    if not path.is_dir():
        message = f"data set {name!r} missing: expected the directory {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: required)", pytrace=False)
        pytest.skip(message)
    return path
