"""Write tests/golden/<model>.npz: logits of timm reference models under seeded random weights.

    pip install -e '.[reference]' && python scripts/make_golden_timm.py [model ...]

No pretrained weights are downloaded: each timm model is built with `pretrained=False` and loaded
with `tests/seeded.py:seeded_state_dict(shapes, seed)`, numpy-generated in state-dict key order.
A fixture stores that key -> shape table, the weight seed, the input seed and shape, and the
reference logits, once `seeded.assert_inputs_matter` has shown that they depend on the input;
the parity tests regenerate weights and images from them, write the weights to a `.safetensors`
file and load it through `jtransfer.pretrained.load`, so the fixture stays a few tens of KB. As
a check of the `.pth` path, the weights are also saved with `torch.save` and must load through
`jtransfer.pretrained.load` to the same tree.

To add a family, add a `MODELS` entry (fixture name -> timm name, jtransfer model name).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch

# PyPI's torchvision, which timm imports, cannot load its compiled operators beside this torch;
# timm never calls them, and defining the two that torchvision's Python side registers fake
# implementations for is enough to import it.
for _op in ("nms", "qnms"):
    torch.library.define(
        f"torchvision::{_op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
    )
import timm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from seeded import assert_inputs_matter, seeded_images, seeded_state_dict  # noqa: E402

from jtransfer import pretrained  # noqa: E402

# fixture name -> (timm model name, jtransfer model name)
MODELS = {
    "resnet50": ("resnet50", "resnet50"),
    "bit_r50x1": ("resnetv2_50x1_bit", "bit_r50x1"),
}
WEIGHT_SEED, INPUT_SEED, INPUT_SHAPE = 0, 1, (2, 224, 224, 3)


def _same_trees(a: dict, b: dict) -> bool:
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_trees(a[k], b[k]) for k in a)
        )
    return np.array_equal(a, b)


def forward(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """NHWC float32 images -> float32 logits of the torch (NCHW) `model` in eval mode."""

    def logits(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
            return model.eval()(x).numpy().astype(np.float32)

    return logits


def make(name: str) -> None:
    timm_name, model = MODELS[name]
    reference = timm.create_model(timm_name, pretrained=False).eval()
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    weights = seeded_state_dict(shapes, WEIGHT_SEED)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})

    with tempfile.TemporaryDirectory() as tmp:
        st, pth = Path(tmp) / f"{name}.safetensors", Path(tmp) / f"{name}.pth"
        safetensors.numpy.save_file(weights, st)
        torch.save(reference.state_dict(), pth)
        if not _same_trees(pretrained.load(str(st), model), pretrained.load(str(pth), model)):
            raise AssertionError(f"{name}: .pth and .safetensors load to different trees")

    logits = assert_inputs_matter(name, forward(reference), seeded_images(INPUT_SEED, INPUT_SHAPE))
    print(f"{name}: logits std {logits.std():.3f}, max |logit| {np.abs(logits).max():.3f}")

    out = ROOT / "tests" / "golden" / f"{name}.npz"
    np.savez_compressed(
        out,
        keys=np.array(list(shapes)),
        shapes=np.array([",".join(map(str, s)) for s in shapes.values()]),
        weight_seed=WEIGHT_SEED,
        input_seed=INPUT_SEED,
        input_shape=np.array(INPUT_SHAPE),
        logits=logits.astype(np.float32),
    )
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    for name in sys.argv[1:] or MODELS:
        make(name)
