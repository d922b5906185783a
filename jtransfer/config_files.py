"""Config files as modules: `path.py[:arg]` split in two, and a file loaded by its path.

`jtransfer.main` gets its config from ml_collections' `--config` flag, which loads the file and
calls `get_config(arg)`. The sweep runner needs the same file's other functions (`get_sweep`,
`get_plots`, `get_findings`), and the ablation configs build on configs/transfer.py, which is a
file beside them rather than a package module: both load a file by its path, as here, and split
the argument off the path the way ml_collections does (at the first ':'); `format_arg` writes
an argument from a dict, for a run of a sweep or a config built on another.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import types
from collections.abc import Mapping
from typing import Any

from jtransfer.errors import JTransferError


def split(spec: str) -> tuple[str, str | None]:
    """`'configs/x.py:a=1,b=2'` -> `('configs/x.py', 'a=1,b=2')`; no ':' -> `(spec, None)`."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def load(path: str) -> types.ModuleType:
    """The Python file at `path` as a fresh module (not registered in `sys.modules`)."""
    if not os.path.isfile(path):
        raise JTransferError(f"config file {path!r} does not exist")
    name = "jtransfer_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def beside(file: str, relative: str) -> types.ModuleType:
    """The config file at `relative` to the directory of `file` (a config file's `__file__`)."""
    return load(os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(file)), relative)))


def literal(text: str) -> Any:
    """`text` as a Python literal, or `text` itself if it is none (as `config_args` reads)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def arg_value(value: Any) -> str:
    """`value` as the text of a `key=value` config argument that `config_args.parse` reads back
    as `value`: strings bare where that is unambiguous ('lp_ft'), quoted otherwise ("'1'")."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, str) and (literal(value) != value or re.search(r"[,=\[\](){}'\"]", value)):
        text = repr(value)
    back = literal(text)
    if back != value or isinstance(back, str) != isinstance(value, str):
        raise JTransferError(f"config argument value {value!r} is not a Python literal")
    return text


def format_arg(args: Mapping[str, Any]) -> str:
    """`{'a': 1, 'b': 'x'}` -> `'a=1,b=x'`, the inverse of `config_args.parse`."""
    return ",".join(f"{k}={arg_value(v)}" for k, v in args.items())
