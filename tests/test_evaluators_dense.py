"""The dense evaluators count every pixel and every image once at any device count.

A mask folder of 37 images (a multiple of no global batch used here) with ignored pixels is
evaluated on meshes of 1, 3 and 8 devices (slices of one subprocess's 8 fake CPU devices, this
file run as a script): the segmentation evaluator's confusion matrix equals the one counted on
the host from all 37 predictions, ignore label left out; the detection evaluator's COCO numbers
are the same at every device count.
"""

import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from cli import ROOT, env
from PIL import Image

from jtransfer import base_config, data, evaluators, sharding, tasks

N, H, W, CLASSES = 37, 8, 12, 3
CASES = ((1, 8), (3, 6), (8, 16))  # (devices, global eval batch)


class _PixelClassifier(nn.Module):
    """Logits from a 1x1 convolution of the pixels: predictions that differ pixel by pixel."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        return nn.Conv(CLASSES, (1, 1))(x)


def _mask_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for kind in ("images", "masks"):
        (root / kind / "test").mkdir(parents=True)
    for i in range(N):
        image = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
        mask = rng.integers(0, CLASSES, (H, W)).astype(np.uint8)
        mask[rng.random((H, W)) < 0.2] = 255  # ignored pixels
        Image.fromarray(image).save(root / "images" / "test" / f"{i:02}.png")
        Image.fromarray(mask).save(root / "masks" / "test" / f"{i:02}.png")


def _evaluate_all(root: str) -> dict:
    config = base_config.get_config()
    config.task.name = "segmentation"
    config.data.name, config.data.format = root, "mask_folder"
    config.data.train_split = config.data.eval_split = "test"
    config.data.classes = tuple("abc")
    config.pp_eval = "decode|value_range(-1, 1)"
    source = data.build_source(config.data)
    task = tasks.build(config, source.class_names)
    model = _PixelClassifier()
    variables = {"params": model.init(jax.random.key(0), jnp.zeros((1, H, W, 3)))["params"]}
    variables["batch_stats"] = {}

    batch = next(iter(data.eval_batches(source, "test", config.pp_eval, N, process_count=1)))
    predicted = np.asarray(jnp.argmax(model.apply(variables, batch["image"]), -1))
    labels = batch["segmentation"]
    counted = labels != 255
    reference = np.zeros((CLASSES, CLASSES), np.int64)
    np.add.at(reference, (labels[counted], predicted[counted]), 1)
    out = {"reference": reference.tolist()}
    for devices, global_batch in CASES:
        mesh = sharding.make_mesh(devices=jax.devices()[:devices])
        config.eval_batch_size = global_batch
        context = evaluators.Context(task, model, source, mesh, config)
        result = evaluators.EVALUATORS["segmentation"]({}, context).run(
            jax.device_put(variables, sharding.replicated(mesh))
        )
        out[devices] = result
    return out


def test_every_pixel_counts_once_at_1_3_and_8_devices(tmp_path):
    _mask_folder(tmp_path)
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        cwd=ROOT,
        env=env(8),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    reference = np.array(results.pop("reference"))
    assert reference.sum() > 0.7 * N * H * W  # ~20% ignored
    tp = np.diag(reference)
    union = reference.sum(0) + reference.sum(1) - tp
    expected = {f"iou/{c}": float(tp[i] / union[i]) for i, c in enumerate("abc")}
    expected["pixel_accuracy"] = float(tp.sum() / reference.sum())
    assert sorted(results) == ["1", "3", "8"]
    for devices, result in results.items():
        assert result["count"] == N, devices
        for key, value in expected.items():
            assert result[key] == value, (devices, key)


if __name__ == "__main__":
    print(json.dumps(_evaluate_all(sys.argv[1])))
