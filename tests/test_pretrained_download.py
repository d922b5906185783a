"""Registered names end to end, without the network: download, verify, cache, key map, graft.

Each test generates a checkpoint in one registered format and the layout its publisher uses (a
vision_transformer `.npz` of AugReg, a torchvision ResNet-50 `.pth`, a big_transfer BiT-M
`.npz`, a timm ViT `.safetensors`), serves it from an HTTP server on 127.0.0.1, points the real
registry entry at it, and loads the entry by name: through `cache` and the same reader, key map
and `graft` that the published file takes. The loaded tree must equal what the file gives when
read by path, graft onto the model, and load again from the cache with the server stopped. The
timm file also comes through huggingface_hub's own cache, in offline mode.

Weights are random (seeded) and class counts small, so that each file is ~90 MB rather than the
published size; the key maps read the class count from the checkpoint.
"""

import functools
import hashlib
import io
import struct
import zipfile
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf
import test_pretrained_cache
from seeded import seeded_state_dict, shape_table
from test_pretrained_cache import HUB, Server, hub_snapshot, point, url_path
from vit_layouts import npz_shapes, timm_shapes

from jtransfer import pretrained
from jtransfer.graft import graft
from jtransfer.models import build_model
from jtransfer.models.vit_spec import variant
from jtransfer.pretrained import bit, cache
from jtransfer.pretrained.torch_pickle import read_state_dict_bytes

hub_cache = test_pretrained_cache.hub_cache  # the fixture
GOLDEN = Path(__file__).parent / "golden"
CLASSES = 10


def _golden_shapes(name: str) -> dict[str, tuple[int, ...]]:
    golden = np.load(GOLDEN / f"{name}.npz")
    return shape_table(golden["keys"], golden["shapes"])


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


def _pth(state: dict[str, np.ndarray]) -> bytes:
    """`torch.save(state_dict)`'s zip layout, written without torch: a protocol-2 pickle of an
    OrderedDict of `_rebuild_tensor_v2` calls on persistent storage ids, one storage each."""

    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    def int_(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    def ints(*values: int) -> bytes:
        return b"(" + b"".join(map(int_, values)) + b"t"

    ordered_dict = b"ccollections\nOrderedDict\n(tR"
    items = b""
    for i, (key, array) in enumerate(state.items()):
        storage = b"ctorch\n" + _STORAGES[array.dtype].encode() + b"\n"
        pid = b"(" + text("storage") + storage + text(str(i)) + text("cpu") + int_(array.size)
        strides = [s // array.itemsize for s in array.strides]
        args = pid + b"tQ" + int_(0) + ints(*array.shape) + ints(*strides)
        rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"\x89" + ordered_dict + b"tR"
        items += text(key) + rebuild
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + ordered_dict + b"(" + items + b"u.")
        z.writestr("archive/byteorder", b"little")
        for i, array in enumerate(state.values()):
            z.writestr(f"archive/data/{i}", np.ascontiguousarray(array).tobytes())
    return buffer.getvalue()


def _big_transfer_npz(timm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A timm BiT state dict in big_transfer's `.npz` names and TF layouts: the correspondence
    timm's `resnetv2._load_weights` reads BiT-M-R50x1.npz with, walked the other way."""
    hwio = lambda w: w.transpose(2, 3, 1, 0)  # noqa: E731
    out = {
        "resnet/root_block/standardized_conv2d/kernel": hwio(timm["stem.conv.weight"]),
        "resnet/group_norm/gamma": timm["norm.weight"],
        "resnet/group_norm/beta": timm["norm.bias"],
        "resnet/head/conv2d/kernel": hwio(timm["head.fc.weight"]),
        "resnet/head/conv2d/bias": timm["head.fc.bias"],
    }
    blocks = {tuple(k.split(".")[1:4:2]) for k in timm if k.startswith("stages.")}
    for s, b in blocks:
        src, dst = f"stages.{s}.blocks.{b}.", f"resnet/block{int(s) + 1}/unit{int(b) + 1:02d}/"
        for i, unit in enumerate("abc", start=1):
            out[f"{dst}{unit}/standardized_conv2d/kernel"] = hwio(timm[f"{src}conv{i}.weight"])
            out[f"{dst}{unit}/group_norm/gamma"] = timm[f"{src}norm{i}.weight"]
            out[f"{dst}{unit}/group_norm/beta"] = timm[f"{src}norm{i}.bias"]
        if f"{src}downsample.conv.weight" in timm:
            out[f"{dst}a/proj/standardized_conv2d/kernel"] = hwio(
                timm[f"{src}downsample.conv.weight"]
            )
    return out


def _few_classes(shapes: dict, head: str, out_first: bool = True) -> dict:
    """`shapes` with the classifier `head` (`.weight`/`.bias` or `/kernel`/`/bias`) cut to
    `CLASSES` outputs."""
    out = dict(shapes)
    for key, shape in shapes.items():
        if key.startswith(head):
            axis = 0 if out_first or key.endswith("bias") else len(shape) - 1
            out[key] = tuple(CLASSES if i == axis else d for i, d in enumerate(shape))
    return out


def vit_npz() -> tuple[bytes, dict]:
    shapes = npz_shapes(variant("vit_s16"), "vit_jax", num_classes=CLASSES)  # AugReg's layout
    weights = seeded_state_dict(shapes, seed=1)
    return _npz(weights), weights


def resnet_pth() -> tuple[bytes, dict]:
    weights = seeded_state_dict(_few_classes(_golden_shapes("resnet50"), "fc."), seed=2)
    return _pth(weights), weights


def bit_npz() -> tuple[bytes, dict]:
    timm = seeded_state_dict(_few_classes(_golden_shapes("bit_r50x1"), "head.fc."), seed=3)
    return _npz(_big_transfer_npz(timm)), timm


def vit_safetensors() -> tuple[bytes, dict]:
    weights = seeded_state_dict(timm_shapes(variant("vit_s16"), num_classes=CLASSES), seed=4)
    return safetensors.numpy.save(weights), weights


CASES = {  # registered name -> checkpoint maker
    "vit_s16/augreg_in21k_ft_in1k": vit_npz,
    "resnet50/tv2_in1k": resnet_pth,
    "bit_r50x1/bit_m_in21k": bit_npz,
    "timm/vit_small_patch16_224.augreg_in21k_ft_in1k": vit_safetensors,
}


def _flat(tree: dict) -> dict[str, np.ndarray]:
    return flax.traverse_util.flatten_dict(tree, sep="/")


def _assert_same(a: dict, b: dict) -> None:
    a, b = _flat(a), _flat(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@functools.cache
def _abstract(model: str) -> dict:
    net = build_model(model, CLASSES)
    init = functools.partial(net.init, train=False)
    return jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))


def _grafts(model: str, loaded: dict) -> None:
    """`loaded` grafts onto `model` (a new head): every other leaf loaded, none resampled."""
    init = _abstract(model)
    variables, manifest = graft(init, loaded, dont_load=("head/.*",))
    assert not manifest["resampled"] and not manifest["ignored"]
    assert all("/head/" in path for path in manifest["reinitialized"])
    assert len(manifest["loaded"]) + len(manifest["reinitialized"]) == len(_flat(init))
    assert jax.tree.structure(variables) == jax.tree.structure(jax.tree.map(np.asarray, init))


@pytest.mark.parametrize("name", CASES)
def test_named_source_downloads_once_verifies_maps_grafts_and_reads_back(
    name, tmp_path, monkeypatch
):
    monkeypatch.setenv("JTRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("JTRANSFER_OFFLINE", raising=False)
    data, weights = CASES[name]()
    model, fmt = pretrained.SOURCES[name].model, pretrained.SOURCES[name].format
    local = tmp_path / f"local{fmt}"
    local.write_bytes(data)
    by_path = pretrained.load(str(local), model)

    server = Server()
    try:
        url = server.serve(url_path(name), data)
        # torchvision publishes a sha256 prefix; this file's own stands in for it.
        published = hashlib.sha256(data).hexdigest()[:8] if fmt == ".pth" else ""
        source = point(monkeypatch, name, url, sha256=published)
        loaded = pretrained.load(name, model=model)
    finally:
        server.stop()
    assert server.hits[url_path(name)] == 1
    assert cache.cache_path(source).read_bytes() == data
    _assert_same(loaded, by_path)
    if name.startswith("bit_"):  # the big_transfer names map as timm's do
        _assert_same(loaded, bit.from_timm(weights, model))
    _grafts(model, loaded)
    _assert_same(pretrained.load(name), loaded)  # from the cache; the server is gone


def test_hub_source_loads_from_the_huggingface_cache_offline(tmp_path, monkeypatch, hub_cache):
    monkeypatch.setenv("JTRANSFER_CACHE", str(tmp_path / "cache"))
    data, _ = vit_safetensors()
    hub_snapshot(hub_cache, HUB, "model.safetensors", data)
    local = tmp_path / "local.safetensors"
    local.write_bytes(data)
    loaded = pretrained.load(HUB, model="vit_s16")
    _assert_same(loaded, pretrained.load(str(local), "vit_s16"))
    _grafts("vit_s16", loaded)


def test_pth_writer_matches_torch_save_layout():
    """The test's own .pth writer against the reader's contract (guards the other tests)."""
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7, np.int64)}
    buffer = _pth(state)
    with zipfile.ZipFile(io.BytesIO(buffer)) as z:
        assert z.namelist() == [
            "archive/data.pkl", "archive/byteorder", "archive/data/0", "archive/data/1"
        ]  # fmt: skip
    read = read_state_dict_bytes(buffer, "mem")
    np.testing.assert_array_equal(read["w"], state["w"])
    assert read["n"] == 7


def test_gs_url_is_read_in_place(tmp_path, monkeypatch):
    """A gs:// weights file (here TensorFlow's in-memory ram://, the same tf.io.gfile path)
    loads by URL, whole or a subtree, without entering the cache."""
    monkeypatch.setenv("JTRANSFER_CACHE", str(tmp_path / "cache"))
    data, _ = vit_npz()
    local = tmp_path / "local.npz"
    local.write_bytes(data)
    url = "ram://vit_models/augreg/in_place.npz"
    with tf.io.gfile.GFile(url, "wb") as f:
        f.write(data)
    _assert_same(pretrained.load(url, "vit_s16"), pretrained.load(str(local), "vit_s16"))
    part = pretrained.load(f"{url}:backbone/block12", "vit_s16")
    assert list(part["params"]["backbone"]) == ["block12"]
    assert not (tmp_path / "cache").exists()
