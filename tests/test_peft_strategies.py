"""The lora, adapter and vpt strategies: presets, a few real train steps, costs, merged export.

Each strategy is set up as a run sets it up: the config from `presets.apply_strategy`, the
pretrained weights grafted by `train.initial_variables` (EfficientNet-Lite0's ImageNet weights,
or seeded ViT-Ti/16 weights written to a file), and the train step `phase.build_phase` builds
(through `cost.step_and_state`), at 32 px. After three steps everything pretrained — parameters
and BatchNorm statistics — is bit-identical and what was added moved; the optimizer holds
state for the added parameters and the head only, and the compiled step costs less than full
fine-tuning. A LoRA run exported by `jtransfer.export` loads into the un-adapted model, whose
logits equal the adapted model's.
"""

import copy
import importlib.util
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from runs import save_run
from seeded import seeded_state_dict

from jtransfer import base_config, cost, export, graft, models, presets, pretrained, tasks, train
from jtransfer.errors import JTransferError
from jtransfer.policy import Policy, flatten, unflatten

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["a", "b", "c"]
ADDED = re.compile(r".*/(lora|adapter)/.*|backbone/prompts/.*")
RNG = np.random.default_rng(0)
BATCH = {
    "image": jnp.asarray(RNG.uniform(-1, 1, (8, 32, 32, 3)), jnp.float32),
    "label": jnp.asarray(np.arange(8) % 3, jnp.int32),
}


def _config_file(name: str, arg: str):
    spec = importlib.util.spec_from_file_location(name, f"{ROOT}/configs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_presets_in_every_config_file():
    c = _config_file("transfer", "strategy=lora,rank=4")
    assert c.model.lora_rank == 4 and c.model.lora_scale == 1.0
    assert c.model.lora_targets == r"backbone/(stage\d+/block\d+/(expand|project)|top)/conv/kernel"
    assert c.policy == (("head/.*", "train"), (".*/lora/.*", "train"), (".*", "frozen"))
    assert c.norm_eval == ("backbone/.*",) and c.pretrained.dont_load == ("head/.*", ".*/lora/.*")
    c = _config_file("transfer", "strategy=vpt,model=vit_ti16,prompts=5")
    assert (c.model.prompts, c.model.deep_prompts, c.norm_eval) == (5, True, ())
    assert c.policy[1] == ("backbone/prompts/.*", "train")
    c = _config_file("segmentation", "strategy=adapter,bottleneck=8")
    assert c.model.adapter_dim == 8 and c.policy[:2] == (
        ("(neck|head)/.*", "train"),
        (".*/adapter/.*", "train"),
    )
    assert c.pretrained.dont_load == ("head/.*", "neck/.*", ".*/adapter/.*")
    # the default rank: about the same share of the backbone on every family
    assert _config_file("transfer", "strategy=lora").model.lora_rank == 2  # EfficientNet-Lite0
    assert _config_file("transfer", "strategy=lora,model=vit_b16").model.lora_rank == 8
    assert _config_file("detection", "strategy=lora,model=resnet50").model.lora_rank == 8


def test_bad_preset_values():
    with pytest.raises(JTransferError) as info:
        _config_file("transfer", "strategy=vpt")
    assert str(info.value) == (
        "strategy 'vpt' (visual prompt tuning) needs a ViT, got model='efficientnet_lite0': "
        "use lora or adapter for other families"
    )
    with pytest.raises(JTransferError, match=r"strategy 'lora' needs rank = a whole .* got 0"):
        _config_file("transfer", "strategy=lora,rank=0")
    with pytest.raises(JTransferError, match=r"strategy 'adapter' needs bottleneck = .* 2.5"):
        _config_file("detection", "strategy=adapter,bottleneck=2.5")


def _vit_weights(directory) -> str:
    """Seeded ViT-Ti/16 weights in jtransfer's layout, as a file `pretrained.load` reads."""
    model = models.build_model("vit_ti16", len(CLASSES))
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), BATCH["image"][:1], train=False)
    )
    shapes = {k: v.shape for k, v in flatten(abstract).items()}
    path = os.path.join(directory, "vit_ti16.safetensors")
    safetensors.numpy.save_file(seeded_state_dict(shapes, 0), path)
    return path


def _run(name: str, strategy: str, knobs: dict, directory) -> dict:
    """Three train steps of `strategy` on `name`, set up as a run sets it up."""
    config = base_config.get_config()
    config.model.name = name
    config.lr = 0.1
    vit = name.startswith("vit")
    config.pretrained.source = _vit_weights(directory) if vit else f"{name}/imagenet"
    presets.apply_strategy(config, strategy, {**presets.STRATEGY_KNOBS, **knobs})
    model = tasks.build(config, CLASSES).build_model()
    variables, manifest = train.initial_variables(model, config, (32, 32, 3))
    step, state = cost.step_and_state(config, variables, len(CLASSES))
    flops = cost.flops(step, state, BATCH)
    for _ in range(3):
        state, metrics = step(state, BATCH)
    assert np.isfinite(metrics["loss"])
    return {
        "config": config,
        "start": variables,
        "manifest": manifest,
        "opt_state": state["opt_state"],
        "end": jax.device_get({k: state[k] for k in ("params", "batch_stats")}),
        "flops": flops,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    return {
        "lora": _run("vit_ti16", "lora", {"rank": 4}, directory),
        "vpt": _run("vit_ti16", "vpt", {"prompts": 3}, directory),
        "adapter": _run("efficientnet_lite0", "adapter", {"bottleneck": 8}, directory),
    }


@pytest.mark.parametrize("strategy", ["lora", "vpt", "adapter"])
def test_only_what_was_added_trains(runs, strategy):
    run = runs[strategy]
    start, end = flatten(run["start"]["params"]), flatten(run["end"]["params"])
    added = sorted(p for p in start if ADDED.fullmatch(p))
    assert added and {f"params/{p}" for p in added} <= set(run["manifest"]["reinitialized"])
    mask = flatten(Policy.from_pairs(run["config"].policy).trainable_mask(run["start"]["params"]))
    trained = sorted(p for p in start if mask[p])
    assert trained == sorted(added + [p for p in start if p.startswith("head/")])
    for p in start:
        if p not in trained:
            np.testing.assert_array_equal(end[p], start[p], err_msg=p)
    moved = [p for p in trained if not np.array_equal(end[p], start[p])]
    assert set(added) & set(moved) and {"head/dense/kernel"} <= set(moved)
    stats = flatten(run["start"].get("batch_stats", {}))  # held in inference mode: untouched
    assert bool(stats) == (strategy == "adapter")
    for p, value in flatten(run["end"]["batch_stats"]).items():
        np.testing.assert_array_equal(value, stats[p], err_msg=p)
    # SGD with momentum: one momentum per trainable value, none for anything frozen; and the
    # schedule's step count
    leaves = jax.tree.leaves(run["opt_state"])
    assert [x.dtype for x in leaves if x.ndim == 0] == [jnp.int32]
    state_size = sum(x.size for x in leaves if x.ndim)
    assert state_size == sum(start[p].size for p in trained)
    if strategy == "lora":  # 12 blocks x (qkv, proj, fc1, fc2) x (A, B) at rank 4, the head
        assert state_size == 12 * 4 * (192 + 576 + 192 + 192 + 192 + 768 + 768 + 192) + 579


def test_the_added_parameters_cost_less_than_full_fine_tuning(runs):
    config = runs["lora"]["config"]
    full_config = cost.strategy_config("vit_ti16", [(".*", "train")])
    start = runs["lora"]["start"]["params"]
    base = {"params": unflatten({k: v for k, v in flatten(start).items() if not ADDED.match(k)})}
    step, state = cost.step_and_state(full_config, base, len(CLASSES))
    full = cost.flops(step, state, BATCH)
    lora, vpt = runs["lora"]["flops"], runs["vpt"]["flops"]
    # no weight gradient of any frozen kernel: about forward + input gradients, 2/3 of a full
    # step; VPT's blocks run on 3 more tokens (8 instead of 5 at 32 px)
    assert lora <= 0.75 * full and vpt <= 0.75 * full * 8 / 5, (lora / full, vpt / full)
    forward = cost.flops(cost.forward(full_config, len(CLASSES)), base, BATCH)
    adapted = cost.flops(cost.forward(config, len(CLASSES)), runs["lora"]["start"], BATCH)
    assert forward < adapted < 1.1 * forward  # the factors cost a little until merged


def test_a_lora_run_exports_merged_weights_the_base_model_loads(runs, tmp_path):
    run = runs["lora"]
    config = copy.deepcopy(run["config"])
    config.model.lora_scale = 0.5  # the export must merge with the run's own scale
    save_run(tmp_path, 3, run["end"])
    with open(tmp_path / "config.json", "w") as f:
        json.dump(json.loads(config.to_json()), f)
    out = tmp_path / "merged.safetensors"
    arrays = export.export(tmp_path, out)
    assert not [k for k in arrays if "/lora/" in k]

    base_model = models.build_model("vit_ti16", len(CLASSES))
    abstract = jax.eval_shape(
        lambda: base_model.init(jax.random.key(0), BATCH["image"][:1], train=False)
    )
    loaded = graft.graft(abstract, pretrained.load(str(out), model="vit_ti16"))[0]
    merged_logits = base_model.apply(loaded, BATCH["image"], train=False)
    adapted = tasks.build(config, CLASSES).build_model()
    adapted_logits = adapted.apply({"params": run["end"]["params"]}, BATCH["image"], train=False)
    np.testing.assert_allclose(merged_logits, adapted_logits, atol=1e-5, rtol=1e-5)
    unmerged = {k: v for k, v in flatten(run["end"]["params"]).items() if "/lora/" not in k}
    differs = flatten(loaded["params"])["backbone/block1/attn/qkv/kernel"]
    assert not np.array_equal(differs, unmerged["backbone/block1/attn/qkv/kernel"])

    os.remove(tmp_path / "config.json")
    with pytest.raises(JTransferError, match="holds LoRA factors, but no config.json"):
        export.export(tmp_path, tmp_path / "again.npz")
