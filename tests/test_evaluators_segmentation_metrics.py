"""Confusion matrix and IoU: hand-made values, masking, additivity, parity with scikit-learn.

The eight-device check runs in a child process started with
`--xla_force_host_platform_device_count=8`
(`python tests/test_evaluators_segmentation_metrics.py sharded` runs it).
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics

from jtransfer.errors import JTransferError
from jtransfer.evaluators.segmentation_metrics import confusion_matrix, iou_metrics

IGNORE = 255
NAMES = ["a", "b", "c", "d", "e"]
# One real example (4 x 4) and one padded example (weight 0). Class 3 is only predicted (IoU 0,
# in the mean); class 4 is only predicted on ignored pixels (absent: NaN, not in the mean).
LABELS = np.array(
    [
        [[0, 0, 1, 1], [1, 2, 2, IGNORE], [0, IGNORE, IGNORE, IGNORE], [IGNORE] * 4],
        [[2, 2, 2, 2]] * 4,
    ],
    np.int32,
)
PREDICTIONS = np.array(
    [[[0, 1, 1, 1], [1, 1, 2, 0], [3, 4, 4, 4], [4] * 4], [[2, 2, 2, 2]] * 4], np.int32
)
WEIGHTS = np.array([1.0, 0.0])
EXPECTED = np.array(
    [[1, 1, 0, 1, 0], [0, 3, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
)


def _confusion(predictions, labels, weights, num_classes=5):
    return np.asarray(confusion_matrix(predictions, labels, weights, num_classes, IGNORE))


def test_hand_made_matrix_and_iou():
    confusion = _confusion(PREDICTIONS, LABELS, WEIGHTS)
    assert confusion.dtype == np.int32
    np.testing.assert_array_equal(confusion, EXPECTED)
    metrics = iou_metrics(confusion, NAMES)
    # IoU = TP / (row + column - TP): a 1/3, b 3/5, c 1/2, d 0/1; e has union 0.
    expected_iou = [1 / 3, 3 / 5, 1 / 2, 0.0]
    for name, value in zip(NAMES[:4], expected_iou, strict=True):
        assert metrics[f"iou/{name}"] == pytest.approx(value, abs=1e-15)
    assert np.isnan(metrics["iou/e"])
    assert metrics["mean_iou"] == pytest.approx(np.mean(expected_iou), abs=1e-15)
    assert metrics["pixel_accuracy"] == pytest.approx(5 / 8, abs=1e-15)
    assert sorted(metrics) == sorted(["mean_iou", "pixel_accuracy"] + [f"iou/{n}" for n in NAMES])


def test_ignored_pixels_padded_examples_and_out_of_range_labels_do_not_count():
    predictions, labels = PREDICTIONS.copy(), LABELS.copy()
    predictions[0][labels[0] == IGNORE] = 2  # other predictions on ignored pixels
    predictions[1] = 0  # a padded example: anything at all
    labels[1] = 1
    np.testing.assert_array_equal(_confusion(predictions, labels, WEIGHTS), EXPECTED)
    # Weight 0 is the same as leaving the example out.
    np.testing.assert_array_equal(_confusion(predictions[:1], labels[:1], WEIGHTS[:1]), EXPECTED)
    # Labels or predictions outside [0, C) cannot be placed: not counted, and not aliased to
    # another cell (label 1 / prediction 7 would be cell 12 = [2, 2], label -1 / 3 cell -2).
    labels[0, 3, :3], predictions[0, 3, :3] = [7, 1, -1], [0, 7, 3]
    np.testing.assert_array_equal(_confusion(predictions, labels, WEIGHTS), EXPECTED)
    # Boolean weights work the same way; with both examples real the padded one counts.
    both = _confusion(predictions, labels, np.array([True, True]))
    assert both[1, 0] == 16 and both.sum() == EXPECTED.sum() + 16


def test_ignore_label_may_be_a_class_index():
    # Trimap-style: classes 0, 1 and 2 with 2 ignored; predictions of 2 still count.
    labels = np.array([[[0, 1, 2, 2], [0, 0, 1, 2]]])
    predictions = np.array([[[0, 2, 0, 1], [1, 0, 1, 2]]])
    confusion = np.asarray(confusion_matrix(predictions, labels, np.ones(1), 3, 2))
    np.testing.assert_array_equal(confusion, [[2, 1, 0], [0, 1, 1], [0, 0, 0]])


def test_batch_halves_sum_to_the_whole_batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=(8, 16, 12))
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    predictions = rng.integers(0, 6, size=(8, 16, 12))
    weights = (np.arange(8) < 6).astype(np.float32)  # the last two are padding
    whole = _confusion(predictions, labels, weights, num_classes=6)
    halves = _confusion(predictions[:4], labels[:4], weights[:4], num_classes=6) + _confusion(
        predictions[4:], labels[4:], weights[4:], num_classes=6
    )
    np.testing.assert_array_equal(halves, whole)
    assert whole.sum() == np.sum((labels[:6] != IGNORE) & (labels[:6] < 6))


def test_random_data_matches_scikit_learn():
    # ADE20K-sized: 150 classes, uint8 labels with 255 ignored (label * 150 overflows uint8).
    rng = np.random.default_rng(1)
    num_classes = 150
    labels = rng.integers(0, 120, size=(4, 32, 32), dtype=np.uint8)  # classes 120+ never true
    labels[rng.random(labels.shape) < 0.1] = IGNORE
    predictions = np.where(
        rng.random(labels.shape) < 0.6, labels, rng.integers(0, 140, size=labels.shape)
    ).astype(np.int32)  # classes 140+ never predicted
    weights = np.ones(4)
    confusion = _confusion(predictions, labels, weights, num_classes)
    metrics = iou_metrics(confusion, [str(i) for i in range(num_classes)])

    kept = labels != IGNORE
    y_true, y_pred = labels[kept].astype(int), predictions[kept]
    classes = np.arange(num_classes)
    reference = sklearn.metrics.confusion_matrix(y_true, y_pred, labels=classes)
    np.testing.assert_array_equal(confusion, reference)
    # scikit-learn scores a class with union 0 as 0 (zero_division); here it is NaN.
    jaccard = sklearn.metrics.jaccard_score(
        y_true, y_pred, labels=classes, average=None, zero_division=0
    )
    iou = np.array([metrics[f"iou/{i}"] for i in classes])
    assert np.isnan(iou[140:]).all() and not np.isnan(iou[:140]).any()
    np.testing.assert_allclose(iou[:140], jaccard[:140], rtol=1e-12)
    assert metrics["mean_iou"] == pytest.approx(np.mean(jaccard[:140]), rel=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(
        sklearn.metrics.accuracy_score(y_true, y_pred), rel=1e-12
    )


def test_counts_are_exact_beyond_float32_precision():
    # 4097 x 4096 - 1 = 2**24 + 4095 pixels of one cell: float32 cannot hold that odd count.
    labels = jnp.zeros((1, 4097, 4096), jnp.int8)
    predictions = labels.at[0, 0, 0].set(1)
    confusion = _confusion(predictions, labels, np.ones(1), num_classes=2)
    np.testing.assert_array_equal(confusion, [[2**24 + 4095, 1], [0, 0]])


def test_nothing_counted_gives_nan():
    metrics = iou_metrics(np.zeros((2, 2), np.int64), ["x", "y"])
    assert all(np.isnan(v) for v in metrics.values()) and len(metrics) == 4


def test_bad_input_is_named():
    labels = np.zeros((2, 4, 4), np.int32)
    with pytest.raises(JTransferError, match=r"predictions \(2, 4, 5\) and labels \(2, 4, 4\)"):
        confusion_matrix(np.zeros((2, 4, 5), np.int32), labels, np.ones(2), 3, IGNORE)
    with pytest.raises(JTransferError, match=r"weights \(3,\) must be \(B,\) = \(2,\)"):
        confusion_matrix(labels, labels, np.ones(3), 3, IGNORE)
    with pytest.raises(JTransferError, match="predictions dtype float32"):
        confusion_matrix(labels.astype(np.float32), labels, np.ones(2), 3, IGNORE)
    with pytest.raises(JTransferError, match=r"confusion matrix \(3, 3\) does not match 2"):
        iou_metrics(np.zeros((3, 3)), ["x", "y"])
    with pytest.raises(JTransferError, match=r"class names \['x', 'x'\] must be distinct"):
        iou_metrics(np.zeros((2, 2)), ["x", "x"])


def sharded() -> dict:
    """The matrix of a batch split over all devices, from a jitted step on global arrays."""
    import jax

    from jtransfer import sharding

    mesh = sharding.make_mesh()
    rng = np.random.default_rng(2)
    local = {
        "predictions": rng.integers(0, 5, size=(16, 8, 8)).astype(np.int32),
        "labels": np.where(rng.random((16, 8, 8)) < 0.2, IGNORE, rng.integers(0, 5, (16, 8, 8))),
        "weights": (np.arange(16) < 13).astype(np.float32),
    }
    step = jax.jit(
        lambda b: confusion_matrix(b["predictions"], b["labels"], b["weights"], 5, IGNORE),
        out_shardings=sharding.replicated(mesh),
    )
    global_result = step(sharding.global_batch(local, mesh))
    per_example = sum(
        _confusion(
            local["predictions"][i : i + 1], local["labels"][i : i + 1], local["weights"][i : i + 1]
        )
        for i in range(16)
    )
    return {
        "devices": jax.device_count(),
        "shards": len(global_result.sharding.device_set),
        "equal": bool(np.array_equal(np.asarray(global_result), per_example)),
        "total": int(np.asarray(global_result).sum()),
        "expected_total": int(np.sum(local["labels"][:13] != IGNORE)),
    }


def test_matrix_of_a_batch_sharded_over_8_devices_is_the_sum_of_its_examples():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, __file__, "sharded"], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["shards"] == 8 and result["equal"]
    assert result["total"] == result["expected_total"] > 0


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
