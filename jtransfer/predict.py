"""Top-k labels of image files, from a fine-tuned run or from a model's ImageNet weights alone.

    python -m jtransfer.predict --workdir=DIR [--step=N] [--top_k=5] IMAGE...
    python -m jtransfer.predict --model=efficientnet_lite0 [--top_k=5] IMAGE...

Both ways end in one `Predictor`: a model, its variables, the names of its outputs and the
preprocessing string its inputs go through. They differ only in where those four come from.

From a run (`--workdir`), everything is taken from its workdir: `config.json` (written by
train.py) rebuilds the model with its task (`tasks.build`) and names the data source, whose class
names label the head's outputs (a source is cheap to open: TFDS reads its metadata, an image
folder lists its files); each image goes through the run's `pp_eval`, the preprocessing its
evaluation used; the weights are the checkpoint's `params` and `batch_stats`, read by
`pretrained`'s orbax reader exactly as a fine-tune from the run reads them. Nothing is saved
beside the checkpoints for this, so any finished or interrupted run predicts.

From pretrained weights (`--model`), what the network itself sees before any fine-tuning: the
registered `MODEL/imagenet` source is loaded whole, its 1000-way ImageNet head included, into
`models.build_model(MODEL, 1000)`; the outputs are named by `pretrained/imagenet_classes.json`
(WordNet lemmas in class-index order, written by `scripts/make_imagenet_classes.py` from timm's
data files); and the preprocessing is the weights' reference evaluation, derived from the
source's native resolution and input range: the central `CROP_FRACTION` of the shorter side at
that resolution, i.e. `resize_small(round(res / 0.875))|central_crop(res)|value_range(lo, hi)`.
That is the crop of EfficientNet's reference (tensorflow/tpu `preprocessing.py`, crop padding
`round(res / 7)`: 256 -> 224, 274 -> 240, 297 -> 260) and torchvision's 256 -> 224. The
reference crops before resizing, bicubic; here the resize (bilinear, antialiased) comes first,
as everywhere in jtransfer, so the two agree to resampling differences, not bit for bit.

Bad input (an unknown model, an unreadable image, a directory that is not a run) is a
`PredictError` naming it; the command line prints that one line and exits with status 2.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from jtransfer import console, data, errors, models, pretrained, run_args, tasks

CROP_FRACTION = 0.875  # reference ImageNet evaluation: the central 87.5% of the shorter side
IMAGENET_CLASSES = "imagenet_classes.json"  # package data of jtransfer.pretrained


class PredictError(errors.JTransferError):
    """An image, model name or workdir that predict cannot use."""


def imagenet_models() -> list[str]:
    """The models with ImageNet weights registered in `pretrained.SOURCES` (`--model` values)."""
    return sorted(s.model for key, s in pretrained.SOURCES.items() if key == f"{s.model}/imagenet")


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-index order (967 is 'espresso')."""
    text = importlib.resources.files("jtransfer.pretrained").joinpath(IMAGENET_CLASSES).read_text()
    return json.loads(text)["names"]


def reference_pp(source: pretrained.Source) -> str:
    """The evaluation preprocessing the weights of `source` were measured with."""
    res, (lo, hi) = source.resolution, source.input_range
    resize = round(res / CROP_FRACTION)
    return f"decode|resize_small({resize})|central_crop({res})|value_range({lo}, {hi})"


class Predictor:
    """A model, its weights, output names and eval preprocessing, ready to label images.

    Build one with `from_run(workdir)` or `from_pretrained(model)`.
    """

    def __init__(self, model: nn.Module, variables: dict, class_names: Sequence[str], pp: str):
        self.class_names = list(class_names)
        self.pp = pp
        self._logits = jax.jit(lambda x: model.apply(variables, x, train=False))
        self._preprocess: Callable = data.parse_pp(pp)

    @classmethod
    def from_run(cls, workdir: str | Path, step: int | None = None) -> Predictor:
        """The fine-tuned model of the run in `workdir` at checkpoint `step` (None: latest)."""
        workdir = Path(workdir)
        if not (workdir / "config.json").is_file():
            raise PredictError(f"{workdir} is not a run's workdir: it has no config.json")
        with open(workdir / "config.json") as f:
            config = ml_collections.ConfigDict(json.load(f))
        class_names = data.build_source(config.data).class_names
        model = tasks.build(config, class_names).build_model()
        checkpoint = run_args.checkpoint(workdir, step)
        variables = pretrained.load(str(checkpoint))
        classes = variables["params"]["head"]["dense"]["bias"].shape[0]
        if classes != len(class_names):
            raise PredictError(
                f"{checkpoint} has a {classes}-way head but its data source has "
                f"{len(class_names)} classes {class_names}"
            )
        return cls(model, variables, class_names, config.pp_eval)

    @classmethod
    def from_pretrained(cls, model: str) -> Predictor:
        """`model` with its ImageNet weights, head included: what it sees before fine-tuning."""
        if model not in imagenet_models():
            raise PredictError(
                f"no ImageNet weights for model {model!r}; valid: {imagenet_models()}"
            )
        source = pretrained.SOURCES[f"{model}/imagenet"]
        try:
            variables = pretrained.load(f"{model}/imagenet", model=model)
        except ImportError as e:  # the package that ships the weights; the message names it
            raise PredictError(str(e)) from e
        network = models.build_model(model, source.num_classes)
        return cls(network, variables, imagenet_class_names(), reference_pp(source))

    def image(self, path: str | Path) -> np.ndarray:
        """The preprocessed float32 (H, W, C) image at `path`, as evaluation would see it."""
        try:
            features = {"image": tf.io.read_file(str(path)), "_seed": tf.zeros(2, tf.int64)}
            return tf.cast(self._preprocess(features)["image"], tf.float32).numpy()
        except tf.errors.OpError as e:
            raise PredictError(f"cannot read image {path}: {_reason(e)}") from e

    def probabilities(self, path: str | Path) -> np.ndarray:
        """The softmax over the model's classes for the image at `path`."""
        logits = self._logits(self.image(path)[None])
        return np.asarray(jax.nn.softmax(logits, axis=-1))[0]

    def top_k(self, path: str | Path, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most probable (class name, probability), most probable first."""
        probs = self.probabilities(path)
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]


def _reason(error: tf.errors.OpError) -> str:
    """TF's message on one line, without the eager op's `{{function_node ...}}` and `[Op:...]`."""
    message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message, flags=re.DOTALL)
    return " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> None:
    parser = run_args.parser(
        "python -m jtransfer.predict",
        __doc__,
        model_help=f"use this model's ImageNet weights instead; one of {imagenet_models()}",
    )
    parser.add_argument("--top_k", type=int, default=5, help="labels to print per image")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    args = parser.parse_args(argv)
    console.quiet_libraries()
    if args.model is not None and args.step is not None:
        parser.error("--step picks a checkpoint of --workdir; --model has none")
    try:
        if args.model is not None:
            predictor = Predictor.from_pretrained(args.model)
        else:
            predictor = Predictor.from_run(args.workdir, args.step)
        for path in args.images:
            top = predictor.top_k(path, args.top_k)
            print(path)
            for name, prob in top:
                print(f"  {prob:.4f}  {name}")
    except errors.JTransferError as e:
        parser.exit(errors.USAGE_EXIT_CODE, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
