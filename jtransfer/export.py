"""Export a run's fine-tuned weights to one file: `params` and `batch_stats`, nothing else.

    python -m jtransfer.export --workdir=DIR --out=weights.safetensors  # or .npz; --step=N

A checkpoint directory holds the whole train state in orbax's layout, readable only with orbax;
a single `.safetensors` or `.npz` file is what other code and other people take. Keys are the
'/'-joined native paths with their collection (`params/backbone/stem/conv/kernel`,
`batch_stats/...`), the layout `jtransfer.pretrained` recognises without a key map, so the file
loads back with `pretrained.load(FILE)` (and `FILE:backbone` for a part). The weights are read
through the same reader as fine-tuning from a run (`pretrained.read`), so an export and a
fine-tune see exactly the same arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy

from jtransfer import pretrained, run_args

WRITERS: dict[str, Callable[[dict[str, np.ndarray], Path], None]] = {
    ".safetensors": lambda arrays, path: safetensors.numpy.save_file(arrays, path),
    ".npz": lambda arrays, path: np.savez(path, **arrays),
}


def export(run: str | Path, out: str | Path, step: int | None = None) -> dict[str, np.ndarray]:
    """Writes the weights of `run` (workdir or step directory) at `step` (default: latest) to
    `out`, written whole or not at all; returns the arrays written."""
    out = Path(out)
    if out.suffix not in WRITERS:
        raise ValueError(f"cannot write {out}: the suffix must be one of {sorted(WRITERS)}")
    source = run_args.checkpoint(run, step)
    arrays = {k: np.ascontiguousarray(v) for k, v in pretrained.read(source).items()}
    partial = out.with_name(f".{out.name}.partial{out.suffix}")
    WRITERS[out.suffix](arrays, partial)
    os.replace(partial, out)
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = run_args.parser("python -m jtransfer.export", __doc__)
    parser.add_argument("--out", required=True, help=f"output file, one of {sorted(WRITERS)}")
    args = parser.parse_args(argv)
    arrays = export(args.workdir, args.out, args.step)
    count = sum(a.size for a in arrays.values())
    print(f"wrote {len(arrays)} arrays ({count:,} values) to {args.out}")


if __name__ == "__main__":
    main()
