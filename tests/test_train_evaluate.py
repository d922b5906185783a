"""Evaluation counts every example exactly once at any device count: a split of 37 examples (a
multiple of no global batch used here) evaluated by the classification evaluator on meshes of 1,
3 and 8 devices gives the count, the correct predictions and the summed loss of all 37 computed
in one host batch. A duplicated or dropped example would change the loss sum.

The meshes are slices of one subprocess's 8 fake CPU devices (this file run as a script).
"""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
from cli import ROOT, command, env, run

from jtransfer import base_config, data, evaluators, sharding, tasks

N = 37
CASES = ((1, 8), (3, 6), (8, 16))  # (devices, global eval batch)


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        return nn.Dense(3)(x)


def _evaluate_all() -> dict:
    """{devices: (count, correct, loss sum) from `train.evaluate`}, and the host reference."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 5)).astype(np.float32)
    y = rng.integers(0, 3, N).astype(np.int32)
    source = data.ArraySource({"test": (x, y)}, ["a", "b", "c"])
    model = _Linear()
    variables = {"params": model.init(jax.random.PRNGKey(0), x[:1])["params"], "batch_stats": {}}
    logits = model.apply(variables, x)
    out = {
        "reference": [
            N,
            int(np.sum(np.argmax(logits, -1) == y)),
            float(tasks.cross_entropy(logits, y).sum()),
        ]
    }
    config = base_config.get_config()
    config.pp_eval, config.data.eval_split = "", "test"
    task = tasks.build(config, source.class_names)
    for devices, global_batch in CASES:
        mesh = sharding.make_mesh(devices=jax.devices()[:devices])
        config.eval_batch_size = global_batch
        context = evaluators.Context(task, model, source, mesh, config)
        evaluator = evaluators.EVALUATORS["classification"]({}, context)
        result = evaluator.run(jax.device_put(variables, sharding.replicated(mesh)))
        count = result["count"]
        out[devices] = [count, round(result["accuracy"] * count), result["loss"] * count]
    return out


def test_every_example_counts_once_at_1_3_and_8_devices():
    proc = subprocess.run(
        [sys.executable, __file__], cwd=ROOT, env=env(8), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    count, correct, loss = results.pop("reference")
    assert sorted(results) == ["1", "3", "8"]
    for devices, (c, k, s) in results.items():
        assert (c, k) == (count, correct), devices
        assert abs(s - loss) <= 1e-5 * loss, (devices, s, loss)


def test_eval_batch_must_split_over_the_devices(tmp_path):
    out = run(command(tmp_path, tmp_path / "tfds", "--config.eval_batch_size=12"), devices=8)
    assert out.returncode != 0
    assert "eval_batch_size 12 is not divisible by" in out.stderr, out.stderr[-3000:]


if __name__ == "__main__":
    print(json.dumps(_evaluate_all()))
