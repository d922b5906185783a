"""COCO metrics: hand-computed AP values, masking, and parity with pycocotools reading files.

Boxes in the hand-made cases are normalised [ymin, xmin, ymax, xmax] on 100 x 100 images, so
their pixel coordinates are the numbers times 100: A, B (50 x 50) and C (40 x 40) are medium
objects for COCO (32² to 96² pixels), D (30 x 30) is small.
"""

import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jtransfer.errors import JTransferError
from jtransfer.evaluators.coco_metrics import CocoEvaluator

NAMES = ["cat", "dog", "bird"]
SIZE = (100, 100)
A, B, C, D = [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.4, 0.9], [0.6, 0.0, 0.9, 0.3]


def _batch(images, m=4, k=6):
    """Padded arrays from [{'gt': [(box, class)], 'pred': [(box, class, score)]}, ...].

    Padding slots hold what must not count: gt boxes with class -1 where predictions are, and
    invalid predictions with the top score on no object.
    """
    n = len(images)
    gt_boxes, gt_classes = np.tile(np.array(B, np.float32), (n, m, 1)), np.full((n, m), -1)
    pred_boxes = np.tile(np.array([0.9, 0.9, 1.0, 1.0], np.float32), (n, k, 1))
    pred_scores, pred_classes = np.ones((n, k), np.float32), np.zeros((n, k), np.int64)
    pred_valid = np.zeros((n, k), bool)
    for i, image in enumerate(images):
        for j, (box, cls) in enumerate(image.get("gt", [])):
            gt_boxes[i, j], gt_classes[i, j] = box, cls
        for j, (box, cls, score) in enumerate(image.get("pred", [])):
            pred_boxes[i, j], pred_classes[i, j], pred_scores[i, j] = box, cls, score
            pred_valid[i, j] = True
    sizes = np.tile(np.array(SIZE), (n, 1))
    return gt_boxes, gt_classes, pred_boxes, pred_scores, pred_classes, pred_valid, sizes


def _score(images, names=NAMES, **kwargs):
    evaluator = CocoEvaluator(names)
    evaluator.add(*_batch(images), **kwargs)
    return evaluator.result()


def test_perfect_predictions_score_one_and_nothing_is_printed(capsys):
    images = [
        {"gt": [(A, 0), (B, 1)], "pred": [(A, 0, 0.9), (B, 1, 0.8)]},
        {"gt": [(C, 0)], "pred": [(C, 0, 0.7)]},
        {"gt": [(D, 2), (A, 1)], "pred": [(D, 2, 0.6), (A, 1, 0.5)]},
    ]
    metrics = _score(images)
    assert capsys.readouterr().out == ""
    expected = {"mAP": 1.0, "mAP50": 1.0, "mAP75": 1.0, "mAP_small": 1.0, "mAP_medium": 1.0}
    expected.update({f"AP/{n}": 1.0 for n in NAMES} | {f"AP50/{n}": 1.0 for n in NAMES})
    expected["mAP_large"] = math.nan  # no large objects
    # pycocotools' precision is tp / (tp + fp + eps): 1 - 1e-16 at best.
    assert metrics == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_boxes_with_iou_062_and_052_count_up_to_iou_thresholds_060_and_050():
    # Pixels: ground truth 50 x 50, predictions 50 wide and 31 (cat) or 26 (dog) high inside
    # it: IoU 0.62, a match at thresholds .50, .55 and .60 (3 of the 10), and IoU 0.52, a
    # match at .50 only.
    cat, dog = [0.0, 0.0, 0.31, 0.5], [0.5, 0.5, 0.76, 1.0]
    metrics = _score([{"gt": [(A, 0), (B, 1)], "pred": [(cat, 0, 0.9), (dog, 1, 0.8)]}])
    expected = {"mAP": 0.2, "mAP50": 1.0, "mAP75": 0.0, "AP/cat": 0.3, "AP50/cat": 1.0}
    expected |= {"AP/dog": 0.1, "AP50/dog": 1.0}
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-12)


def test_pixel_sizes_decide_small_medium_and_large():
    # 100 x 100: a 20 x 20 cat (small) found, a 50 x 50 dog (medium) missed; 400 x 400: a
    # 200 x 200 bird (large) found. In normalised units every object would be "small".
    images = [
        {"gt": [([0.0, 0.0, 0.2, 0.2], 0), (B, 1)], "pred": [([0.0, 0.0, 0.2, 0.2], 0, 0.9)]},
        {"gt": [(A, 2)], "pred": [(A, 2, 0.9)]},
    ]
    batch = _batch(images)
    evaluator = CocoEvaluator(NAMES)
    evaluator.add(*batch[:-1], np.array([[100, 100], [400, 400]]))
    metrics = evaluator.result()
    expected = {"mAP_small": 1.0, "mAP_medium": 0.0, "mAP_large": 1.0, "mAP": 2 / 3}
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-12)


def test_a_false_positive_ranked_above_a_true_positive_lowers_ap_to_the_hand_value():
    # Two cats; detections by score: hit, miss, hit. Recall / precision: .5/1, .5/.5, 1/(2/3).
    # COCO's precision at recall r is the best precision at recall >= r, read at the 101 points
    # r = 0, .01, ..., 1: 1 for the 51 points up to .5, 2/3 for the 50 above.
    images = [{"gt": [(A, 0), (B, 0)], "pred": [(A, 0, 0.9), (C, 0, 0.8), (B, 0, 0.7)]}]
    metrics = _score(images)
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    for key in ("mAP", "mAP50", "mAP75", "AP/cat", "AP50/cat"):
        assert metrics[key] == pytest.approx(expected, abs=1e-12), key
    # The same miss ranked below the hits costs nothing.
    images[0]["pred"][1] = (C, 0, 0.1)
    assert _score(images)["mAP"] == pytest.approx(1.0, abs=1e-12)


def test_classes_are_scored_separately_and_a_class_without_objects_is_nan():
    # Cat: perfect. Dog: a dog detection on the cat (wrong class, a dog false positive) above
    # the true dog: AP 1/2 (precision 1/2 at every recall). Bird: no objects, one detection.
    images = [{"gt": [(A, 0), (B, 1)], "pred": [(A, 0, 0.5), (A, 1, 0.9), (B, 1, 0.8)]}]
    images.append({"pred": [(D, 2, 0.95)]})
    metrics = _score(images)
    assert metrics["AP/cat"] == pytest.approx(1.0, abs=1e-12) == metrics["AP50/cat"]
    assert metrics["AP/dog"] == pytest.approx(0.5, abs=1e-12) == metrics["AP50/dog"]
    assert math.isnan(metrics["AP/bird"]) and math.isnan(metrics["AP50/bird"])
    assert metrics["mAP"] == pytest.approx(0.75, abs=1e-12) == metrics["mAP50"]


def test_detections_on_images_without_objects_are_false_positives():
    with_objects = {"gt": [(A, 0)], "pred": [(A, 0, 0.8)]}
    # An image without objects or detections changes nothing.
    assert _score([with_objects, {}]) == pytest.approx(_score([with_objects]), nan_ok=True)
    assert _score([with_objects])["mAP"] == pytest.approx(1.0, abs=1e-12)
    # A cat detection on an image without objects, above the true one: AP 1/2.
    metrics = _score([with_objects, {"pred": [(A, 0, 0.9)]}])
    assert metrics["mAP"] == pytest.approx(0.5, abs=1e-12)


def test_padding_slots_invalid_predictions_and_padded_examples_do_not_count():
    images = [{"gt": [(A, 0)], "pred": [(A, 0, 0.8)]}]
    clean = _score(images)
    assert clean["mAP"] == pytest.approx(1.0, abs=1e-12)
    # `_batch` fills the unused slots: gt boxes with class -1 and invalid predictions with
    # score 1 on no object (one of them with class 7, out of range). The second example is
    # padding (weight 0): its object would be missed, its predictions wrong or out of range.
    batch = _batch(images + [{"gt": [(B, 0)], "pred": [(C, 0, 0.99), (D, 7, 0.9)]}])
    batch[4][0, 1] = 7
    evaluator = CocoEvaluator(NAMES)
    evaluator.add(*batch, weights=np.array([1.0, 0.0]))
    assert evaluator.num_images == 1
    np.testing.assert_equal(evaluator.result(), clean)


def test_no_detections_score_zero_and_no_objects_score_nan():
    metrics = _score([{"gt": [(A, 0)]}, {"gt": [(B, 1)]}])
    assert metrics["mAP"] == metrics["mAP50"] == metrics["AP/cat"] == metrics["AP/dog"] == 0.0
    assert math.isnan(metrics["AP/bird"])
    metrics = _score([{"pred": [(A, 0, 0.5)]}])
    assert all(math.isnan(v) for v in metrics.values()) and len(metrics) == 12


def _random_images(rng, n, num_classes):
    images = []
    for i in range(n):
        gt, pred = [], []
        for _ in range(0 if i == 2 else rng.integers(1, 4)):  # image 2 has no objects
            y, x = rng.uniform(0, 0.6, 2)
            box = [y, x, y + rng.uniform(0.05, 0.4), x + rng.uniform(0.05, 0.4)]
            cls = int(rng.integers(0, num_classes - 1))  # the last class has no objects
            gt.append((box, cls))
            if rng.random() < 0.8:  # a jittered hit, sometimes labelled wrong
                jittered = list(np.asarray(box) + rng.normal(0, 0.01, 4))
                label = cls if rng.random() < 0.8 else int(rng.integers(0, num_classes))
                pred.append((jittered, label, float(rng.random())))
        for _ in range(rng.integers(0, 3)):  # misses anywhere, any class
            y, x = rng.uniform(0, 0.7, 2)
            box = [y, x, y + 0.3, x + 0.3]
            pred.append((box, int(rng.integers(0, num_classes)), float(rng.random())))
        images.append({"gt": gt, "pred": pred, "size": tuple(rng.integers(50, 400, 2))})
    return images


def test_in_memory_evaluation_equals_pycocotools_reading_json_files(tmp_path):
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d", "none"]
    images = _random_images(rng, 12, len(names))
    evaluator = CocoEvaluator(names)
    for start in range(0, 12, 4):  # three batches
        batch = _batch(images[start : start + 4])
        sizes = np.array([image["size"] for image in images[start : start + 4]])
        evaluator.add(*batch[:-1], sizes)
    metrics = evaluator.result()
    np.testing.assert_equal(
        evaluator.result(), metrics
    )  # result() leaves the collected boxes as they were

    # The same set as an annotation file and a results file, converted here independently.
    def xywh(box, height, width):
        ymin, xmin, ymax, xmax = (float(v) for v in np.asarray(box, np.float32))
        return [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height]

    dataset = {"images": [], "annotations": [], "categories": []}
    dataset["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    results = []
    for image_id, image in enumerate(images, 1):
        height, width = (float(s) for s in image["size"])
        dataset["images"].append({"id": image_id, "height": height, "width": width})
        for box, cls in image["gt"]:
            bbox = xywh(box, height, width)
            dataset["annotations"].append(
                {
                    "id": len(dataset["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
        for box, cls, score in image["pred"]:
            bbox = xywh(box, height, width)
            score = float(np.float32(score))
            results.append(
                {"image_id": image_id, "category_id": cls + 1, "bbox": bbox, "score": score}
            )
    (tmp_path / "gt.json").write_text(json.dumps(dataset))
    (tmp_path / "results.json").write_text(json.dumps(results))

    def file_stats(category_ids=None):
        ground_truth = COCO(str(tmp_path / "gt.json"))
        evaluation = COCOeval(
            ground_truth, ground_truth.loadRes(str(tmp_path / "results.json")), "bbox"
        )
        if category_ids is not None:
            evaluation.params.catIds = category_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        return [float("nan") if s == -1 else s for s in evaluation.stats[:6]]

    expected = file_stats()
    assert 0.2 < expected[0] < 0.9  # neither trivial nor hopeless
    summary = ["mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large"]
    np.testing.assert_equal([metrics[key] for key in summary], expected)
    # pycocotools restricted to one category gives that class's AP.
    for index, name in enumerate(names):
        per_class = file_stats([index + 1])
        np.testing.assert_allclose(
            [metrics[f"AP/{name}"], metrics[f"AP50/{name}"]], per_class[:2], rtol=1e-12
        )
    assert math.isnan(metrics["AP/none"])


def test_bad_input_is_named():
    batch = list(_batch([{"gt": [(A, 0)], "pred": [(A, 0, 0.8)]}]))
    evaluator = CocoEvaluator(NAMES)
    with pytest.raises(JTransferError, match=r"pred_scores has shape \(1, 5\), expected \(1, 6\)"):
        evaluator.add(*batch[:3], batch[3][:, :5], *batch[4:])
    with pytest.raises(JTransferError, match=r"gt_classes \[3\] must lie in \[-1, 3\)"):
        evaluator.add(batch[0], np.where(batch[1] == 0, 3, batch[1]), *batch[2:])
    with pytest.raises(JTransferError, match=r"pred_classes of valid predictions \[-2\]"):
        evaluator.add(*batch[:4], np.full_like(batch[4], -2), *batch[5:])
    with pytest.raises(JTransferError, match=r"image_sizes \[\[0.0, 100.0\]\] must be positive"):
        evaluator.add(*batch[:6], np.array([[0, 100]]))
    with pytest.raises(JTransferError, match="no images were added"):
        evaluator.result()
    with pytest.raises(JTransferError, match=r"class names \['a', 'a'\] must be distinct"):
        CocoEvaluator(["a", "a"])
