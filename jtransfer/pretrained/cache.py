"""The local copy of a registered source's file: downloaded once, verified on every read.

    $JTRANSFER_CACHE/<model>/<file name>      (default ~/.cache/jtransfer)
    $JTRANSFER_CACHE/<model>/<file name>.sha256

A file is fetched on first use through the library made for its address, none of them
hand-written: `pooch`'s HTTP downloader for https, `tf.io.gfile` for gs:// (and any other
file system TensorFlow has, e.g. `ram://`), and `huggingface_hub` for `hf://ORG/REPO/FILE`,
which keeps such files in its own cache and honours its own offline mode (HF_HUB_OFFLINE).

What keeps the cache trustworthy:

* A download is written under a temporary name beside its final one, hashed as it arrives, and
  renamed into place only once it is complete, has the published sha256 where the registry
  knows one (or its prefix: torchvision publishes the first 8 hex digits in the file name), and
  reads as a checkpoint of the declared format. Whatever fails (a dropped connection, a full
  disk, an HTML error page), the temporary file is removed, so nothing half-written is read.
* The sha256 of the first download is recorded beside the file, and every read hashes the file
  again and compares (about 0.3 s for ViT-B/16's 330 MiB), as does any later download of it:
  a file that changed is an error naming the path and both hashes. A file put in place by hand
  is recorded on its first read.
* Processes that need the same missing file take a lock beside it (`filelock`: an OS lock, so a
  killed process leaves none behind); the first downloads, the others wait and then read what
  it wrote. That is what makes a multi-host run download once per host: JAX's processes on a
  host share its cache directory. Reading a cached file takes no lock, so a read-only cache
  that already holds the files works.

With `JTRANSFER_OFFLINE=1`, or when every address of a source fails, a missing file is one
error line naming the source, its address(es) and the path to place the file at by hand.

A weights file given by URL instead of by name (`gs://bucket/vit.npz` as `pretrained.source`,
on a TPU VM say) is read in place, `read_in_place`: streamed into a temporary file in memory
(/dev/shm), parsed and deleted, never cached, so a bucket can serve a pod without any host
keeping a copy on disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from jtransfer.errors import JTransferError
from jtransfer.pretrained.readers import READERS

if TYPE_CHECKING:
    from jtransfer.pretrained.sources import Source

_CHUNK = 1 << 20
_HUB = "hf://"
_MEMORY = "/dev/shm"  # a RAM-backed directory on Linux


class DownloadError(JTransferError):
    """A source's file could not be fetched: offline, network, server, disk or wrong content."""


class IntegrityError(JTransferError):
    """A file whose sha256 is not the published or recorded one."""


def cache_dir() -> Path:
    """`$JTRANSFER_CACHE`, default `~/.cache/jtransfer`."""
    return Path(os.environ.get("JTRANSFER_CACHE") or "~/.cache/jtransfer").expanduser()


def offline() -> bool:
    """Whether `JTRANSFER_OFFLINE` forbids downloads (any value but '', 0, false, no, off)."""
    return os.environ.get("JTRANSFER_OFFLINE", "").lower() not in ("", "0", "false", "no", "off")


def read_in_place(url: str) -> dict[str, np.ndarray]:
    """The arrays of the weights file at `url` (gs:// or any tf.io.gfile file system; https
    goes through pooch), read without entering the cache (see the module doc)."""
    suffix = PurePosixPath(url).suffix
    if suffix not in READERS:
        raise JTransferError(f"no reader for {suffix!r} files ({url}); known: {sorted(READERS)}")
    memory = _MEMORY if os.path.isdir(_MEMORY) and os.access(_MEMORY, os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=memory) as local:
        try:
            _copy(url, _HashingFile(local))
        except _Unreachable as e:
            raise DownloadError(f"cannot read {url}: {e}") from e
        local.flush()
        try:
            return READERS[suffix](Path(local.name))
        except JTransferError as e:
            raise type(e)(str(e).replace(local.name, url)) from e


def cache_path(source: Source) -> Path:
    """Where `source`'s file is (or would be) cached; a file placed here by hand is used."""
    url = source.urls[0]
    relative = url[len(_HUB) :] if url.startswith(_HUB) else url.rstrip("/").rsplit("/", 1)[-1]
    return cache_dir() / source.model / relative


def cached(source: Source) -> Path | None:
    """The local file of `source` if it is already on this machine, without any network."""
    path = cache_path(source)
    if path.is_file():
        return path
    if source.urls[0].startswith(_HUB):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(*_hub_address(source.urls[0]))
        return Path(found) if isinstance(found, str) else None
    return None


def fetch(source: Source) -> Path:
    """The verified local file of `source`, downloaded first if it is not cached."""
    path = cache_path(source)
    if path.is_file():
        return _verified(source, path, path)
    if source.urls[0].startswith(_HUB):
        return _from_hub(source, path)
    if offline():
        raise DownloadError(
            f"{source.name} is not in the cache and JTRANSFER_OFFLINE is set: "
            + _by_hand(source, path)
        )
    import filelock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(f"{path}.lock")
        lock.acquire(timeout=1)
    except filelock.Timeout:
        print(f"waiting for another process to download {source.name} to {path}", file=sys.stderr)
        lock.acquire()
    except OSError as e:
        raise DownloadError(
            f"cannot download {source.name}: the cache directory {path.parent} is not writable "
            f"({e.strerror}); set JTRANSFER_CACHE to a writable directory or place the file at "
            f"{path} by hand"
        ) from e
    try:
        if path.is_file():  # another process downloaded it while this one waited
            return _verified(source, path, path)
        failures = []
        for url in source.urls:
            try:
                _download(source, url, path)
                return path
            except _Unreachable as e:
                failures.append(f"{url}: {e}")
        raise DownloadError(
            f"could not download {source.name} ({'; '.join(failures)}); {_by_hand(source, path)}"
        )
    finally:
        lock.release()


def _by_hand(source: Source, path: Path) -> str:
    """How to put the file in place without this machine downloading it."""
    return f"download {' or '.join(source.urls)} elsewhere and place the file at {path}"


class _Unreachable(Exception):
    """One address of a source failed (network, server, content); the next may still work."""


class _HashingFile:
    """A binary file that hashes and counts the bytes written to it as they arrive."""

    def __init__(self, file: BinaryIO):
        self._file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return written

    def flush(self) -> None:
        self._file.flush()


def _download(source: Source, url: str, path: Path) -> None:
    """`url` to `path` via a temporary file, renamed once complete and verified."""
    part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    print(f"downloading {source.name} from {url} to {path}", file=sys.stderr, flush=True)
    try:
        with open(part, "wb") as f:
            out = _HashingFile(f)
            _copy(url, out)
            f.flush()
            os.fsync(f.fileno())
        digest = out.sha256.hexdigest()
        _check_hash(source, digest, url, path, "nothing was cached")
        try:
            READERS[source.format](part)
        except JTransferError as e:
            message = _oneline(e).replace(str(part), "the file")
            raise _Unreachable(f"not a {source.format} checkpoint ({message})") from e
        _record(path, digest)
        os.replace(part, path)
    except OSError as e:
        raise DownloadError(
            f"cannot download {source.name} to {path}: {e.strerror or e} after "
            f"{part.stat().st_size if part.exists() else 0} bytes"
            + ("; free some space or set JTRANSFER_CACHE to another disk" if _full(e) else "")
        ) from e
    finally:
        part.unlink(missing_ok=True)


def _copy(url: str, out: _HashingFile) -> None:
    if url.startswith(("https://", "http://")):
        import pooch
        import requests

        download = pooch.HTTPDownloader(progressbar=sys.stderr.isatty(), chunk_size=_CHUNK)
        try:
            download(url, out, None)
        except requests.RequestException as e:  # an OSError too, but never a local one
            raise _Unreachable(_oneline(_innermost(e))) from e
        return
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(url, "rb") as f:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
    except tf.errors.OpError as e:
        reason = f"{type(e).__name__}: {e.message}" if e.message else type(e).__name__
        raise _Unreachable(f"{_oneline(reason)} (after {out.size} bytes)") from e


def _full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _from_hub(source: Source, path: Path) -> Path:
    """The file from huggingface_hub's cache (downloaded into it unless offline)."""
    from huggingface_hub import errors, hf_hub_download

    repo, filename = _hub_address(source.urls[0])
    try:
        local = hf_hub_download(repo, filename, local_files_only=offline())
    except (errors.EntryNotFoundError, OSError) as e:
        why = "JTRANSFER_OFFLINE is set: " if offline() else ""
        raise DownloadError(
            f"could not get {source.name} from the Hugging Face Hub ({why}{_oneline(e)}); "
            f"run `huggingface-cli download {repo} {filename}` with network, or place the file "
            f"at {path}"
        ) from e
    return _verified(source, Path(local), path)


def _hub_address(url: str) -> tuple[str, str]:
    """(repo id, file name) of `hf://ORG/REPO/FILE`."""
    org, repo, filename = url[len(_HUB) :].split("/", 2)
    return f"{org}/{repo}", filename


def _verified(source: Source, path: Path, cache_file: Path) -> Path:
    """`path` once its sha256 is the published and recorded one (recorded now if none is)."""
    sha256 = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
    digest = sha256.hexdigest()
    _check_hash(source, digest, str(path), cache_file, f"delete {path} to download it again")
    try:
        _record(cache_file, digest)
    except OSError:
        pass  # a read-only cache: nothing recorded, the published hash (if any) was checked
    return path


def _check_hash(source: Source, digest: str, where: str, cache_file: Path, remedy: str) -> None:
    if source.sha256 and not digest.startswith(source.sha256):
        raise IntegrityError(
            f"{where} has sha256 {digest}, but {source.name} is published with sha256 "
            f"{source.sha256}{'...' if len(source.sha256) < 64 else ''}; {remedy}"
        )
    record = _record_path(cache_file)
    if record.is_file() and (recorded := record.read_text().split()[0]) != digest:
        raise IntegrityError(
            f"{where} has sha256 {digest}, but {recorded} was recorded in {record} when "
            f"{source.name} was first downloaded: the file changed; {remedy}, and delete the "
            "record if the new file is to be trusted"
        )


def _record_path(cache_file: Path) -> Path:
    return cache_file.with_name(f"{cache_file.name}.sha256")


def _record(cache_file: Path, digest: str) -> None:
    """Writes the `sha256sum`-style record beside `cache_file` unless it exists (atomic)."""
    record = _record_path(cache_file)
    if record.is_file():
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    part = record.with_name(f".{record.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        part.write_text(f"{digest}  {cache_file.name}\n")
        os.replace(part, record)
    finally:
        part.unlink(missing_ok=True)


def _innermost(error: BaseException) -> str:
    """The message of the innermost of nested exceptions (requests wraps urllib3's)."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return error.args[0] if error.args and isinstance(error.args[0], str) else str(error)


def _oneline(error: BaseException | str) -> str:
    return " ".join(str(error).split())[:300]
