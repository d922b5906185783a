"""Top-k labels of image files from a fine-tuned run, everything taken from its workdir.

    python -m jtransfer.predict --workdir=DIR [--top_k=5] [--step=N] IMAGE...

`config.json` (written by train.py) rebuilds the model with `train.build_model` and names the
data source, whose class names label the head's outputs (a source is cheap to open: TFDS reads
its metadata, an image folder lists its files); each image goes through the run's `pp_eval`,
the preprocessing its evaluation used; the weights are the checkpoint's `params` and
`batch_stats`, read by `pretrained`'s orbax reader exactly as a fine-tune from the run reads
them. Nothing is saved beside the checkpoints for this, so any finished or interrupted run
predicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from jtransfer import data, pretrained, run_args, train


class Predictor:
    """A run's model, weights, class names and eval preprocessing, ready to label images."""

    def __init__(self, workdir: str | Path, step: int | None = None):
        workdir = Path(workdir)
        with open(workdir / "config.json") as f:
            config = ml_collections.ConfigDict(json.load(f))
        self.class_names = data.build_source(config.data).class_names
        model = train.build_model(config, len(self.class_names))
        checkpoint = run_args.checkpoint(workdir, step)
        variables = pretrained.load(str(checkpoint))
        classes = variables["params"]["head"]["dense"]["bias"].shape[0]
        if classes != len(self.class_names):
            raise ValueError(
                f"{checkpoint} has a {classes}-way head but its data source has "
                f"{len(self.class_names)} classes {self.class_names}"
            )
        self._logits = jax.jit(lambda x: model.apply(variables, x, train=False))
        self._preprocess: Callable = data.parse_pp(config.pp_eval)

    def image(self, path: str | Path) -> np.ndarray:
        """The preprocessed float32 (H, W, C) image at `path`, as evaluation would see it."""
        try:
            features = {"image": tf.io.read_file(str(path)), "_seed": tf.zeros(2, tf.int64)}
            return tf.cast(self._preprocess(features)["image"], tf.float32).numpy()
        except tf.errors.OpError as e:
            raise ValueError(f"cannot read image {path}: {e.message}") from e

    def probabilities(self, path: str | Path) -> np.ndarray:
        """The softmax over the run's classes for the image at `path`."""
        logits = self._logits(self.image(path)[None])
        return np.asarray(jax.nn.softmax(logits, axis=-1))[0]

    def top_k(self, path: str | Path, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most probable (class name, probability), most probable first."""
        probs = self.probabilities(path)
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]


def main(argv: Sequence[str] | None = None) -> None:
    parser = run_args.parser("python -m jtransfer.predict", __doc__)
    parser.add_argument("--top_k", type=int, default=5, help="labels to print per image")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    args = parser.parse_args(argv)
    predictor = Predictor(args.workdir, args.step)
    for path in args.images:
        print(path)
        for name, prob in predictor.top_k(path, args.top_k):
            print(f"  {prob:.4f}  {name}")


if __name__ == "__main__":
    main()
