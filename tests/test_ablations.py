"""The ablation configs: every `--quick` variant end to end through the sweep command (runner,
collection, findings and plots; not the figures), and what the full variants would run.

The quick variants share the test session's compilation cache (tests/conftest.py), as several
sweeps of one user may (`--jax_cache`), so a step shape two of them share compiles once.
"""

import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from cli import ROOT, env
from shared_data import shared_data

from jtransfer import config_files, data, sweep, sweep_collect
from jtransfer.data import sampling

ABLATIONS = ("freeze", "strategy", "data", "similarity", "models", "lr", "wise_ft")
common = config_files.load(os.path.join(ROOT, "configs", "ablations", "common.py"))


@pytest.fixture(scope="session")
def jax_cache() -> str:
    return os.environ["JAX_COMPILATION_CACHE_DIR"]  # the session's (conftest.py)


@pytest.mark.slow
@pytest.mark.parametrize("name", ABLATIONS)
def test_quick_variant_runs_collects_and_plots(name, tmp_path, jax_cache):
    shared_data("hymenoptera")  # every quick variant runs on it
    workdir = tmp_path / name
    cmd = [
        sys.executable,
        "-m",
        "jtransfer.sweep",
        f"--config=configs/ablations/{name}.py",
        f"--workdir={workdir}",
        "--quick",
        f"--jax_cache={jax_cache}",
    ]
    started = time.time()
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    seconds = time.time() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    planned = sweep.plan(f"configs/ablations/{name}.py", workdir, quick=True)
    with open(workdir / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == len(planned.runs)
    md = (workdir / "results.md").read_text()
    assert "Not finished" not in md and "(the quick variant" in md
    specs = planned.module.get_plots(planned.arg)
    drawn = [s["file"] for s in specs if (workdir / s["file"]).is_file()]
    assert drawn and all(f"![{f}]({f})" in md for f in drawn)
    assert md.count("\n- ") >= 1  # the findings ran on the quick results
    print(f"{name} --quick: {len(planned.runs)} runs in {seconds:.0f} s")


@pytest.mark.parametrize("name", ABLATIONS)
def test_full_variant_plans_distinct_valid_runs(name, tmp_path):
    planned = sweep.plan(f"{ROOT}/configs/ablations/{name}.py", tmp_path)
    assert len(planned.runs) >= 9
    for run in planned.runs:  # the same batch and length rules as a run would apply
        assert (
            0
            < run.config.batch_size
            <= common.train_size(common.parse(run.arg, getattr(planned.module, "OWN", {})))
        )


def test_dataset_table_matches_the_data(tmp_path):
    for name, dataset in common.DATASETS.items():
        if name != "digits":
            shared_data(os.path.basename(dataset["data"]))
        c = common.config(common.parse(f"data={name}"))
        if name == "digits":
            c.data.data_dir = str(tmp_path)
        source = data.build_source(c.data)
        labels = sampling.split_labels(source, c.data.train_split)
        assert tuple(np.bincount(labels)) == dataset["train_per_class"], name
        source.check_split(c.data.eval_split)


def test_lr_findings_judge_the_default_against_seeds_and_the_eval_sets_standard_error():
    lr = config_files.load(os.path.join(ROOT, "configs", "ablations", "lr.py"))

    def row(data, bn, rate, accuracy, std=None, count=298):
        return {
            **{"data": data, "strategy": "full", "bn": bn, "lr": rate, "clip": 1.0, "n": 1},
            **{"eval/accuracy": (accuracy, std), "eval/count": (count, None)},
        }

    def findings(*rows):
        table = sweep_collect.Table(
            ["data", "strategy", "bn", "lr", "clip"], ["eval/accuracy", "eval/count"], list(rows)
        )
        return {f.split(",")[0]: f for f in lr.get_findings(None, table)}

    # 2 sqrt((.949 .051 + .936 .064) / 298) = 3.8 points; 2 sqrt((.95 .05 + .9 .1) / 298) = 4.3
    found = findings(
        row("pets3", "frozen", 0.01, 0.936),  # the default
        row("pets3", "train", 0.01, 0.949),
        row("bees", "frozen", 0.01, 0.90),
        row("bees", "train", 0.1, 0.95, std=0.05),  # twice the seeds' std: 10 points
        row("digits", "frozen", 0.01, 0.525, count=360),
        row("digits", "train", 0.1, 0.958, count=360),
    )
    assert found["pets3"].endswith("1.3 points below (4 of 298 images), noise 3.8: within noise")
    assert found["bees"].endswith("5.0 points below (15 of 298 images), noise 10.0: within noise")
    assert found["digits"].endswith("(156 of 360 images), noise 5.7: NOT within noise")
    assert "best lr 0.1, clip 1, BatchNorm train (0.958)" in found["digits"]
    one_seed = findings(row("bees", "frozen", 0.01, 0.90), row("bees", "train", 0.1, 0.95))
    assert one_seed["bees"].endswith("noise 4.3: NOT within noise")
