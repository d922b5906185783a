"""Write tests/golden/vit_s16.npz: timm ViT-S/16 logits under seeded random weights, 3 layouts.

    pip install -e '.[reference]' && python scripts/make_golden_vit.py

Nothing is downloaded: timm's `vit_small_patch16_224` is built with `pretrained=False` and given
`tests/seeded.py:seeded_state_dict(shapes, seed)` weights, as in make_golden_timm.py (whose
import also makes timm importable here). Three checkpoint layouts, key tables from
tests/vit_layouts.py (the timm one checked against timm), each with its own seeded weights:

* `timm`: the timm state dict, loaded with `load_state_dict`; logits at 224 px, and at 384 px
  from the 384 px model given the position embedding resampled by timm's own
  `resample_abs_pos_embed` (bicubic, antialias: what `checkpoint_filter_fn` does on load);
* `vit_jax`: a google-research/vision_transformer `.npz` (global module numbering, class-token
  slot in `Transformer/posembed_input`), read by timm's own npz loader `_load_weights`;
* `big_vision`: a big_vision train checkpoint (`params/` prefix, scanned encoder, top-level
  `pos_embedding` without a class-token slot), read by `_load_weights` into a timm model with
  `no_embed_class=True`, the matching architecture.

The npz layouts go through timm's loader, not through code of ours, so they check jtransfer's
key map against an independent reading of the format. The fixture stores, per layout, the key
-> shape table, the weight seed and the logits, plus the input seeds and shapes: about 35 KB.
Every set of logits passes `seeded.assert_inputs_matter` (its two images apart, and RGB apart
from BGR) before it is stored.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from make_golden_timm import ROOT, forward  # defines the operators timm needs; sets sys.path
from seeded import assert_inputs_matter, seeded_images, seeded_state_dict
from timm import create_model
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import _load_weights
from vit_layouts import npz_shapes, timm_shapes

from jtransfer.models.vit_spec import variant

OUT = ROOT / "tests" / "golden" / "vit_s16.npz"
TIMM_NAME = "vit_small_patch16_224"
VARIANT = variant("vit_s16")
INPUTS = {224: (1, (2, 224, 224, 3)), 384: (2, (2, 384, 384, 3))}  # resolution: (seed, shape)
WEIGHT_SEEDS = {"timm": 0, "vit_jax": 1, "big_vision": 2}


def _logits(model: torch.nn.Module, case: str, resolution: int) -> np.ndarray:
    seed, shape = INPUTS[resolution]
    return assert_inputs_matter(f"{case} {resolution}", forward(model), seeded_images(seed, shape))


def _timm_case(fixture: dict) -> None:
    model = create_model(TIMM_NAME, pretrained=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if shapes != timm_shapes(VARIANT):
        raise AssertionError("tests/vit_layouts.py:timm_shapes differs from timm's state dict")
    weights = {
        k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes, WEIGHT_SEEDS["timm"]).items()
    }
    model.load_state_dict(weights)
    fixture["timm/logits_224"] = _logits(model, "timm", 224)

    grid = 384 // VARIANT.patch
    weights["pos_embed"] = resample_abs_pos_embed(weights["pos_embed"], [grid, grid])
    model_384 = create_model(TIMM_NAME, pretrained=False, img_size=384)
    model_384.load_state_dict(weights)
    fixture["timm/logits_384"] = _logits(model_384, "timm", 384)
    _store_table(fixture, "timm", shapes)


def _npz_case(fixture: dict, case: str) -> None:
    big_vision = case == "big_vision"
    shapes = npz_shapes(VARIANT, case)
    model = create_model(TIMM_NAME, pretrained=False, no_embed_class=big_vision)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{case}.npz"
        np.savez(path, **seeded_state_dict(shapes, WEIGHT_SEEDS[case]))
        _load_weights(model, str(path))
    fixture[f"{case}/logits_224"] = _logits(model, case, 224)
    _store_table(fixture, case, shapes)


def _store_table(fixture: dict, case: str, shapes: dict[str, tuple[int, ...]]) -> None:
    fixture[f"{case}/keys"] = np.array(list(shapes))
    fixture[f"{case}/shapes"] = np.array([",".join(map(str, s)) for s in shapes.values()])
    fixture[f"{case}/weight_seed"] = np.array(WEIGHT_SEEDS[case])
    logits = fixture[f"{case}/logits_224"]
    print(f"{case}: logits std {logits.std():.3f}, max |logit| {np.abs(logits).max():.3f}")


def main() -> None:
    fixture = {}
    _timm_case(fixture)
    for case in ("vit_jax", "big_vision"):
        _npz_case(fixture, case)
    for resolution, (seed, shape) in INPUTS.items():
        fixture[f"input_seed_{resolution}"] = np.array(seed)
        fixture[f"input_shape_{resolution}"] = np.array(shape)
    np.savez_compressed(OUT, **fixture)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
