"""Predictions on image files, from a fine-tuned run of any task or from ImageNet weights alone.

    python -m jtransfer.predict --workdir=DIR [--step=N] [--top_k=5] [--out=PNG_DIR] IMAGE...
    python -m jtransfer.predict --model=efficientnet_lite0 [--top_k=5] IMAGE...

Both ways end in one `Predictor`: a task (its model and the names of its classes), the variables
and the preprocessing string the inputs go through. They differ only in where those come from.
What is printed and drawn is the task's: the top-k classes, the share of the image each class
covers, or the detections (`Task.describe`); with `--out`, a PNG per image of the label, the
mask overlaid or the boxes drawn with class and score (`Task.draw`), on the image as the model
saw it (the eval preprocessing without its value scaling), named after the image.

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
source's native resolution and recorded normalisation: the central `CROP_FRACTION` of the
shorter side at that resolution, i.e. `resize_small(round(res / 0.875))|central_crop(res)` then
the source's `normalization.pp()` (`value_range(-1, 1)`, or ImageNet mean/std for torchvision).
That is the crop of EfficientNet's reference (tensorflow/tpu `preprocessing.py`, crop padding
`round(res / 7)`: 256 -> 224, 274 -> 240, 297 -> 260) and torchvision's 256 -> 224. The
reference crops before resizing, bicubic; here the resize (bilinear, antialiased) comes first,
as everywhere in jtransfer, so the two agree to resampling differences, not bit for bit.

Bad input (an unknown model, an unreadable image, a directory that is not a run, weights that do
not fit the model) is a `PredictError` naming it; the command line prints that one line and
exits with status 2.
"""

from __future__ import annotations

import importlib.resources
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from PIL import Image

from jtransfer import base_config, console, data, errors, files, graft, pretrained, run_args, tasks

CROP_FRACTION = 0.875  # reference ImageNet evaluation: the central 87.5% of the shorter side
IMAGENET_CLASSES = "imagenet_classes.json"  # package data of jtransfer.pretrained


def _png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


_BLANK_PNG = _png(64, 80)  # preprocessed once to learn the model's input shape


class PredictError(errors.JTransferError):
    """An image, model name or workdir that predict cannot use."""


def imagenet_models() -> list[str]:
    """The models whose registered default weights (`MODEL/imagenet` in `pretrained.SOURCES`)
    have an ImageNet-1k head (`--model` values)."""
    return sorted(
        s.model
        for key, s in pretrained.SOURCES.items()
        if key == f"{s.model}/imagenet" and s.num_classes == len(imagenet_class_names())
    )


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-index order (967 is 'espresso')."""
    text = importlib.resources.files("jtransfer.pretrained").joinpath(IMAGENET_CLASSES).read_text()
    return json.loads(text)["names"]


def reference_pp(source: pretrained.Source) -> str:
    """The evaluation preprocessing the weights of `source` were measured with."""
    res, resize = source.resolution, round(source.resolution / CROP_FRACTION)
    return f"decode|resize_small({resize})|central_crop({res})|{source.normalization.pp()}"


class Predictor:
    """A task's model, its weights and eval preprocessing, ready to predict on image files.

    Build one with `from_run(workdir)` or `from_pretrained(model)`.
    """

    def __init__(self, task: tasks.Task, model: nn.Module, variables: dict, pp: str):
        self.task, self.pp = task, pp
        self.class_names = task.class_names
        self._preprocess: Callable = data.parse_pp(pp)
        self._view: Callable = data.parse_pp(view_pp(pp))
        shape = self._preprocess({"image": tf.constant(_BLANK_PNG)})["image"].shape
        abstract = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
        )
        try:
            variables = graft.graft(abstract, variables)[0]
        except graft.GraftError as e:
            raise PredictError(f"the weights do not fit the {task.name} model: {e}") from e
        self._predict = jax.jit(
            lambda x: task.predict(model.apply(variables, x, train=False), x.shape[1:3])
        )

    @classmethod
    def from_run(cls, workdir: str | Path, step: int | None = None) -> Predictor:
        """The fine-tuned model of the run in `workdir` at checkpoint `step` (None: latest)."""
        config_path = os.path.join(workdir, "config.json")  # a local path or gs://
        if not files.exists(config_path):
            raise PredictError(f"{workdir} is not a run's workdir: it has no config.json")
        config = ml_collections.ConfigDict(files.read_json(config_path))
        task = tasks.build(config, data.build_source(config.data).class_names)
        variables = pretrained.load(str(run_args.checkpoint(workdir, step)))
        return cls(task, task.build_model(), variables, config.pp_eval)

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
        config = base_config.get_config()
        config.model.name = model
        task = tasks.build(config, imagenet_class_names())
        return cls(task, task.build_model(), variables, reference_pp(source))

    def _features(self, path: str | Path, preprocess: Callable) -> np.ndarray:
        try:
            features = {"image": tf.io.read_file(str(path)), "_seed": tf.zeros(2, tf.int64)}
            return preprocess(features)["image"].numpy()
        except tf.errors.OpError as e:
            raise PredictError(f"cannot read image {path}: {_reason(e)}") from e

    def image(self, path: str | Path) -> np.ndarray:
        """The preprocessed float32 (H, W, C) image at `path`, as evaluation would see it."""
        return self._features(path, self._preprocess).astype(np.float32)

    def view(self, path: str | Path) -> np.ndarray:
        """The uint8 (H, W, 3) image at `path` as the model saw it, before its values were
        scaled: what predictions are drawn on."""
        return self._features(path, self._view).astype(np.uint8)

    def prediction(self, path: str | Path) -> dict[str, np.ndarray]:
        """The task's prediction for the image at `path` (arrays without a batch axis)."""
        return {k: np.asarray(v)[0] for k, v in self._predict(self.image(path)[None]).items()}

    def probabilities(self, path: str | Path) -> np.ndarray:
        """Classification: the softmax over the model's classes for the image at `path`."""
        if self.task.name != "classification":
            raise PredictError(f"a {self.task.name} model has no class probabilities")
        return self.prediction(path)["probabilities"]

    def top_k(self, path: str | Path, k: int = 5) -> list[tuple[str, float]]:
        """Classification: the `k` most probable (class name, probability), most probable
        first."""
        probs = self.probabilities(path)
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]

    def describe(self, path: str | Path, k: int = 5) -> list[str]:
        """The task's text for the image at `path` (top-k classes, class shares, detections)."""
        return self.task.describe(self.prediction(path), k)

    def draw(self, path: str | Path) -> Image.Image:
        """The task's picture of its prediction for the image at `path`."""
        return self.task.draw(self.view(path), self.prediction(path))


def view_pp(pp: str) -> str:
    """`pp` without the ops that change pixel values: the same geometry, uint8 pixels."""
    value_ops = ("value_range", "normalize")
    return "|".join(op for op in pp.split("|") if op.split("(")[0].strip() not in value_ops)


def _output_paths(images: Sequence[str], out: Path) -> list[Path]:
    """out/<stem>.png per image, numbered where two images share a stem."""
    stems = [Path(image).stem for image in images]
    return [
        out / (f"{stem}.png" if stems.count(stem) == 1 else f"{stem}_{i}.png")
        for i, stem in enumerate(stems)
    ]


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
    parser.add_argument("--top_k", type=int, default=5, help="lines to print per image")
    parser.add_argument("--out", help="directory for a PNG of each prediction (<image stem>.png)")
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
        pictures = _output_paths(args.images, Path(args.out)) if args.out else None
        if pictures:
            os.makedirs(args.out, exist_ok=True)
        for i, path in enumerate(args.images):
            lines = predictor.describe(path, args.top_k)
            print(path)
            for line in lines:
                print(f"  {line}")
            if pictures:
                predictor.draw(path).save(pictures[i])
    except errors.JTransferError as e:
        parser.exit(errors.USAGE_EXIT_CODE, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
