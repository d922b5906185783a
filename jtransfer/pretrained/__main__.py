"""`python -m jtransfer.pretrained inspect FILE`: the tree of a weights file and its model.

A subcommand rather than a flag so that later tools on weights files sit beside `inspect`
without changing its usage. Errors (unknown format, unreadable file) are one `error:` line
naming the file and what is wrong with it, exit status 2.
"""

from __future__ import annotations

import argparse

from jtransfer.console import usage_error
from jtransfer.errors import JTransferError
from jtransfer.pretrained import inspection


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jtransfer.pretrained")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="print the keys, shapes, dtypes and parameter counts, and the models"
    )
    inspect.add_argument("path", help="a .pth/.pt, .safetensors or .npz file, or a run's workdir")
    args = parser.parse_args(argv)
    try:
        print(inspection.report(args.path))
    except JTransferError as e:
        usage_error(str(e))


if __name__ == "__main__":
    main()
