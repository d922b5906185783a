"""Preprocessing ops, composed from big_vision-style strings: 'decode|resize(112)|flip_lr'.

A pp string is the whole description of preprocessing in a config, so ablations change it as
text. `PREPROCESS_OPS` maps each op name to a factory; the factory is called with the arguments
written in the string (parsed with `ast.literal_eval`) and returns a function from a feature dict
to a feature dict, traced inside a `tf.data` map. This module holds the registry, the parser and
the ops that touch one feature (`decode`, `value_range`, `normalize`, `pad_boxes`); the ops that
move pixels, and with them masks and boxes, are in `geometry`.

Images stay uint8 from `decode` through resizes, crops and flips (a resize rounds back to the
input dtype, as in big_vision), so `value_range` has a single input scale, [0, 255].

Random ops are stateless. The pipeline puts a per-example seed in `features['_seed']`, derived
from (seed, step, position in the global batch); each random op splits it, uses one half and
leaves the other for the next random op. An example's augmentation therefore depends only on
where it sits in the stream of global batches, not on the process count or on a resume.
"""

import ast
import difflib
from collections.abc import Callable

import tensorflow as tf

from jtransfer.data.base import DataError

Features = dict[str, tf.Tensor]
Op = Callable[[Features], Features]

PREPROCESS_OPS: dict[str, Callable[..., Op]] = {}


def register_op(name: str, *, random: bool) -> Callable:
    """Adds an op factory to `PREPROCESS_OPS`; `random` ops draw on `features['_seed']`."""

    def add(factory: Callable[..., Op]) -> Callable[..., Op]:
        factory.random = random
        PREPROCESS_OPS[name] = factory
        return factory

    return add


def parse_pp(pp: str) -> Op:
    """The function a pp string describes: its ops applied left to right."""
    ops = []
    for spec in _specs(pp):
        name, args, kwargs = _parse_op(spec)
        try:
            ops.append(_factory(name, pp)(*args, **kwargs))
        except TypeError as e:
            raise DataError(f"bad arguments in preprocessing op {spec!r}: {e}") from None

    def apply(features: Features) -> Features:
        for op in ops:
            features = op(features)
        return features

    return apply


def is_deterministic(pp: str) -> bool:
    """Whether `pp` gives every example the same output each time (no random op).

    An op put in `PREPROCESS_OPS` without `register_op` counts as random: caching is opt-in.
    """
    return not any(getattr(_factory(_parse_op(s)[0], pp), "random", True) for s in _specs(pp))


def _specs(pp: str) -> list[str]:
    return [s.strip() for s in pp.split("|") if s.strip()]


def _parse_op(spec: str) -> tuple[str, tuple, dict]:
    try:
        expr = ast.parse(spec, mode="eval").body
        if isinstance(expr, ast.Name):
            return expr.id, (), {}
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
            args = tuple(ast.literal_eval(a) for a in expr.args)
            return expr.func.id, args, {k.arg: ast.literal_eval(k.value) for k in expr.keywords}
    except (SyntaxError, ValueError) as e:
        raise DataError(f"cannot parse preprocessing op {spec!r}: {e}") from None
    raise DataError(f"cannot parse preprocessing op {spec!r}: expected `name` or `name(args)`")


def _factory(name: str, pp: str) -> Callable[..., Op]:
    if name not in PREPROCESS_OPS:
        close = difflib.get_close_matches(name, PREPROCESS_OPS)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise DataError(
            f"unknown preprocessing op {name!r} in {pp!r}.{hint} "
            f"Valid ops: {', '.join(sorted(PREPROCESS_OPS))}"
        )
    return PREPROCESS_OPS[name]


def _on_image(fn: Callable[[tf.Tensor], tf.Tensor]) -> Op:
    return lambda features: {**features, "image": fn(features["image"])}


@register_op("decode", random=False)
def decode() -> Op:
    """JPEG/PNG/GIF/BMP/WebP bytes -> uint8 (H, W, 3): gray made RGB, a GIF's first frame."""
    return _on_image(lambda b: tf.io.decode_image(b, channels=3, expand_animations=False))


@register_op("value_range", random=False)
def value_range(lo: float, hi: float) -> Op:
    """uint8 [0, 255] -> float32 [lo, hi]."""
    return _on_image(lambda image: tf.cast(image, tf.float32) * ((hi - lo) / 255) + lo)


@register_op("normalize", random=False)
def normalize(mean: float | tuple[float, ...], std: float | tuple[float, ...]) -> Op:
    """(image - mean) / std per channel, on a float image: torchvision's input convention.

    ResNet and timm weights expect `value_range(0, 1)|normalize((0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225))` (ImageNet's channel means and standard deviations of [0, 1] pixels).
    A uint8 image is an error rather than normalised on the [0, 255] scale by mistake.
    """
    if any(s <= 0 for s in tf.nest.flatten(std)):
        raise DataError(f"normalize: std must be positive, got {std}")
    mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def fn(image: tf.Tensor) -> tf.Tensor:
        if not image.dtype.is_floating:
            raise DataError(
                f"normalize needs a float image, got {image.dtype.name}: put value_range(0, 1) "
                "before it"
            )
        return (image - mean_t) / std_t

    return _on_image(fn)


@register_op("pad_boxes", random=False)
def pad_boxes(max_boxes: int) -> Op:
    """Boxes and classes to a fixed count, so that detection examples batch: the first
    `max_boxes` objects, padded with zero boxes of class -1. Goes last in a pp, after the ops
    that move or drop boxes. An example without boxes (an image to predict on) passes as is,
    so training and prediction share `pp_eval`."""

    def op(features: Features) -> Features:
        if "boxes" not in features:
            return features
        boxes, classes = features["boxes"][:max_boxes], features["classes"][:max_boxes]
        room = max_boxes - tf.shape(classes)[0]
        boxes = tf.pad(boxes, [[0, room], [0, 0]])
        classes = tf.pad(classes, [[0, room]], constant_values=-1)
        boxes.set_shape([max_boxes, 4])
        classes.set_shape([max_boxes])
        return {**features, "boxes": boxes, "classes": classes}

    return op
