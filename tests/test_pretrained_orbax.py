"""Loading jtransfer's own runs: orbax checkpoints, the `:subtree` suffix, native-tree checks."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import save_run

from jtransfer import models
from jtransfer.graft import GraftError, graft
from jtransfer.pretrained import OrbaxCheckpointError, load
from jtransfer.pretrained.native import flatten

MODEL, CLASSES = "efficientnet_lite0", 5


@functools.cache
def _initializer():
    model = models.build_model(MODEL, CLASSES)
    image = jnp.zeros((1, 32, 32, 3))
    return jax.jit(lambda rng: model.init({"params": rng, "dropout": rng}, image, train=False))


@functools.cache
def _init(seed: int) -> dict:
    return jax.device_get(_initializer()(jax.random.PRNGKey(seed)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir with checkpoints at steps 3 and 7 (different parameters)."""
    workdir = tmp_path_factory.mktemp("run")
    save_run(workdir, 3, _init(3))
    trained = _init(7)
    save_run(workdir, 7, trained)
    return str(workdir), trained


def _assert_identical(a: dict, b: dict) -> None:
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        assert fa[key].dtype == fb[key].dtype, key
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def test_fine_tune_starts_from_exactly_the_runs_parameters(run):
    workdir, trained = run
    variables, manifest = graft(_init(0), load(workdir, model=MODEL), dont_load=())
    _assert_identical(variables, trained)
    assert len(manifest["loaded"]) == len(flatten(trained))
    assert not manifest["reinitialized"] and not manifest["resampled"]


def test_workdir_reads_the_latest_step_and_a_step_dir_reads_its_own(run):
    workdir, trained = run
    _assert_identical(load(workdir), trained)
    _assert_identical(load(os.path.join(workdir, "checkpoints", "7")), trained)
    _assert_identical(load(os.path.join(workdir, "checkpoints", "3")), _init(3))


def test_subtree_loads_part_and_graft_requires_saying_so(run):
    workdir, trained = run
    part = load(f"{workdir}:backbone", model=MODEL)
    assert set(part["params"]) == {"backbone"} and set(part["batch_stats"]) == {"backbone"}
    with pytest.raises(GraftError, match="missing from the checkpoint.*\n  params/head/dense"):
        graft(_init(0), part)
    variables, manifest = graft(_init(0), part, dont_load=("head/.*",))
    assert sorted(manifest["reinitialized"]) == [
        "params/head/dense/bias",
        "params/head/dense/kernel",
    ]
    np.testing.assert_array_equal(
        variables["params"]["backbone"]["stem"]["conv"]["kernel"],
        trained["params"]["backbone"]["stem"]["conv"]["kernel"],
    )


def test_deeper_subtree_keeps_params_and_statistics_in_place(run):
    workdir, _ = run
    part = load(f"{workdir}:backbone/stem")
    assert set(part["params"]["backbone"]) == {"stem"}
    assert set(part["batch_stats"]["backbone"]["stem"]["bn"]) == {"mean", "var"}


def test_unknown_subtree_lists_what_there_is(run):
    workdir, _ = run
    with pytest.raises(ValueError, match=r"no subtree 'neck'; it has \['backbone/stage1'"):
        load(f"{workdir}:neck")
    with pytest.raises(ValueError, match="leaves out the collection"):
        load(f"{workdir}:params/backbone")


def test_tree_of_another_model_is_an_error_naming_the_paths(run):
    workdir, _ = run
    with pytest.raises(
        ValueError,
        match=r"is not resnet18 .*\n  unexpected: params/backbone/stage1/block1/depthwise",
    ):
        load(workdir, model="resnet18")


def test_tree_lacking_leaves_loads_and_graft_names_them(run, tmp_path):
    """A model option may drop leaves (ViT's pool='gap' has no cls_token): not a misfit."""
    _, trained = run
    partial = {k: dict(v) for k, v in trained.items()}
    partial["params"]["backbone"] = dict(partial["params"]["backbone"])
    del partial["params"]["backbone"]["top"]
    save_run(tmp_path, 1, partial)
    loaded = load(str(tmp_path), model=MODEL)
    with pytest.raises(
        GraftError, match=r"missing from the checkpoint \(3\):\n  params/backbone/top"
    ):
        graft(_init(0), loaded)


def test_directory_without_checkpoints_names_it(tmp_path):
    with pytest.raises(OrbaxCheckpointError, match=f"{tmp_path} holds no orbax checkpoint"):
        load(str(tmp_path))


def test_corrupt_checkpoint_names_it(run, tmp_path):
    workdir, trained = run
    save_run(tmp_path, 1, trained)
    for path in glob.glob(f"{tmp_path}/checkpoints/1/**/d/*", recursive=True):
        os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(OrbaxCheckpointError, match=f"{tmp_path}/checkpoints/1/default"):
        load(str(tmp_path))
