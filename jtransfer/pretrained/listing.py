"""`python -m jtransfer.pretrained list`: the registry as a table, and what is on this machine.

One row per registered file (aliases such as `vit_b16/imagenet` are listed after the table,
with what they stand for), so the table answers the questions a config needs before a run:
which model loads it (its family's key map), the format, the native resolution and class
count, the normalisation its inputs need, how big it is and whether it is already here.
Nothing is downloaded: `cached` looks only at the local caches, `size` is the file's own
size when it is here and the published one (marked `~`) otherwise.
"""

from __future__ import annotations

from jtransfer.pretrained import KEY_MAPS, cache
from jtransfer.pretrained.sources import ALIASES, SOURCES, Source

_COLUMNS = ("name", "family", "format", "res", "classes", "normalisation", "size", "cached")


def _family(model: str) -> str:
    return KEY_MAPS[model].__module__.rsplit(".", 1)[-1]


def _here(source: Source) -> tuple[str, str]:
    """(size, cached) columns: the local file's size, else the published one."""
    if source.package is not None:
        try:
            path = source.package.path()
        except (ImportError, FileNotFoundError):
            return "", f"pip install {source.package.name}"
        return f"{path.stat().st_size / 2**20:.1f} MiB", "pip"
    path = cache.cached(source)
    if path is not None:
        return f"{path.stat().st_size / 2**20:.1f} MiB", "yes"
    return (f"~{source.size_mib:.3g} MiB" if source.size_mib else "?"), "no"


def table() -> str:
    """The registry, one line per file, then the aliases."""
    rows = [_COLUMNS]
    for name, source in SOURCES.items():
        if name in ALIASES:
            continue
        size, here = _here(source)
        rows.append(
            (
                name,
                _family(source.model),
                source.format,
                str(source.resolution),
                str(source.num_classes),
                source.normalization.describe(),
                size,
                here,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"cache: {cache.cache_dir()} (JTRANSFER_CACHE); Hub: huggingface_hub's cache")
    lines += [f"{alias} = {target}" for alias, target in ALIASES.items()]
    return "\n".join(lines)
