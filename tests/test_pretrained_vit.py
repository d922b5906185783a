"""ViT checkpoints: parity with timm, the key maps' errors, and the loading speed of ViT-B.

The golden logits come from scripts/make_golden_vit.py (timm under seeded random weights, in the
timm, vision_transformer and big_vision layouts); the weights are regenerated here without
torch, written to a file and read back through `pretrained.load` and `graft`, so the readers,
the key maps and position-embedding resampling are all part of what the logits check.
Shape-only tests use zero-stride arrays: the key maps compare shapes before reading values.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from seeded import TOLERANCE, seeded_images, seeded_state_dict, shape_table
from vit_layouts import LAYOUTS, layout_shapes, npz_shapes, timm_shapes

from jtransfer import pretrained
from jtransfer.graft import graft
from jtransfer.models import build_model
from jtransfer.models.vit_spec import variant
from jtransfer.pretrained import cache
from jtransfer.pretrained.vit import convert

GOLDEN = np.load(Path(__file__).parent / "golden" / "vit_s16.npz")
S16 = variant("vit_s16")


def _fake(shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


def _write(weights: dict[str, np.ndarray], path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors.numpy.save_file(weights, path)
    else:
        np.savez(path, **weights)
    return path


def _graft_onto(model, loaded: dict, resolution: int, **kwargs) -> tuple[dict, dict]:
    """`loaded` grafted onto the variables shapes of `model` at `resolution` px."""
    dummy = jnp.zeros((1, resolution, resolution, 3))
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))
    return graft(init, loaded, **kwargs)


@pytest.fixture(scope="module")
def classify():
    model = build_model("vit_s16", 1000)
    return model, jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def _images(resolution: int) -> np.ndarray:
    shape = tuple(GOLDEN[f"input_shape_{resolution}"])
    return seeded_images(int(GOLDEN[f"input_seed_{resolution}"]), shape)


def _golden_checkpoint(case: str, path: Path) -> Path:
    shapes = shape_table(GOLDEN[f"{case}/keys"], GOLDEN[f"{case}/shapes"])
    return _write(seeded_state_dict(shapes, int(GOLDEN[f"{case}/weight_seed"])), path)


def test_timm_logits_match_reference_at_224_and_384(classify, tmp_path):
    model, apply = classify
    loaded = pretrained.load(
        str(_golden_checkpoint("timm", tmp_path / "s16.safetensors")), "vit_s16"
    )
    for resolution in (224, 384):
        variables, manifest = _graft_onto(model, loaded, resolution)
        resampled = ["params/backbone/embed/pos_embedding"] if resolution == 384 else []
        assert manifest["resampled"] == resampled
        logits = apply(variables, _images(resolution))
        expected = GOLDEN[f"timm/logits_{resolution}"]
        np.testing.assert_allclose(logits, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("case", ["vit_jax", "big_vision"])
def test_npz_logits_match_timm_reading_them(classify, tmp_path, case):
    model, apply = classify
    loaded = pretrained.load(str(_golden_checkpoint(case, tmp_path / f"{case}.npz")), "vit_s16")
    variables, manifest = _graft_onto(model, loaded, 224)
    assert not manifest["resampled"]
    logits = apply(variables, _images(224))
    np.testing.assert_allclose(logits, GOLDEN[f"{case}/logits_224"], rtol=0, atol=TOLERANCE)


def test_class_token_position_is_folded_into_the_token():
    weights = {k: np.full(s, 0.5, np.float32) for k, s in timm_shapes(variant("vit_ti16")).items()}
    weights["pos_embed"] = np.arange(197 * 192, dtype=np.float32).reshape(1, 197, 192)
    embed = convert(weights, "vit_ti16")["params"]["backbone"]["embed"]
    np.testing.assert_array_equal(embed["cls_token"], 0.5 + weights["pos_embed"][:, :1])
    np.testing.assert_array_equal(
        embed["pos_embedding"], weights["pos_embed"][:, 1:].reshape(1, 14, 14, 192)
    )


def test_ambiguous_class_token_slot_is_an_error():
    shapes = timm_shapes(S16) | {"pos_embed": (1, 256, 384)}  # 16 x 16, or 1 + 15 x 17?
    with pytest.raises(ValueError) as e:
        convert(_fake(shapes), "vit_s16")
    assert "pos_embed (1, 256, 384) is ambiguous" in str(e.value)
    assert "cls_token" in str(e.value)


def test_load_errors_name_the_file_and_the_keys(tmp_path):
    shapes = timm_shapes(S16) | {"pos_embed": (1, 256, 384)}
    path = _write(_fake(shapes), tmp_path / "ambiguous.npz")
    with pytest.raises(ValueError) as e:
        pretrained.load(str(path), "vit_s16")
    first, problem = str(e.value).splitlines()
    assert (
        first == f"{path}: timm checkpoint does not match vit_s16 (0 missing, 0 unexpected, "
        "0 wrong shape, 1 position embedding):"
    )
    assert problem.startswith("  position embedding: pos_embed (1, 256, 384) is ambiguous")


def test_non_square_grid_is_an_error():
    shapes = npz_shapes(S16, "big_vision") | {"params/pos_embedding": (1, 14 * 15, 384)}
    with pytest.raises(ValueError, match=r"pos_embedding \(1, 210, 384\).*square grid"):
        convert(_fake(shapes), "vit_s16")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_key_map_errors_name_every_offending_key(layout):
    shapes = layout_shapes(S16, layout)
    keys = list(shapes)
    # Outside the encoder: a scanned (big_vision) encoder's errors name the unstacked keys.
    gone, extra, bad = keys[1], "surplus/kernel", keys[-3]
    extra = f"params/{extra}" if layout == "big_vision" else extra  # train state is skipped
    del shapes[gone]
    shapes[extra] = (3,)
    shapes[bad] = (7, 7)
    with pytest.raises(ValueError) as e:
        convert(_fake(shapes), "vit_s16")
    message = str(e.value)
    assert f"missing: {gone.removeprefix('params/')}" in message
    assert f"unexpected: {extra.removeprefix('params/')}" in message
    assert f"wrong shape: {bad.removeprefix('params/')}: expected" in message
    assert "got (7, 7)" in message


def test_wrong_variant_lists_the_difference():
    with pytest.raises(ValueError) as e:
        convert(_fake(timm_shapes(variant("vit_ti16"))), "vit_s16")
    assert "wrong shape: blocks.11.mlp.fc2.weight: expected (384, 1536), got (192, 768)" in str(
        e.value
    )


def test_representation_layer_grafts_with_the_head_reinitialised():
    shapes = npz_shapes(variant("vit_ti16"), "vit_jax", num_classes=21843)
    shapes |= {
        "pre_logits/kernel": (192, 192),
        "pre_logits/bias": (192,),
        "head/kernel": (192, 21843),
    }
    loaded = convert(_fake(shapes), "vit_ti16")
    assert set(loaded["params"]["head"]) == {"pre_logits", "dense"}
    _, manifest = _graft_onto(build_model("vit_ti16", 10), loaded, 224, dont_load=["head/.*"])
    assert "params/head/pre_logits/kernel" in manifest["ignored"]


def test_truncated_or_foreign_npz_names_the_file(tmp_path):
    good = _write(_fake({"cls": (1, 1, 8)}), tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    foreign = tmp_path / "foreign.npz"
    foreign.write_bytes(b"not an archive")
    for path in (truncated, foreign):
        with pytest.raises(pretrained.NpzFileError, match=str(path)):
            pretrained.load(str(path), "vit_ti16")
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no reader for '\.bin' files \(.*weights\.bin\)"):
        pretrained.load(str(unknown), "vit_ti16")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["vit_b16/imagenet", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"]
)
def test_vit_b16_loads_from_the_cache_and_grafts_within_10s(tmp_path, monkeypatch, name):
    """The figure: a cached ViT-B/16 (AugReg `.npz`, timm `.safetensors`) by its registered
    name to grafted variables in <= 10 s, its sha256 checked against the recorded one."""
    monkeypatch.setenv("JTRANSFER_CACHE", str(tmp_path))
    monkeypatch.setenv("JTRANSFER_OFFLINE", "1")  # the file is in the cache: no download
    source = pretrained.SOURCES[name]
    b16 = variant("vit_b16")
    shapes = npz_shapes(b16, "vit_jax") if source.format == ".npz" else timm_shapes(b16)
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(s, np.float32) for k, s in shapes.items()}
    assert sum(w.size for w in weights.values()) > 86e6
    path = cache.cache_path(source)
    path.parent.mkdir(parents=True)
    _write(weights, path)
    del weights
    assert source.path() == path  # the first read records the file's hash
    assert path.with_name(path.name + ".sha256").is_file()
    model = build_model("vit_b16", 1000)
    dummy = jnp.zeros((1, 224, 224, 3))
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))

    start = time.perf_counter()
    variables, manifest = graft(init, pretrained.load(name, "vit_b16"))
    seconds = time.perf_counter() - start
    print(f"ViT-B/16 {source.format}: cache -> verified, grafted variables in {seconds:.2f} s")
    assert len(manifest["loaded"]) == 152 and not manifest["resampled"]
    assert seconds <= 10
