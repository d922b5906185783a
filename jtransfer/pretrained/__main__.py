"""`python -m jtransfer.pretrained inspect FILE` / `list`: a weights file, or the registry.

Subcommands rather than flags so that tools on weights sit side by side: `inspect` shows the
tree of a file and the model that loads it, `list` the named sources with their family,
format, resolution, normalisation, size and whether they are cached here. Errors (unknown
format, unreadable file) are one `error:` line naming the file and what is wrong with it, exit
status 2.
"""

from __future__ import annotations

import argparse

from jtransfer.console import usage_error
from jtransfer.errors import JTransferError
from jtransfer.pretrained import inspection, listing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jtransfer.pretrained")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect", help="print the keys, shapes, dtypes and parameter counts, and the models"
    )
    inspect.add_argument("path", help="a .pth/.pt, .safetensors or .npz file, or a run's workdir")
    commands.add_parser("list", help="print the registered sources and whether each is cached")
    args = parser.parse_args(argv)
    try:
        print(listing.table() if args.command == "list" else inspection.report(args.path))
    except JTransferError as e:
        usage_error(str(e))


if __name__ == "__main__":
    main()
