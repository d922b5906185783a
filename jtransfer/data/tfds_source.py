"""A TFDS dataset as a source: the features a task needs, read by index where TFDS allows it.

`keys` says which TFDS feature carries each jtransfer feature (`FEATURES` in `base`), e.g.
`{'segmentation': 'segmentation_mask'}` for `oxford_iiit_pet`, `{'boxes': 'objects/bbox',
'classes': 'objects/label'}` for `voc/2012` and `coco/2017`; the image is always `image` unless
named. Without `keys`, a dataset with a top-level `label` is read for classification (what every
classification dataset in TFDS has) and one with `objects/bbox` and `objects/label` for
detection. Images and masks are read encoded (`SkipDecoding`) and decoded in the `tf.data` map.

- Prepared as array_record (current TFDS's default; the `digits` builder's), a split is read
  through `builder.as_data_source` (the `tfds.data_source` path) one serialized record at a
  time, parsed in TF with only the needed features.
- Prepared as tfrecord (no random access), the needed features of a split are read into memory
  once (encoded images, objects as ragged rows), with a warning when that is large.

Either way an example is turned into the run's label space the same way: class ids through the
class map, mask values through the mask value map, boxes clipped to [0, 1] and dropped when
empty or crowd (`objects/is_crowd`, COCO) or of a class the map drops. TFDS's BBoxFeature
already holds normalised `[ymin, xmin, ymax, xmax]`, the pipeline's convention.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jtransfer.data.base import FEATURES, IGNORE_LABEL, DataError, FetchFn, Source
from jtransfer.data.label_maps import ClassIndex, map_mask, mask_table

_LARGE_IN_MEMORY_BYTES = 1 << 30
_DETECTION_KEYS = {"boxes": "objects/bbox", "classes": "objects/label"}
_ENCODED = ("image", "segmentation")  # features read encoded and decoded in the map


class TfdsSource(Source):
    """A TFDS dataset, prepared on first use like `tfds.load` does."""

    def __init__(
        self,
        name: str,
        *,
        data_dir: str | None = None,
        keys: Mapping[str, str] | None = None,
        classes: Sequence[str] | None = None,
        class_map: Mapping | None = None,
        mask_values: Mapping | None = None,
        ignore_label: int = IGNORE_LABEL,
    ):
        self.name = name
        self.ignore_label = ignore_label
        self._builder = _prepared_builder(name, data_dir)
        info = self._builder.info.features
        self._keys = _feature_keys(name, info, keys)
        self.features = frozenset(self._keys)
        self._specs = {k: _lookup(info, path) for k, path in self._keys.items()}
        _check_kinds(name, self._keys, self._specs, info)

        label = "classes" if "classes" in self._keys else "label" if "label" in self._keys else ""
        if "segmentation" in self._keys and not classes:
            raise DataError(
                f"TFDS dataset {name!r}: set data.classes to the class names of the "
                "segmentation's class ids (masks carry no names)"
            )
        dataset_names = list(self._specs[label].names) if label else []
        index = ClassIndex(dataset_names, class_map, classes, ordered=True)
        self.class_names = index.class_names
        self._label_table = None
        if label and (class_map or classes):
            self._label_table = index.table(dataset_names, where=f"TFDS dataset {name!r}")
            if label == "label" and (self._label_table < 0).any():
                raise DataError(
                    f"TFDS dataset {name!r}: data.class_map drops a class; a classification "
                    "label cannot be dropped (slice the split instead)"
                )
        if "segmentation" in self._keys:
            self._mask_table = mask_table(len(self.class_names), ignore_label, mask_values)
        crowd = _crowd_key(self._keys, info)
        self._read = {**self._keys, **({"crowd": crowd} if crowd else {})}  # feature -> path
        skip = [self._keys[k] for k in _ENCODED if k in self._keys]
        self._decoding = tfds.decode.PartialDecoding(
            _nested(info, self._read.values(), True),
            decoders=_nested(info, skip, tfds.decode.SkipDecoding()),
        )
        self._in_memory: dict[str, dict[str, tf.Tensor | tf.RaggedTensor]] = {}

    def describe(self) -> str:
        return f"TFDS dataset {self.name!r}"

    def splits(self) -> list[str]:
        return list(self._builder.info.splits)

    def num_examples(self, split: str) -> int:
        try:
            return self._builder.info.splits[split].num_examples
        except (KeyError, ValueError) as e:
            raise DataError(
                f"{self.describe()} has no split {split!r} ({str(e).splitlines()[0]}); its "
                f"splits: {self.splits()}"
            ) from None

    def fetch_fn(self, split: str) -> FetchFn:
        info = self._builder.info
        if not info.available_file_formats() & tfds.core.FileFormat.with_random_access():
            columns = self._read_into_memory(split)
            return lambda i: self._example({k: tf.gather(c, i) for k, c in columns.items()})

        records = self._builder.as_data_source(
            split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
        features = self._decoding.extract_features(info.features)

        def fetch(i: tf.Tensor) -> dict[str, tf.Tensor]:
            serialized = tf.numpy_function(
                lambda i: records[int(i)], [i], tf.string, stateful=False
            )
            serialized.set_shape([])
            example = features.deserialize_example(serialized, decoders=self._decoding.decoders)
            return self._example(_flat(example))

        return fetch

    def _example(self, raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """TFDS feature paths -> jtransfer features in the run's label space."""
        out = {"image": raw[self._keys["image"]]}
        if "label" in self._keys:
            out["label"] = tf.cast(raw[self._keys["label"]], tf.int32)
            if self._label_table is not None:
                out["label"] = tf.gather(self._label_table, out["label"])
        if "segmentation" in self._keys:
            mask = self._specs["segmentation"].decode_example(raw[self._keys["segmentation"]])
            out["segmentation"] = map_mask(mask, self._mask_table, self.describe())
        if "boxes" in self._keys:
            boxes = tf.clip_by_value(tf.cast(raw[self._keys["boxes"]], tf.float32), 0.0, 1.0)
            classes = tf.cast(raw[self._keys["classes"]], tf.int32)
            if self._label_table is not None:
                classes = tf.gather(self._label_table, classes)
            keep = (classes >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if "crowd" in self._read:
                keep &= tf.logical_not(tf.cast(raw[self._read["crowd"]], tf.bool))
            out["boxes"] = tf.boolean_mask(boxes, keep)
            out["classes"] = tf.boolean_mask(classes, keep)
        return out

    def _read_into_memory(self, split: str) -> dict[str, tf.Tensor | tf.RaggedTensor]:
        if split not in self._in_memory:
            dataset = self._builder.as_dataset(split=split, decoders=self._decoding).map(_flat)
            batches: dict[str, list] = {path: [] for path in self._read.values()}
            for batch in dataset.ragged_batch(1024):
                for path, values in batch.items():
                    batches[path].append(values)
            columns = {
                path: tf.concat(parts, 0)
                if parts and isinstance(parts[0], tf.RaggedTensor)
                else tf.constant(np.concatenate([p.numpy() for p in parts]))
                for path, parts in batches.items()
            }
            size = sum(len(b) for b in columns[self._keys["image"]].numpy())
            if size > _LARGE_IN_MEMORY_BYTES:
                warnings.warn(
                    f"{self._builder.name} split {split!r} was prepared as "
                    f"{self._builder.info.file_format.value}, without random access: holding its "
                    f"{size / 2**30:.1f} GiB of encoded images in memory. Convert it with "
                    f"`tfds convert_format --dataset_dir={self._builder.data_dir} "
                    "--out_file_format=array_record` to read it from disk.",
                    stacklevel=3,
                )
            self._in_memory[split] = columns
        return self._in_memory[split]


def _feature_keys(name: str, info: tfds.features.FeaturesDict, keys: Mapping | None) -> dict:
    """{jtransfer feature: TFDS feature path}, from `keys` or the dataset's features."""
    if keys:
        unknown = sorted(set(keys) - set(FEATURES))
        if unknown:
            raise DataError(f"data.tfds_keys has {unknown}; valid keys: {list(FEATURES)}")
        return {"image": "image", **{str(k): str(v) for k, v in keys.items()}}
    if isinstance(info["image"] if "image" in info else None, tfds.features.Image):
        if isinstance(info["label"] if "label" in info else None, tfds.features.ClassLabel):
            return {"image": "image", "label": "label"}
        if all(_has(info, path) for path in _DETECTION_KEYS.values()):
            return {"image": "image", **_DETECTION_KEYS}
    raise DataError(
        f"TFDS dataset {name!r} has no image with a 'label' or 'objects/bbox' + 'objects/label'; "
        f"name its features in data.tfds_keys (features: {_paths(info)})"
    )


def _check_kinds(name: str, keys: dict, specs: dict, info: tfds.features.FeaturesDict) -> None:
    kinds = {
        "image": tfds.features.Image,
        "label": tfds.features.ClassLabel,
        "segmentation": tfds.features.Image,
        "boxes": tfds.features.BBoxFeature,
        "classes": tfds.features.ClassLabel,
    }
    for feature, path in keys.items():
        spec = specs[feature]
        if not isinstance(spec, kinds[feature]) or (
            feature == "segmentation" and spec.shape[-1] != 1
        ):
            kind = "1-channel Image" if feature == "segmentation" else kinds[feature].__name__
            raise DataError(
                f"TFDS dataset {name!r} has no {kind} feature {path!r} for '{feature}'; its "
                f"features: {_paths(info)}"
            )
    if ("boxes" in keys) != ("classes" in keys) or (
        "boxes" in keys and keys["boxes"].rsplit("/", 1)[0] != keys["classes"].rsplit("/", 1)[0]
    ):
        raise DataError(
            f"TFDS dataset {name!r}: 'boxes' and 'classes' must name fields of one sequence "
            f"(e.g. {_DETECTION_KEYS}), got {keys}"
        )


def _lookup(info: tfds.features.FeaturesDict, path: str):
    """The feature at `path` ('objects/bbox'; top-level names may contain '/'), or None."""
    if path in info:
        return info[path]
    head, _, rest = path.partition("/")
    if rest and head in info:
        parent = info[head]
        inner = parent.feature if isinstance(parent, tfds.features.Sequence) else parent
        if isinstance(inner, tfds.features.FeaturesDict):
            return _lookup(inner, rest)
    return None


def _has(info: tfds.features.FeaturesDict, path: str) -> bool:
    return _lookup(info, path) is not None


def _paths(info: tfds.features.FeaturesDict, prefix: str = "") -> list[str]:
    out = []
    for key, feature in info.items():
        inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
        if isinstance(inner, tfds.features.FeaturesDict):
            out += _paths(inner, f"{prefix}{key}/")
        else:
            out.append(f"{prefix}{key}")
    return out


def _crowd_key(keys: dict, info: tfds.features.FeaturesDict) -> str | None:
    """COCO's `objects/is_crowd` beside the boxes, if the dataset has it."""
    if "boxes" not in keys:
        return None
    path = keys["boxes"].rsplit("/", 1)[0] + "/is_crowd"
    return path if _has(info, path) else None


def _nested(info: tfds.features.FeaturesDict, paths, leaf) -> dict:
    """Feature paths -> the nested dict TFDS's decoding takes: {'objects': {'bbox': leaf}}."""
    out: dict = {}
    for path in paths:
        head, _, rest = path.partition("/")
        if path in info or not rest:  # top-level names may contain '/' ('image/filename')
            out[path] = leaf
        else:
            parent = info[head]
            inner = parent.feature if isinstance(parent, tfds.features.Sequence) else parent
            out.setdefault(head, {}).update(_nested(inner, [rest], leaf))
    return out


def _flat(example: dict, prefix: str = "") -> dict[str, tf.Tensor]:
    """{'a': {'b': t}} -> {'a/b': t}."""
    out = {}
    for key, value in example.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _prepared_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.DatasetNotFoundError, ValueError) as e:  # ValueError: unparsable name
        raise DataError(_not_found(name, e)) from None
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except OSError:
            # Several processes sharing a data_dir prepare at once; TFDS's final rename fails for
            # all but the first, which is fine when that one has finished.
            builder = tfds.builder(name, data_dir=data_dir)
            if not builder.is_prepared():
                raise
    return builder


def _not_found(name: str, error: Exception) -> str:
    """One line: `name` is neither a directory nor a TFDS dataset, and what is close to it."""
    dataset = name.split("/")[0].split(":")[0]
    builders = tfds.list_builders(with_community_datasets=False)
    if dataset in builders:  # a known dataset with a bad config or version
        configs = [c.name for c in tfds.builder_cls(dataset).BUILDER_CONFIGS]
        return (
            f"TFDS dataset {name!r} cannot be built: {str(error).splitlines()[0]} "
            f"(configs of {dataset}: {configs})"
        )
    message = f"data.name {name!r} is neither an existing directory nor a TFDS dataset"
    path = os.path.expanduser(name)
    if os.sep in name or name.startswith((".", "~")):
        parent = os.path.dirname(path) or "."
        message += f"; the path {path} does not exist"
        if os.path.isdir(parent):
            near = difflib.get_close_matches(os.path.basename(path), os.listdir(parent), n=3)
            if near:
                message += f" (in {parent}: {', '.join(near)})"
        return message
    near = difflib.get_close_matches(dataset, builders, n=3)
    return message + (f"; close TFDS names: {', '.join(near)}" if near else "")
