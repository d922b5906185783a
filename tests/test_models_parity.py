"""EfficientNet-Lite0 with the ImageNet weights against the torch reference, without torch.

The fixture comes from scripts/make_golden_efficientnet_lite.py; the images are regenerated here
from its seeds (`seeded.seeded_images`). The classification checks use skimage's sample photos
with the preprocessing these weights were trained with (shorter side to 256, centre crop 224,
(x - 127.5) / 127.5).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from seeded import TOLERANCE, seeded_images

from jtransfer import pretrained
from jtransfer.models import build_model

GOLDEN = Path(__file__).parent / "golden" / "efficientnet_lite0.npz"


@pytest.fixture(scope="module")
def variables():
    return pretrained.load("efficientnet_lite0/imagenet")


@pytest.fixture(scope="module")
def classify(variables):
    model = build_model("efficientnet_lite0", 1000)
    return jax.jit(lambda x: model.apply(variables, x, train=False))


def test_logits_match_reference(classify):
    golden = np.load(GOLDEN)
    for seed, batch, resolution in golden["cases"]:
        images = seeded_images(int(seed), (int(batch), int(resolution), int(resolution), 3))
        logits = classify(jnp.asarray(images))
        np.testing.assert_allclose(logits, golden[f"logits_{seed}"], rtol=0, atol=TOLERANCE)


def _preprocess(image: np.ndarray) -> np.ndarray:
    im = Image.fromarray(image)
    scale = 256 / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
    left, top = (im.width - 224) // 2, (im.height - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    return ((np.asarray(im, np.float32) - 127.5) / 127.5)[None]


def test_classifies_sample_photos(classify):
    skimage_data = pytest.importorskip("skimage.data")
    espresso = int(jnp.argmax(classify(_preprocess(skimage_data.coffee()))))
    cat = int(jnp.argmax(classify(_preprocess(skimage_data.chelsea()))))
    assert espresso == 967
    assert 281 <= cat <= 285  # the domestic cats
