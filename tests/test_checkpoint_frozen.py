"""Checkpoints hold what changes: the frozen pretrained leaves are left out, read again from
their source on resume and by every reader of the run, and checked against a fingerprint.

Runs of EfficientNet-Lite0 (its ImageNet weights written to a `.safetensors` file, so that a
test can change or remove the source) on a tiny image folder at 32 px, a few steps each. That a
resume from such a checkpoint is bit-exact is tests/test_resume.py's (its gradual-unfreezing
run leaves the lower stages out) and tests/test_strategies.py's (the cached probe).
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from images import dark_and_light
from test_strategies import _run

from jtransfer import checkpoint, export, pretrained
from jtransfer.files import tree_bytes
from jtransfer.policy import flatten
from jtransfer.pretrained import native
from jtransfer.pretrained.frozen import FrozenSourceError, fingerprint, frozen_leaves
from jtransfer.pretrained.orbax_reader import read_run

pytestmark = pytest.mark.slow
HEAD_ONLY = "strategy=linear_probe"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return dark_and_light(tmp_path_factory.mktemp("images"))


@pytest.fixture
def source(tmp_path) -> str:
    """Lite0's ImageNet weights as a file of native keys."""
    path = str(tmp_path / "lite0.safetensors")
    safetensors.numpy.save_file(
        native.flatten(pretrained.load("efficientnet_lite0/imagenet")), path
    )
    return path


def _train(folder, workdir, arg, source):
    return _run(folder, workdir, arg, pretrained={"source": source, "dont_load": _dont_load(arg)})


def _dont_load(arg: str) -> tuple[str, ...]:
    return ("head/.*", ".*/lora/.*") if "lora" in arg else ("head/.*",)


def _array_bytes(step) -> int:
    """Bytes of the arrays the checkpoint `step` holds, whatever the files that store them:
    OCDBT's files of one save vary by up to half of a small checkpoint's size between identical
    runs (one data file per write batch, the batches as the writer threads make them)."""
    tree = ocp.PyTreeCheckpointer().metadata(step / checkpoint.ITEM).item_metadata.tree
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def _full_fine_tuning_bytes(tmp_path, source) -> tuple[int, int]:
    """Bytes of what a full fine-tuning run of Lite0 saves: every parameter, the statistics and
    a momentum for each parameter (stood in for by the parameters themselves, which compress as
    little as a trained momentum). `scripts/benchmark.py checkpoint` measures a real one."""
    variables = pretrained.load(source, model="efficientnet_lite0")
    variables["params"] = {k: v for k, v in variables["params"].items() if k != "head"}
    state = {**variables, "opt_state": jax.tree.leaves(variables["params"]), "step": np.int32(4)}
    saver = checkpoint.Checkpointer(tmp_path / "full", asynchronous=False)
    saver.save(4, state)
    saver.close()
    step = tmp_path / "full" / "4"
    return tree_bytes(str(step)), _array_bytes(step)


def test_probe_and_lora_checkpoints_hold_what_trains(folder, tmp_path, source):
    sizes, arrays = {}, {}
    # LoRA at the preset's rank for Lite0 (2; rank 8 on its narrow 1x1 convolutions would be
    # 5.4 % of the model's parameters, which no checkpoint of it could undercut)
    for arg in (HEAD_ONLY, "strategy=lora"):
        workdir = tmp_path / arg
        _train(folder, workdir, arg, source)
        step = workdir / "checkpoints" / "4"
        sizes[arg], arrays[arg] = tree_bytes(str(step)), _array_bytes(step)
        record = checkpoint.read_frozen_record(step)
        leaves = frozen_leaves(record)
        whole = flatten(read_run(workdir))
        start = flatten(pretrained.load(source, model="efficientnet_lite0"))
        assert record["source"] == source and len(leaves) > 100
        # what was left out reads back bit-identical to the source, the rest as trained
        for path in leaves:
            np.testing.assert_array_equal(whole[path], start[path], err_msg=path)
        assert record["sha256"] == fingerprint({p: start[p] for p in leaves})
        assert any(p.startswith("params/head/") for p in whole)
    full, full_arrays = _full_fine_tuning_bytes(tmp_path, source)
    print({arg: f"{n:,} bytes, {100 * n / full:.2f} % of {full:,}" for arg, n in sizes.items()})
    print({a: f"{n:,} array bytes, {100 * n / full_arrays:.2f} %" for a, n in arrays.items()})
    assert sizes[HEAD_ONLY] <= 0.02 * full
    # here LoRA's arrays are 1.4 % of full fine-tuning's and its files 1.3 %, its optimizer state
    # packed (`frozen.pack_arrays`; unpacked, the files measured 1.5 to 2.3 % with ~140 KB of
    # metadata); `scripts/benchmark.py checkpoint` measures 1.8 % after 5 steps at 224 px
    assert arrays["strategy=lora"] <= 0.02 * full_arrays
    assert sizes["strategy=lora"] <= 0.02 * full


def test_a_changed_or_missing_source_is_an_error_naming_it(folder, tmp_path, source):
    workdir = tmp_path / "run"
    config, first = _train(folder, workdir, HEAD_ONLY, source)
    os.remove(workdir / "final_eval.json")  # unfinished: the rerun resumes from step 4
    arrays = safetensors.numpy.load_file(source)
    key = "params/backbone/stem/conv/kernel"
    arrays[key] = arrays[key] * np.float32(1.001)
    safetensors.numpy.save_file(arrays, source)
    with pytest.raises(FrozenSourceError, match=rf"source '{source}' changed since the checkpoint"):
        _train(folder, workdir, HEAD_ONLY, source)
    with pytest.raises(FrozenSourceError, match=rf"source '{source}' changed since the checkpoint"):
        export.export(workdir, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()
    os.remove(source)
    with pytest.raises(FrozenSourceError, match=rf"from the pretrained source '{source}'"):
        read_run(workdir)
