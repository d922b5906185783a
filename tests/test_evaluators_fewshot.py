"""Few-shot ridge evaluator: the solve, the support sets, the errors, and feature extraction.

Runs on any device count (the suite's 1 CPU device, or 8 under
XLA_FLAGS=--xla_force_host_platform_device_count=8): batches are 8 rows, split across the mesh.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jtransfer import data, sharding
from jtransfer.evaluators.features import extract_features
from jtransfer.evaluators.fewshot import (
    FewShotEvaluator,
    fewshot_accuracy,
    fit_ridge_classifier,
    ridge_weights,
    support_indices,
)


@pytest.mark.parametrize("n, d", [(40, 7), (7, 40)])  # the primal and the dual system
def test_ridge_weights_match_least_squares_on_augmented_system(n, d):
    rng = np.random.default_rng(0)
    x, targets, l2 = rng.normal(size=(n, d)), rng.normal(size=(n, 3)), 2.5
    # Ridge is least squares with sqrt(l2) * I stacked under x and zeros under the targets.
    augmented_x = np.concatenate([x, np.sqrt(l2) * np.eye(d)])
    augmented_t = np.concatenate([targets, np.zeros((d, 3))])
    expected = np.linalg.lstsq(augmented_x, augmented_t, rcond=None)[0]
    np.testing.assert_allclose(ridge_weights(x, targets, l2), expected, rtol=1e-9, atol=1e-12)


def test_classifier_scores_are_ridge_on_standardised_features_with_a_bias_column():
    rng = np.random.default_rng(1)
    x, y = rng.normal(2.0, 3.0, size=(12, 5)), np.arange(12) % 3
    test_x = rng.normal(2.0, 3.0, size=(6, 5))
    kernel, bias = fit_ridge_classifier(x, y, 3, l2_reg=10.0)

    mean, std = x.mean(0), x.std(0) + 1e-5
    design = np.concatenate([(x - mean) / std, np.full((12, 1), 100.0)], axis=1)
    w = ridge_weights(design, 2.0 * np.eye(3)[y] - 1.0, 10.0)
    test_design = np.concatenate([(test_x - mean) / std, np.full((6, 1), 100.0)], axis=1)
    np.testing.assert_allclose(test_x @ kernel + bias, test_design @ w, rtol=1e-9, atol=1e-9)


def clusters(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(0).normal(size=(4, 32))
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(4), per_class))
    return (centres[y] + 0.01 * rng.normal(size=(len(y), 32))).astype(np.float32), y


def test_separable_clusters_are_perfect_from_one_shot():
    (train_x, train_y), (test_x, test_y) = clusters(20, 1), clusters(25, 2)
    result = fewshot_accuracy(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=(0, 7))
    assert result == {
        "1shot": 1.0,
        "1shot_std": 0.0,
        "1shot_seed0": 1.0,
        "1shot_seed7": 1.0,
        "5shot": 1.0,
        "5shot_std": 0.0,
        "5shot_seed0": 1.0,
        "5shot_seed7": 1.0,
    }


def test_random_labels_are_near_chance():
    (train_x, _), (test_x, _) = clusters(20, 1), clusters(25, 2)
    rng = np.random.default_rng(3)
    train_y, test_y = rng.integers(0, 4, len(train_x)), rng.integers(0, 4, len(test_x))
    result = fewshot_accuracy(train_x, train_y, test_x, test_y, shots=(5,), seeds=(0, 1, 2))
    assert result["5shot"] < 0.45


def test_support_has_k_per_class_fixed_by_the_seed_and_nested_across_k():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [10, 12, 15, 11, 30]))
    for k in (1, 2, 5, 10):
        idx = support_indices(labels, k, seed=3)
        np.testing.assert_array_equal(np.bincount(labels[idx]), [k] * 5)
        np.testing.assert_array_equal(idx, support_indices(labels, k, seed=3))
        assert not np.array_equal(idx, support_indices(labels, k, seed=4))
    assert set(support_indices(labels, 2, seed=3)) < set(support_indices(labels, 5, seed=3))


def test_too_few_examples_is_an_error_naming_the_class():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ValueError, match=r"class 1 \('bees'\) has 3"):
        support_indices(labels, 5, seed=0, class_names=["ants", "bees"])
    x = np.zeros((13, 4), np.float32)
    with pytest.raises(ValueError, match="class 1 has 3"):
        fewshot_accuracy(x, labels, x, labels, shots=(1, 5))
    with pytest.raises(ValueError, match=r"class 2 \('wasps'\) has 0"):
        fewshot_accuracy(x, labels, x, labels, shots=(1,), class_names=["ants", "bees", "wasps"])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"shots": ()}, "shots"),
        ({"shots": 5}, "shots"),
        ({"shots": (0, 1)}, "shots"),
        ({"shots": (2, 2)}, "shots"),
        ({"shots": (2.5,)}, "shots"),
        ({"shots": (True,)}, "shots"),
        ({"seeds": (-1,)}, "seeds"),
        ({"seeds": ()}, "seeds"),
        ({"l2_reg": 0.0}, "l2_reg"),
    ],
)
def test_bad_settings_are_errors(kwargs, name):
    x, y = clusters(5, 0)
    with pytest.raises(ValueError, match=name):
        fewshot_accuracy(x, y, x, y, **kwargs)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Solid 4x4 PNGs: ants red, bees blue, green = 10 * the file's position in its split."""
    layout = {"train": {"ants": 6, "bees": 5}, "val": {"ants": 2, "bees": 3}}
    for split, classes in layout.items():
        position = 0
        for name, count in classes.items():
            (tmp_path / split / name).mkdir(parents=True)
            for _ in range(count):
                colour = (200, 10 * position, 0) if name == "ants" else (0, 10 * position, 200)
                Image.new("RGB", (4, 4), colour).save(
                    tmp_path / split / name / f"{position:02}.png"
                )
                position += 1
    return tmp_path


def mean_colour(mesh):
    return jax.jit(
        lambda images: jnp.mean(images, axis=(1, 2)), out_shardings=sharding.replicated(mesh)
    )


def test_extract_features_drops_padded_rows_and_keeps_order(image_folder):
    source = data.build_source(
        ml_collections.ConfigDict({"name": str(image_folder), "train_split": "train"})
    )
    mesh = sharding.make_mesh()
    batches = data.eval_batches(source, "train", "decode", 8)  # 11 examples: 2 batches, 5 padded
    features, labels = extract_features(mean_colour(mesh), batches, mesh)

    assert features.dtype == np.float32 and features.shape == (11, 3)
    np.testing.assert_array_equal(labels, [0] * 6 + [1] * 5)
    np.testing.assert_array_equal(features[:, 1], 10 * np.arange(11))
    np.testing.assert_array_equal(features[:, [0, 2]], [[200, 0]] * 6 + [[0, 200]] * 5)


def test_evaluator_runs_on_a_pipeline_with_the_given_features(image_folder):
    cfg = {"name": str(image_folder), "train_split": "train", "eval_split": "val"}
    source = data.build_source(ml_collections.ConfigDict(cfg))
    mesh = sharding.make_mesh()
    evaluator = FewShotEvaluator(source, "train", "val", "decode", 8, mesh, shots=(1, 5))
    result = evaluator.run(mean_colour(mesh))
    assert (result["1shot"], result["5shot"]) == (1.0, 1.0)
    assert set(result) == {
        f"{k}shot{s}" for k in (1, 5) for s in ("", "_std", "_seed0", "_seed1", "_seed2")
    }
