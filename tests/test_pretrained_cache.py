"""The download cache (jtransfer.pretrained.cache) over loopback: what is cached, and what never is.

Registered sources are pointed (by monkeypatching their URLs) at an HTTP server on 127.0.0.1
that the test starts, at TensorFlow's in-memory `ram://` file system (the gs:// code path), or
at a Hugging Face cache the test lays out; the files are tiny `.npz` archives, since what is
checked here is the cache, not the key maps (test_pretrained_download loads real layouts).
Every failure (a dropped connection, another file the second time, a 404, the wrong format, a
full disk, a read-only cache, offline) must be one error line and leave no weights file and no
temporary file in the cache.
"""

import collections
import dataclasses
import errno
import hashlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import tensorflow as tf

from jtransfer import pretrained
from jtransfer.errors import JTransferError
from jtransfer.pretrained import SOURCES, cache, listing

NPZ = "vit_s16/augreg_in21k"  # a registered .npz source the tests point elsewhere
ROOT = Path(__file__).parent.parent


class Server:
    """A threaded HTTP server on 127.0.0.1 serving `files` ({URL path: bytes}).

    Each response sends its Content-Length and the first half of the body, then: for a path in
    `drop`, closes the connection (an interrupted download); otherwise waits for `hold` (if
    set) and sends the rest. `hits` counts GET requests per path; `halfway` is set once a
    response has sent its first half.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: set[str] = set()
        self.hits: collections.Counter = collections.Counter()
        self.halfway, self.hold = threading.Event(), None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "File not found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                server.halfway.set()
                if self.path in server.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if server.hold is not None:
                    server.hold.wait(60)
                self.wfile.write(data[len(data) // 2 :])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    if s.hold is not None:
        s.hold.set()
    s.stop()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("JTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JTRANSFER_OFFLINE", raising=False)
    return tmp_path / "cache"


def point(monkeypatch, name: str, *urls: str, **changes) -> pretrained.Source:
    """The registered source `name`, published at `urls` instead (and `changes` applied)."""
    source = dataclasses.replace(SOURCES[name], urls=urls, **changes)
    monkeypatch.setitem(SOURCES, name, source)
    return source


def url_path(name: str) -> str:
    """The path part of `name`'s first published URL: the loopback server serves it there."""
    return "/" + SOURCES[name].urls[0].split("://", 1)[1].split("/", 1)[1]


def npz_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    np.savez(buffer, weight=rng.standard_normal((64, 1024), np.float32), bias=np.arange(3.0))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_in(directory: Path) -> list[str]:
    """Everything in the cache but lock files, relative paths sorted."""
    if not directory.exists():
        return []
    found = (p for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    return sorted(str(p.relative_to(directory)) for p in found)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_download_is_verified_cached_and_its_hash_recorded(server, cache_dir, monkeypatch):
    data = npz_bytes()
    source = point(monkeypatch, NPZ, server.serve(url_path(NPZ), data))
    path = source.path()
    assert path == cache_dir / "vit_s16" / Path(url_path(NPZ)).name
    assert path.read_bytes() == data
    record = path.with_name(path.name + ".sha256")
    assert record.read_text() == f"{sha256(data)}  {path.name}\n"
    assert files_in(cache_dir) == sorted(str(p.relative_to(cache_dir)) for p in (path, record))
    server.stop()
    assert source.path() == path  # read from the cache, no server
    assert server.hits[url_path(NPZ)] == 1
    assert cache.cached(source) == path


def test_published_hash_prefix_is_checked(server, cache_dir, monkeypatch):
    data = npz_bytes()
    url = server.serve(url_path(NPZ), data)
    source = point(monkeypatch, NPZ, url, sha256="0badc0de")
    with pytest.raises(pretrained.IntegrityError) as e:
        source.path()
    assert one_line(e) == (
        f"{url} has sha256 {sha256(data)}, but {NPZ} is published with sha256 0badc0de...; "
        "nothing was cached"
    )
    assert files_in(cache_dir) == []
    source = point(monkeypatch, NPZ, url, sha256=sha256(data)[:8])
    assert source.path().read_bytes() == data


def test_interrupted_download_caches_nothing_and_a_retry_succeeds(server, cache_dir, monkeypatch):
    data = npz_bytes()
    url = server.serve(url_path(NPZ), data)
    server.drop.add(url_path(NPZ))
    source = point(monkeypatch, NPZ, url)
    with pytest.raises(pretrained.DownloadError) as e:
        source.path()
    message = one_line(e)
    assert message.startswith(f"could not download {NPZ} ({url}: ")
    half = len(data) // 2
    assert f"Connection broken: IncompleteRead({half} bytes read, {half} more expected)" in message
    assert message.endswith(f"place the file at {cache.cache_path(source)}")
    assert files_in(cache_dir) == []
    server.drop.clear()
    assert source.path().read_bytes() == data


def test_a_different_file_the_second_time_is_refused(server, cache_dir, monkeypatch):
    first, second = npz_bytes(0), npz_bytes(1)
    source = point(monkeypatch, NPZ, server.serve(url_path(NPZ), first))
    path = source.path()
    path.unlink()  # evicted; the record stays
    server.files[url_path(NPZ)] = second
    with pytest.raises(pretrained.IntegrityError) as e:
        source.path()
    record = path.with_name(path.name + ".sha256")
    assert one_line(e).startswith(
        f"{source.urls[0]} has sha256 {sha256(second)}, but {sha256(first)} was recorded in "
        f"{record} when {NPZ} was first downloaded: the file changed; nothing was cached"
    )
    assert files_in(cache_dir) == [str(record.relative_to(cache_dir))]


def test_a_cached_file_that_changed_is_refused_on_read(server, cache_dir, monkeypatch):
    data = npz_bytes()
    source = point(monkeypatch, NPZ, server.serve(url_path(NPZ), data))
    path = source.path()
    path.write_bytes(npz_bytes(1))
    with pytest.raises(pretrained.IntegrityError) as e:
        pretrained.load(NPZ)
    assert one_line(e).startswith(
        f"{path} has sha256 {sha256(npz_bytes(1))}, but {sha256(data)} was recorded"
    )
    assert f"delete {path} to download it again" in str(e.value)


def test_404_is_one_error_naming_where_to_put_the_file(server, cache_dir, monkeypatch):
    url = server.url("/elsewhere.npz")
    source = point(monkeypatch, NPZ, url)
    with pytest.raises(pretrained.DownloadError) as e:
        source.path()
    message = one_line(e)
    assert f"{url}: 404 Client Error: File not found" in message
    assert message.endswith(
        f"download {url} elsewhere and place the file at {cache.cache_path(source)}"
    )
    assert files_in(cache_dir) == []


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        (NPZ, b"<html><body>Sign in to continue</body></html>", "is not a readable .npz archive"),
        ("resnet50/tv_in1k", npz_bytes(), "a zip archive but not a PyTorch file"),
    ],
)
def test_a_file_of_another_format_is_not_cached(server, cache_dir, monkeypatch, name, body, reason):
    source = point(monkeypatch, name, server.serve(url_path(name), body), sha256="")
    with pytest.raises(pretrained.DownloadError) as e:
        source.path()
    message = one_line(e)
    assert f"not a {source.format} checkpoint (the file" in message
    assert reason in message
    assert files_in(cache_dir) == []


def test_offline_names_the_source_its_url_and_the_cache_path(server, cache_dir, monkeypatch):
    data = npz_bytes()
    url = server.serve(url_path(NPZ), data)
    source = point(monkeypatch, NPZ, url, "gs://mirror/x.npz")
    monkeypatch.setenv("JTRANSFER_OFFLINE", "1")
    with pytest.raises(pretrained.DownloadError) as e:
        pretrained.load(NPZ)
    assert one_line(e) == (
        f"{NPZ} is not in the cache and JTRANSFER_OFFLINE is set: download {url} or "
        f"gs://mirror/x.npz elsewhere and place the file at {cache.cache_path(source)}"
    )
    assert server.hits[url_path(NPZ)] == 0
    cache.cache_path(source).parent.mkdir(parents=True)
    cache.cache_path(source).write_bytes(data)  # placed by hand
    assert source.path().read_bytes() == data
    assert server.hits[url_path(NPZ)] == 0


@pytest.fixture
def read_only(tmp_path):
    """Makes a directory read-only, for root too (the immutable attribute), and undoes it."""
    made = []

    def make(directory: Path) -> None:
        directory.chmod(0o555)
        made.append(directory)
        if os.access(directory, os.W_OK):  # root ignores the mode
            if (
                shutil.which("chattr") is None
                or subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode
            ):
                pytest.skip("cannot make a directory read-only for this user")

    yield make
    for directory in made:
        if shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
        directory.chmod(0o755)


def test_read_only_cache(server, cache_dir, monkeypatch, read_only):
    data = npz_bytes()
    source = point(monkeypatch, NPZ, server.serve(url_path(NPZ), data))
    cache_dir.mkdir()
    read_only(cache_dir)
    with pytest.raises(pretrained.DownloadError) as e:
        source.path()
    denied = "Permission denied" if os.getuid() else "Operation not permitted"  # mode, chattr
    assert one_line(e) == (
        f"cannot download {NPZ}: the cache directory {cache_dir / 'vit_s16'} is not writable "
        f"({denied}); set JTRANSFER_CACHE to a writable directory or place the file at "
        f"{cache.cache_path(source)} by hand"
    )
    assert files_in(cache_dir) == [] and server.hits[url_path(NPZ)] == 0


def test_a_read_only_cache_holding_the_file_is_read(server, cache_dir, monkeypatch, read_only):
    data = npz_bytes()
    source = point(monkeypatch, NPZ, server.serve(url_path(NPZ), data))
    path = source.path()
    read_only(path.parent)
    server.stop()
    assert source.path().read_bytes() == data


def test_disk_full_during_download(server, cache_dir, monkeypatch):
    data = npz_bytes()
    source = point(monkeypatch, NPZ, server.serve(url_path(NPZ), data))
    write = cache._HashingFile.write

    def fill_up(self, chunk):
        if self.size + len(chunk) > 100_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, chunk)

    monkeypatch.setattr(cache._HashingFile, "write", fill_up)
    with pytest.raises(pretrained.DownloadError) as e:
        source.path()
    assert one_line(e).startswith(
        f"cannot download {NPZ} to {cache.cache_path(source)}: No space left on device after "
    )
    assert str(e.value).endswith("free some space or set JTRANSFER_CACHE to another disk")
    assert files_in(cache_dir) == []


def test_gfile_urls_and_falling_back_to_the_next_address(server, cache_dir, monkeypatch):
    data = npz_bytes()
    ram = "ram://vit_models/augreg/" + Path(url_path(NPZ)).name  # gs:// goes the same way
    tf.io.gfile.makedirs("ram://vit_models/augreg")
    with tf.io.gfile.GFile(ram, "wb") as f:
        f.write(data)
    source = point(monkeypatch, NPZ, server.url("/gone.npz"), ram)
    assert source.path().read_bytes() == data
    assert server.hits["/gone.npz"] == 1
    with pytest.raises(pretrained.DownloadError) as e:
        point(monkeypatch, NPZ, "ram://nowhere/y.npz").path()
    assert one_line(e).startswith(f"could not download {NPZ} (ram://nowhere/y.npz: ")
    assert "NotFoundError" in str(e.value)


_FETCH = """
import dataclasses, hashlib, sys
from jtransfer.pretrained import SOURCES
source = dataclasses.replace(SOURCES[sys.argv[1]], urls=(sys.argv[2],))
print(hashlib.sha256(source.path().read_bytes()).hexdigest())
"""


def test_two_processes_download_once(server, cache_dir):
    data = npz_bytes()
    url = server.serve(url_path(NPZ), data)
    server.hold = threading.Event()  # the first response stops halfway until released
    env = {**os.environ, "JTRANSFER_CACHE": str(cache_dir)}
    cmd = [sys.executable, "-c", _FETCH, NPZ, url]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    first = subprocess.Popen(cmd, **pipes)
    assert server.halfway.wait(60), "the first process never started downloading"
    second = subprocess.Popen(cmd, **pipes)
    waiting = ""
    for line in second.stderr:  # the second process reports that it waits for the lock
        if line.startswith("waiting for another process to download"):
            waiting = line
            break
    server.hold.set()
    outputs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    path = cache_dir / "vit_s16" / Path(url_path(NPZ)).name
    assert waiting == f"waiting for another process to download {NPZ} to {path}\n"
    assert [out.strip() for out, _ in outputs] == [sha256(data)] * 2
    assert server.hits[url_path(NPZ)] == 1


HUB = "timm/vit_small_patch16_224.augreg_in21k_ft_in1k"


def hub_snapshot(hub_cache: Path, repo: str, filename: str, data: bytes) -> Path:
    """Lays `data` out as huggingface_hub's cache holds a downloaded file (main = commit)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hub_cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    path = repo_dir / "snapshots" / commit / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache in offline mode: no request can leave the machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def test_hub_file_from_the_huggingface_cache_offline(cache_dir, hub_cache):
    source = SOURCES[HUB]
    with pytest.raises(pretrained.DownloadError) as e:
        source.path()
    message = one_line(e)
    assert message.startswith(f"could not get {HUB} from the Hugging Face Hub (")
    assert message.endswith(
        f"run `huggingface-cli download {HUB} model.safetensors` with network, or place the "
        f"file at {cache_dir / 'vit_s16' / HUB / 'model.safetensors'}"
    )
    data = b"pretend safetensors"
    snapshot = hub_snapshot(hub_cache, HUB, "model.safetensors", data)
    assert source.path() == snapshot
    assert cache.cached(source) == snapshot
    record = cache_dir / "vit_s16" / HUB / "model.safetensors.sha256"
    assert record.read_text().split()[0] == sha256(data)
    snapshot.write_bytes(b"another file")
    with pytest.raises(pretrained.IntegrityError, match=f"{snapshot} has sha256 "):
        source.path()


def test_unknown_source_name_suggests_close_matches():
    with pytest.raises(JTransferError) as e:
        pretrained.load("vit_b16/imagenett")
    message = one_line(e)
    assert message.startswith(
        "'vit_b16/imagenett' is neither a pretrained source nor a file or run directory; "
        "did you mean vit_b16/imagenet"
    )
    assert all(name in message for name in SOURCES)


def test_list_shows_what_is_cached(server, cache_dir, monkeypatch):
    data = npz_bytes()
    point(monkeypatch, NPZ, server.serve(url_path(NPZ), data)).path()
    rows = {line.split()[0]: line.split() for line in listing.table().splitlines()}
    assert rows["name"] == [
        "name", "family", "format", "res", "classes", "normalisation", "size", "cached"
    ]  # fmt: skip
    assert rows[NPZ] == [NPZ, "vit", ".npz", "224", "21843", "[-1,", "1]", "0.3", "MiB", "yes"]
    assert rows["vit_b16/augreg_in21k"][-3:] == ["~391", "MiB", "no"]
    assert rows["resnet50/tv2_in1k"][:5] == ["resnet50/tv2_in1k", "resnet", ".pth", "224", "1000"]
    assert " ".join(rows["resnet50/tv2_in1k"][5:13]) == (
        "mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)"
    )
    assert rows["efficientnet_lite0/imagenet"][-1] == "pip"
    assert rows["vit_b16/imagenet"] == ["vit_b16/imagenet", "=", "vit_b16/augreg_in21k_ft_in1k"]


def test_list_command():
    done = subprocess.run(
        [sys.executable, "-m", "jtransfer.pretrained", "list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "name", "family", "format", "res", "classes", "normalisation", "size", "cached"
    ]  # fmt: skip
    assert len(lines) == 1 + len(SOURCES) + 1  # header, one line per name, the cache line


def test_a_gfile_url_is_read_in_place_and_not_cached(cache_dir):
    tf.io.gfile.makedirs("ram://bucket/weights")
    with tf.io.gfile.GFile("ram://bucket/weights/w.npz", "wb") as f:
        f.write(npz_bytes())
    arrays = pretrained.read("ram://bucket/weights/w.npz")
    expected = np.load(io.BytesIO(npz_bytes()))
    assert arrays.keys() == {"weight", "bias"}
    np.testing.assert_array_equal(arrays["weight"], expected["weight"])
    assert files_in(cache_dir) == []
    with pytest.raises(pretrained.DownloadError) as e:
        pretrained.read("ram://bucket/weights/missing.npz")
    assert one_line(e).startswith("cannot read ram://bucket/weights/missing.npz: NotFoundError")
    with tf.io.gfile.GFile("ram://bucket/weights/page.npz", "wb") as f:
        f.write(b"<html></html>")
    with pytest.raises(pretrained.NpzFileError) as e:
        pretrained.read("ram://bucket/weights/page.npz")
    assert one_line(e).startswith("ram://bucket/weights/page.npz is not a readable .npz archive")
    with pytest.raises(JTransferError, match=r"no reader for '\.ckpt' files \(ram://b/x\.ckpt\)"):
        pretrained.read("ram://b/x.ckpt")


def test_a_checkpoint_of_another_model_names_the_cached_file(server, cache_dir, monkeypatch):
    source = point(monkeypatch, NPZ, server.serve(url_path(NPZ), npz_bytes()))
    with pytest.raises(JTransferError) as e:
        pretrained.load(NPZ)
    first = str(e.value).splitlines()[0]
    assert first.startswith(
        f"{cache.cache_path(source)} ({NPZ}): big_vision checkpoint does not match vit_s16 ("
    )
