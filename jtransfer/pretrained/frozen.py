"""What a checkpoint leaves out: the leaves a run never changes, read again from their source.

A run that trains 0.2 % of its parameters need not write the other 99.8 % at every save: they
are the pretrained source's values, grafted at the start and never changed. So a checkpoint
holds the part of the state that changes (`jtransfer.checkpoint`), and in its `frozen` item the
`record` of how to get the rest back: the source and model that gave it, the path, shape and
dtype of each frozen leaf, and the sha256 of the frozen leaves. Resuming
(`jtransfer.train`) and every reader of a run (`pretrained.orbax_reader`, so export, predict and
fine-tuning from a run) read the source again, graft it, take the frozen leaves and check the
fingerprint: a source that changed or went missing is an error naming it, never a silently
different model.

The fingerprint is of the grafted leaves rather than of the source file: those are what the run
depends on, so it covers a key map or a resampling as well as the file's bytes, and it is the
same whether the source is a registered name, a path, a gs:// URL or another run.

Frozen means: loaded from the source (not initialised by the run), trainable in no phase of the
run, and for BatchNorm statistics, held in inference mode (`norm_eval`) in every phase. What a
later phase trains is saved from the start, so a run's checkpoints all have one structure.

What is saved is saved compactly, since orbax spends about a kilobyte of metadata on each array
(tree metadata, sharding, zarr header, index entries), more than many of a LoRA run's arrays
hold: the optimizer state, which only a resume of the same run reads, is saved with its small
replicated arrays packed into one array per dtype (`pack_arrays`); the parameters stay one array
each, so that every reader finds them by path. Packing is written here because orbax has no
option for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jtransfer import graft  # the module: it imports this package
from jtransfer.errors import JTransferError
from jtransfer.policy import flatten, overlay, unflatten

COLLECTIONS = ("params", "batch_stats")

# Optimizer-state arrays of at most this many bytes are saved packed, one array per dtype: orbax
# spends about a kilobyte on each array it saves (tree metadata, sharding, zarr header, index
# entries), more than a LoRA factor's momentum or a bias's holds.
PACKED_BYTES = 1 << 20


class FrozenSourceError(JTransferError):
    """The source of a checkpoint's frozen leaves is missing or no longer gives them."""


def fingerprint(flat: Mapping[str, Any]) -> str:
    """sha256 over the leaves' paths, dtypes, shapes and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(flat):
        value = np.ascontiguousarray(flat[path])
        digest.update(f"{path}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class FrozenPart:
    """The frozen leaves of a run ('params/...', 'batch_stats/...') and their `record`."""

    paths: frozenset[str]
    record: dict[str, Any] | None  # None: nothing is frozen, checkpoints hold everything

    @classmethod
    def of_run(
        cls,
        variables: Mapping,
        loaded: Sequence[str],
        trained: set[str],
        *,
        source: str,
        model: str,
    ) -> FrozenPart:
        """The frozen part of a run whose starting `variables` (host arrays) took the paths
        `loaded` from `source` (the graft's loaded and resampled ones) and which ever changes
        `trained` (collection-prefixed paths)."""
        flat = flatten({c: variables.get(c, {}) for c in COLLECTIONS})
        paths = frozenset(p for p in loaded if p not in trained)
        if not paths:
            return cls(paths, None)
        record = {
            "source": source,
            "model": model,
            "sha256": fingerprint({p: flat[p] for p in paths}),
            # nested by path component: a flat map repeats each prefix in every key
            "leaves": unflatten(
                {p: [list(np.shape(flat[p])), np.dtype(flat[p].dtype).name] for p in sorted(paths)}
            ),
        }
        return cls(paths, record)

    def drop(self, state: Mapping) -> dict:
        """What a checkpoint of `state` holds: the state without the frozen leaves, and its
        optimizer state as arrays (`pack_arrays`). (The optimizer's tree has a placeholder for
        every parameter in every group it is not in, each an entry in orbax's metadata: for a
        linear probe, hundreds of entries around two arrays.)"""
        kept = {c: _without(state.get(c, {}), c, self.paths) for c in COLLECTIONS if c in state}
        if "opt_state" in state:
            kept["opt_state"] = pack_arrays(jax.tree.leaves(state["opt_state"]))
        return {**state, **kept}

    def fill(self, part: Mapping, whole: Mapping) -> dict:
        """The state `part` (what `drop` made of one) stands for, completed from `whole`, a
        state of the same run: its frozen leaves and its optimizer state's tree, shapes and
        shardings."""
        filled = {c: overlay(whole.get(c, {}), part.get(c, {})) for c in COLLECTIONS if c in part}
        if "opt_state" in part:
            like = jax.tree.leaves(whole["opt_state"])
            filled["opt_state"] = jax.tree.unflatten(
                jax.tree.structure(whole["opt_state"]), unpack_arrays(part["opt_state"], like)
            )
        return {**part, **filled}

    def check(self, saved: Mapping[str, Any] | None, where: str) -> None:
        """Raises `FrozenSourceError` unless the `record` saved at `where` describes the same
        frozen leaves as this run's."""
        if saved is None and self.record is None:
            return
        saved, mine = saved or {}, self.record or {}
        leaves, now = frozen_leaves(saved), frozen_leaves(mine)
        if leaves != now:
            raise FrozenSourceError(
                f"{where} was saved with other frozen leaves than this run has "
                f"({len(leaves)} against {len(now)}): "
                "the model or its policy changed; use another workdir"
            )
        if saved["sha256"] != mine["sha256"]:
            raise FrozenSourceError(_changed(saved, mine["sha256"], where))


def frozen_leaves(record: Mapping[str, Any] | None) -> dict[str, list]:
    """`{'params/...': [shape, dtype]}` of the frozen leaves a `record` describes."""
    return flatten((record or {}).get("leaves", {}))


def _packable(x: Any) -> bool:
    if not jnp.issubdtype(x.dtype, np.number):  # PRNG keys and the like stay themselves
        return False
    replicated = not isinstance(x, jax.Array) or x.sharding.is_fully_replicated
    return replicated and np.size(x) * np.dtype(x.dtype).itemsize <= PACKED_BYTES


def _packable_by_dtype(arrays: Sequence[Any]) -> dict[str, list]:
    groups: dict[str, list] = {}
    for x in arrays:
        if _packable(x):
            groups.setdefault(np.dtype(x.dtype).name, []).append(x)
    return groups


def pack_arrays(arrays: Sequence[Any]) -> dict[str, Any]:
    """`{'packed': {dtype: the small replicated arrays of that dtype, raveled and concatenated
    in order}, 'arrays': [the others, in order]}`; `unpack_arrays` inverts it."""
    return {
        "packed": {dtype: _concatenate(xs) for dtype, xs in _packable_by_dtype(arrays).items()},
        "arrays": [x for x in arrays if not _packable(x)],
    }


def unpack_arrays(packed: Mapping[str, Any], like: Sequence[Any]) -> list:
    """The arrays `pack_arrays` packed, in the shapes and shardings of `like` (arrays of the
    same shapes and dtypes, in the same order)."""
    groups = _packable_by_dtype(like)
    pieces = {dtype: iter(_split(packed["packed"][dtype], xs)) for dtype, xs in groups.items()}
    others = iter(packed["arrays"])
    return [next(pieces[np.dtype(x.dtype).name]) if _packable(x) else next(others) for x in like]


@jax.jit
def _concatenate(arrays: list) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in arrays])


def _split(flat: Any, like: Sequence[Any]) -> list:
    shapes = [np.shape(x) for x in like]
    shardings = [x.sharding if isinstance(x, jax.Array) else None for x in like]

    def split(flat):
        starts = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        return [
            flat[a:b].reshape(s) for a, b, s in zip(starts[:-1], starts[1:], shapes, strict=True)
        ]

    return jax.jit(split, out_shardings=shardings)(flat)


def _without(tree: Mapping, collection: str, paths: frozenset[str]) -> dict:
    return unflatten({p: v for p, v in flatten(tree).items() if f"{collection}/{p}" not in paths})


def _changed(record: Mapping[str, Any], now: str, where: str) -> str:
    return (
        f"the pretrained source {record['source']!r} changed since {where} was saved: its "
        f"frozen leaves have sha256 {now} now, {record['sha256']} then. Restore the source it "
        "was saved with, or start a new run"
    )


def rebuild(
    record: Mapping[str, Any], load: Callable[[str, str], Mapping], where: str
) -> dict[str, dict]:
    """The frozen leaves `record` (saved at `where`) describes, as `{'params': ...,
    'batch_stats': ...}` of numpy arrays: read from `load(source, model)` and fitted to their
    recorded shapes as the run's graft fitted them (`graft.fit`), checked against the
    fingerprint."""
    try:
        loaded = flatten(load(record["source"], record["model"]))
        frozen = {
            path: graft.fit(path, loaded[path], shape, np.dtype(dtype))
            for path, (shape, dtype) in frozen_leaves(record).items()
            if path in loaded
        }
    except JTransferError as e:
        raise FrozenSourceError(
            f"{where} needs its frozen leaves from the pretrained source {record['source']!r}, "
            f"which cannot be read: {e}"
        ) from None
    now = fingerprint(frozen)
    if now != record["sha256"]:
        raise FrozenSourceError(_changed(record, now, where))
    tree = unflatten(frozen)
    return {c: tree.get(c, {}) for c in COLLECTIONS}
