"""Tests for jtransfer.boxes: IoU and GIoU against hand-computed values, conversions, and the
fixed-size NMS against a plain sequential greedy NMS in numpy (the exact same kept boxes)."""

import jax
import numpy as np
import pytest

from jtransfer import boxes

# (a, b, IoU, GIoU), worked by hand: overlap area, union, smallest enclosing box.
CASES = [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),  # 1 of 7 shared, hull 9
    ([0, 0, 1, 1], [2, 2, 3, 3], 0.0, -7 / 9),  # disjoint: union 2, hull 9
    ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16, 1 / 16),  # contained: the hull is the outer box
    ([0, 0, 2, 4], [0, 0, 2, 4], 1.0, 1.0),
    ([0, 0, 1, 2], [0, 2, 1, 3], 0.0, 0.0),  # touching sides: the union fills the hull
]


def test_iou_and_giou_hand_values():
    a, b, want_iou, want_giou = (np.asarray(c, np.float32) for c in zip(*CASES, strict=True))
    np.testing.assert_allclose(boxes.iou(a, b), want_iou, rtol=1e-6)
    np.testing.assert_allclose(boxes.giou(a, b), want_giou, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(boxes.giou(b, a), want_giou, rtol=1e-6, atol=1e-7)


def test_iou_matrix_is_pairwise():
    a = np.asarray([c[0] for c in CASES], np.float32)
    b = np.asarray([c[1] for c in CASES], np.float32)
    m = np.asarray(boxes.iou_matrix(a, b))
    assert m.shape == (5, 5)
    np.testing.assert_allclose(np.diag(m), [c[2] for c in CASES], rtol=1e-6)
    np.testing.assert_allclose(m[2, 0], 4 / 16, rtol=1e-6)  # [1,1,3,3] inside [0,0,4,4]
    batched = np.asarray(boxes.iou_matrix(np.stack([a, b]), np.stack([b, a])))
    np.testing.assert_allclose(batched[1], m.T, rtol=1e-6)


def test_degenerate_boxes_give_zero_not_nan():
    empty = np.zeros((2, 4), np.float32)
    assert np.all(np.asarray(boxes.iou(empty, empty)) == 0)
    assert np.all(np.isfinite(boxes.giou(empty, empty)))


def test_conversions():
    yxyx = np.asarray([[10, 20, 30, 60]], np.float32)
    np.testing.assert_array_equal(boxes.yxyx_to_xywh(yxyx), [[20, 10, 40, 20]])
    np.testing.assert_array_equal(boxes.xywh_to_yxyx(boxes.yxyx_to_xywh(yxyx)), yxyx)
    np.testing.assert_allclose(
        boxes.scale(np.float32([[0.5, 0.25, 1, 1]]), 480, 640), [[240, 160, 480, 640]]
    )
    np.testing.assert_array_equal(
        boxes.clip(np.float32([[-5, 3, 500, 700]]), 480, 640), [[0, 3, 480, 640]]
    )


def reference_nms(bxs, scores, threshold, max_outputs, classes=None, valid=None):
    """Sequential greedy NMS: visit by score (ties by index), keep if no kept box of the same
    class overlaps it by more than the threshold."""
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if valid is not None and not valid[i]:
            continue
        ok = True
        for j in kept:
            same_class = classes is None or classes[i] == classes[j]
            if same_class and float(boxes.iou(bxs[i], bxs[j])) > threshold:
                ok = False
                break
        if ok:
            kept.append(int(i))
    return kept[:max_outputs]


def random_boxes(rng, n, b):
    """Clustered boxes so that many overlap: centres on a coarse grid, jittered sizes."""
    centre = rng.integers(0, 4, (n, b, 2)) * 0.25 + rng.uniform(-0.05, 0.05, (n, b, 2))
    size = rng.uniform(0.1, 0.4, (n, b, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1).astype(np.float32)


@pytest.mark.parametrize("class_aware", [False, True])
def test_nms_keeps_exactly_what_sequential_greedy_keeps(class_aware):
    rng = np.random.default_rng(0)
    n, b, k, threshold = 6, 60, 25, 0.5
    bxs = random_boxes(rng, n, b)
    scores = rng.uniform(size=(n, b)).astype(np.float32)
    scores[0, :10] = 0.5  # ties go in index order
    classes = rng.integers(0, 3, (n, b)) if class_aware else None
    valid = rng.uniform(size=(n, b)) > 0.2
    nms = jax.jit(
        lambda *a: boxes.nms(
            *a[:2], iou_threshold=threshold, max_outputs=k, classes=a[2], valid=a[3]
        )
    )
    indices, kept = (np.asarray(x) for x in nms(bxs, scores, classes, valid))
    assert indices.shape == kept.shape == (n, k)
    suppressed, truncated = False, False
    for i in range(n):
        everything = reference_nms(
            bxs[i], scores[i], threshold, b, None if classes is None else classes[i], valid[i]
        )
        want = everything[:k]
        assert list(indices[i][kept[i]]) == want
        assert kept[i].tolist() == [True] * len(want) + [False] * (k - len(want))
        assert np.all(indices[i][~kept[i]] == 0)
        suppressed |= len(everything) < valid[i].sum()
        truncated |= len(everything) > k
    assert suppressed and truncated  # the case exercises both limits


def test_nms_threshold_is_strict_and_output_pads():
    # IoU of the two boxes is exactly 0.5: kept at threshold 0.5, suppressed below it.
    bxs = np.float32([[[0, 0, 1, 3], [0, 1, 1, 4], [5, 5, 6, 6]]])
    scores = np.float32([[0.9, 0.8, 0.1]])
    indices, kept = boxes.nms(bxs, scores, iou_threshold=0.5, max_outputs=5)
    assert indices.tolist() == [[0, 1, 2, 0, 0]] and kept.tolist() == [[1, 1, 1, 0, 0]]
    indices, kept = boxes.nms(bxs, scores, iou_threshold=0.49, max_outputs=1)
    assert indices.tolist() == [[0]] and kept.tolist() == [[True]]
    indices, kept = boxes.nms(bxs, scores, iou_threshold=0.49, max_outputs=3)
    assert indices.tolist() == [[0, 2, 0]] and kept.tolist() == [[1, 1, 0]]
