"""Export a run's fine-tuned weights to one file: `params` and `batch_stats`, nothing else.

    python -m jtransfer.export --workdir=DIR --out=weights.safetensors  # or .npz; --step=N

A checkpoint directory holds the whole train state in orbax's layout, readable only with orbax;
a single `.safetensors` or `.npz` file is what other code and other people take. Keys are the
'/'-joined native paths with their collection (`params/backbone/stem/conv/kernel`,
`batch_stats/...`), the layout `jtransfer.pretrained` recognises without a key map, so the file
loads back with `pretrained.load(FILE)` (and `FILE:backbone` for a part). The weights are read
through the same reader as fine-tuning from a run (`pretrained.read`), so an export and a
fine-tune see exactly the same arrays.

A LoRA run is exported merged: each kernel's factors are folded into it, `W + s·A·B` with `s`
the run's `model.lora_scale` (read from its `config.json`), and dropped, so the file is a plain
checkpoint that the un-adapted model loads and runs at the base model's cost. Adapters and
prompts are layers rather than updates of a kernel; they are exported as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy

from jtransfer import pretrained, run_args
from jtransfer.errors import JTransferError
from jtransfer.models import peft

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
    arrays = pretrained.read(source)
    if any(k.endswith(f"/{peft.LORA}/a") for k in arrays):
        arrays = peft.merge_lora(arrays, _lora_scale(source))
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    partial = out.with_name(f".{out.name}.partial{out.suffix}")
    WRITERS[out.suffix](arrays, partial)
    os.replace(partial, out)
    return arrays


def _lora_scale(source: Path) -> float:
    """`model.lora_scale` of the run that `source` (its workdir, or a step directory in it)
    belongs to, from the run's config.json."""
    for config in (source / "config.json", source.parent.parent / "config.json"):
        if config.is_file():
            model = json.loads(config.read_text())["model"]
            return float(model.get("lora_scale", peft.DEFAULT_SCALE))
    raise JTransferError(
        f"{source} holds LoRA factors, but no config.json of its run was found beside it to give "
        "their scale (model.lora_scale), which merging them needs"
    )


def main(argv: list[str] | None = None) -> None:
    parser = run_args.parser("python -m jtransfer.export", __doc__)
    parser.add_argument("--out", required=True, help=f"output file, one of {sorted(WRITERS)}")
    args = parser.parse_args(argv)
    arrays = export(args.workdir, args.out, args.step)
    count = sum(a.size for a in arrays.values())
    print(f"wrote {len(arrays)} arrays ({count:,} values) to {args.out}")


if __name__ == "__main__":
    main()
