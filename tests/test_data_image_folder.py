"""Image folders: every format TF decodes loads, an unreadable file fails or is skipped by name."""

import io
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image
from shared_data import shared_data

from jtransfer import data

PP = "decode|resize(8)|value_range(0, 1)"


def config(root, on_bad_image: str = "fail") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": str(root),
            "train_split": "train",
            "eval_split": "val",
            "on_bad_image": on_bad_image,
        }
    )


def encoded(fmt: str, mode: str = "RGB", size=(12, 9)) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    files = {
        "train/ants/a.jpg": encoded("JPEG"),
        "train/ants/b.png": encoded("PNG", mode="L"),
        "train/ants/broken.jpg": encoded("JPEG")[:200],  # truncated
        "train/bees/c.jpeg": encoded("JPEG"),
        "train/bees/d.gif": encoded("GIF"),
        "train/bees/e.bmp": encoded("BMP"),
        "val/bees/f.png": encoded("PNG"),
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    return tmp_path


def test_bad_image_fails_naming_the_file(folder):
    with pytest.raises(ValueError, match="broken.jpg"):
        data.build_source(config(folder))


def test_bad_image_skipped_with_a_warning_naming_it(folder):
    with pytest.warns(UserWarning, match="broken.jpg"):
        source = data.build_source(config(folder, on_bad_image="skip"))
    assert source.class_names == ["ants", "bees"]
    assert (source.num_examples("train"), source.num_examples("val")) == (5, 1)

    [batch] = data.eval_batches(source, "train", PP, 6, process_index=0, process_count=1)
    assert batch["image"].shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(batch["mask"], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(batch["label"][:5], [0, 0, 1, 1, 1])  # a, b | c, d, e
    gray = batch["image"][1]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_val_class_unknown_to_train_is_an_error(folder):
    (folder / "train" / "ants" / "broken.jpg").unlink()
    (folder / "val" / "wasps").mkdir()
    with pytest.raises(ValueError, match="wasps"):
        data.build_source(config(folder))


def test_hymenoptera_loads_every_file():
    source = data.build_source(config(shared_data("hymenoptera")))
    assert source.class_names == ["ants", "bees"]
    # 243 .jpg + formica.jpeg + imageNotFound.gif; the README's table counts 124 ants, 121 bees.
    assert (source.num_examples("train"), source.num_examples("val")) == (245, 153)

    batches = data.eval_batches(source, "train", PP, 128, process_index=0, process_count=1)
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(np.bincount(labels), [124, 121])


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("true", pytest.fail.Exception), ("", pytest.skip.Exception), ("1", pytest.skip.Exception)],
)
def test_missing_shared_data_skips_and_fails_under_ci(monkeypatch, tmp_path, ci, outcome):
    monkeypatch.setattr("shared_data.SHARED_DATA", tmp_path)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=f"data set 'hymenoptera' missing: .*{tmp_path}"):
        shared_data("hymenoptera")


def test_one_class_is_refused(folder):
    (folder / "train" / "ants" / "broken.jpg").unlink()
    for image in (folder / "train" / "bees").iterdir():
        image.unlink()
    (folder / "train" / "bees").rmdir()
    with pytest.raises(data.DataError, match=r"has 1 class\(es\) \['ants'\]; a classifier needs"):
        data.build_source(config(folder))


def test_class_without_training_images_is_refused_by_name(folder):
    (folder / "train" / "ants" / "broken.jpg").unlink()
    (folder / "train" / "wasps").mkdir()  # would silently become a third output of the head
    with pytest.raises(data.DataError, match=r"classes \['wasps'\] have no training images"):
        data.build_source(config(folder))


def test_empty_eval_split_fails_the_startup_check(folder):
    (folder / "val" / "bees" / "f.png").unlink()
    with pytest.warns(UserWarning, match="broken.jpg"):
        source = data.build_source(config(folder, on_bad_image="skip"))
    source.check_split("train")
    with pytest.raises(
        data.DataError,
        match=r"split 'val' of image folder .* no examples; its splits: \['train', 'val'\]",
    ):
        source.check_split("val")
    with pytest.raises(data.DataError, match=r"split 'test' was not loaded .* \['train', 'val'\]"):
        source.check_split("test")
