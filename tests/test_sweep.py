"""The sweep runner without training: run names and arguments, the checks before any run, the
results (mean ± std over seeds, CSV, markdown, plots) from run directories made here, and every
bad input as one line before anything runs."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
from cli import ROOT, env, run, run_tracing_imports
from images import dark_and_light
from sweeps import sweep_command, write_config

from jtransfer import config_args, config_files, sweep, sweep_collect, sweep_launch
from jtransfer.errors import JTransferError


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return dark_and_light(tmp_path_factory.mktemp("images"))  # 8 train images per class


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"strategy": "lp_ft", "seed": 1}, "strategy=lp_ft,seed=1"),
        ({"lr": 0.001, "clip": 1.0, "percent": 5}, "lr=0.001,clip=1,percent=5"),
        ({"fewshot": [1, 5, 10], "alphas": (0.0, 0.5)}, "fewshot=1-5-10,alphas=0-0.5"),
        (
            {"data": "../shared/data/x y", "ok": True, "lp": None},
            "data=.._shared_data_x_y,ok=True,lp=None",
        ),
        ({}, "default"),
    ],
)
def test_run_names_are_the_overrides_readable_and_stable(overrides, name):
    assert sweep.run_name(overrides) == name


def test_run_arguments_parse_back_to_the_override_values():
    values = {
        "a": "lp_ft",
        "b": "1",
        "c": "x,y",
        "d": 0.1,
        "e": [1, 5],
        "f": None,
        "g": True,
        "h": "../shared/data/hymenoptera",
        "i": (0.0, 0.25),
    }
    text = config_files.format_arg(values)
    assert text.startswith("a=lp_ft,b='1',c='x,y',d=0.1,e=[1, 5],f=None,g=True,h=../shared")
    assert config_args.parse(text, dict.fromkeys(values)) == values
    with pytest.raises(JTransferError, match="not a Python literal"):
        config_files.format_arg({"a": object()})


def test_each_run_gets_the_sweep_argument_and_its_overrides(tmp_path, folder):
    config = write_config(tmp_path, folder, [{"strategy": "linear_probe", "seed": 1}, {"seed": 2}])
    planned = sweep.plan(f"{config}:steps=3", tmp_path / "w", quick=True)
    assert [r.name for r in planned.runs] == ["strategy=linear_probe,seed=1", "seed=2"]
    assert planned.runs[0].arg == "steps=3,quick=True,strategy=linear_probe,seed=1"
    first, second = (r.config for r in planned.runs)
    assert (first.seed, first.total_steps, first.lr, first.policy[-1]) == (
        1,
        3,
        0.1,
        (".*", "frozen"),
    )
    assert (second.seed, second.lr, second.policy) == (2, 0.01, ((".*", "train"),))
    command = planned.command(planned.runs[0], cpus=[1])
    assert command[1:4] == ["-m", "jtransfer.sweep_run", f"--cache_dir={tmp_path}/w/jax_cache"]
    assert command[-3:] == [
        "--",
        f"--config={config}:steps=3,quick=True,strategy=linear_probe,seed=1",
        f"--workdir={tmp_path}/w/runs/strategy=linear_probe,seed=1",
    ]
    assert "--cpus=1" in command


@pytest.mark.parametrize(
    "runs, message",
    [
        (
            [{"x": "a/b"}, {"x": "a_b"}],
            r"runs 0 \{'x': 'a/b'\} and 1 \{'x': 'a_b'\} would share "
            r"the workdir name 'x=a_b'",
        ),
        (
            [{"seed": 0}, {"stratgy": "full"}],
            r"run stratgy=full: unknown config argument "
            r"'stratgy'; did you mean 'strategy'\?",
        ),
        ([], "get_sweep must return a non-empty list of dicts"),
    ],
)
def test_bad_sweeps_are_refused_when_planned(tmp_path, folder, runs, message):
    with pytest.raises(JTransferError, match=message):
        sweep.plan(write_config(tmp_path, folder, runs), tmp_path / "w")


@pytest.mark.parametrize(
    "runs, message",
    [
        (
            [{"shots": 9}],
            r"run shots=9: data.shots_per_class=9, but split 'train' of image "
            r"folder .* class 'dark' \(8\), 'light' \(8\)",
        ),
        (
            [{"seed": 0}, {"percent": 150}],
            r"run percent=150: data.percent_per_class must be in "
            r"\(0, 100\]",
        ),
        (
            [{"percent": 10}],
            r"run percent=10: the training split has 2 examples, fewer than one "
            r"batch of 4",
        ),
    ],
)
def test_bad_data_is_refused_before_any_run(tmp_path, folder, runs, message):
    planned = sweep.plan(write_config(tmp_path, folder, runs), tmp_path / "w")
    with pytest.raises(JTransferError, match=message):
        sweep.preflight(planned)


def test_a_run_workdir_of_another_config_is_refused(tmp_path, folder):
    planned = sweep.plan(write_config(tmp_path, folder, [{"seed": 0}]), tmp_path / "w")
    os.makedirs(planned.run_dir(planned.runs[0]))
    saved = json.loads(planned.runs[0].config.to_json())
    saved["lr"] = 0.5
    with open(os.path.join(planned.run_dir(planned.runs[0]), "config.json"), "w") as f:
        json.dump(saved, f)
    with pytest.raises(JTransferError, match=r"run seed=0: the workdir holds .* lr: 0.5 -> 0.01"):
        sweep.preflight(planned)


def test_cpu_shares_are_disjoint_and_even():
    assert sweep_launch.cpu_shares([0, 1], 2) == [[0], [1]]
    assert sweep_launch.cpu_shares([4, 0, 1, 2, 3], 2) == [[0, 1, 2], [3, 4]]
    assert sweep_launch.cpu_shares([0, 1], 3) == [[0], [1], [0]]
    assert sweep_launch.cpu_shares([0, 1, 2, 3], 1) == [[0, 1, 2, 3]]


def _fake_run(planned, run, accuracy, rates, compile_seconds):
    workdir = planned.run_dir(run)
    os.makedirs(workdir)
    final = {
        "step": 6,
        "train_seconds": 10.0 * accuracy,
        "eval": {"accuracy": accuracy, "loss": 1 - accuracy, "count": 10},
    }
    with open(os.path.join(workdir, "final_eval.json"), "w") as f:
        json.dump(final, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step, rate in enumerate(rates):
            f.write(json.dumps({"step": step, "train/img_per_sec": rate}) + "\n")
    os.makedirs(os.path.dirname(planned.log(run, ".jsonl")), exist_ok=True)
    with open(planned.log(run, ".jsonl"), "w") as f:
        for seconds in compile_seconds:
            f.write(json.dumps({"exit": 0, "compile_seconds": seconds, "cache_hits": 2}) + "\n")


def test_results_are_the_mean_and_std_over_seeds_with_plots(tmp_path, folder):
    runs = [{"strategy": s, "seed": k} for s in ("full", "linear_probe") for k in (0, 1)]
    runs.append({"strategy": "bitfit", "seed": 0})
    planned = sweep.plan(write_config(tmp_path, folder, runs), tmp_path / "w")
    accuracies = {"full": (0.7, 0.8), "linear_probe": (0.9, None), "bitfit": (0.6,)}
    for r in planned.runs:
        value = accuracies[r.overrides["strategy"]][r.overrides["seed"]]
        if value is not None:  # linear_probe seed 1 has not finished
            _fake_run(planned, r, value, rates=[1.0, 30.0, 50.0, 40.0], compile_seconds=[3, 2])
    report = sweep_collect.collect(planned)

    assert report.missing == ["strategy=linear_probe,seed=1"]
    assert report.table.keys == ["strategy"]
    full, probe, bitfit = report.table.rows
    assert full["n"] == 2 and full["eval/accuracy"] == pytest.approx(
        (0.75, np.std([0.7, 0.8], ddof=1))
    )
    assert probe["n"] == 1 and probe["eval/accuracy"] == (0.9, None)
    assert full["img_per_sec"] == (40.0, 0.0)  # the median after the first (compiling) rate
    assert full["compile_seconds"] == (5.0, 0.0) and full["cache_hits"] == (4.0, 0.0)
    assert report.table.mean("eval/accuracy", strategy="bitfit") == 0.6
    with open(tmp_path / "w" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["full", "linear_probe", "bitfit"]
    assert float(rows[0]["eval/accuracy_mean"]) == pytest.approx(0.75)
    assert float(rows[0]["eval/accuracy_std"]) == pytest.approx(0.0707107, abs=1e-6)
    assert rows[1]["eval/accuracy_std"] == ""
    with open(tmp_path / "w" / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    md = (tmp_path / "w" / "results.md").read_text()
    assert "| full | 2 | 0.750 ± 0.071 | 40.0 ± 0.0 | 7.500 ± 0.707 | 5.000 ± 0.000 |" in md
    assert "| linear_probe | 1 | 0.900 | 40.0 | 9.000 | 5.000 |" in md
    assert "Not finished: strategy=linear_probe,seed=1." in md
    assert report.plots == ["accuracy.png"] and "![accuracy.png](accuracy.png)" in md
    with open(tmp_path / "w" / "accuracy.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_points_follow_the_spec():
    table = sweep_collect.Table(
        keys=["data", "strategy", "model"],
        metrics=["eval/accuracy", "wise_ft_0/accuracy", "wise_ft_0.5/accuracy"],
        rows=[
            {
                "data": "bees",
                "strategy": "full",
                "model": "m0",
                "n": 2,
                "eval/accuracy": (0.9, 0.01),
                "wise_ft_0/accuracy": (0.8, None),
                "wise_ft_0.5/accuracy": (0.95, 0.02),
            },
            {
                "data": "bees",
                "strategy": "probe",
                "model": "m1",
                "n": 1,
                "eval/accuracy": (0.7, None),
            },
        ],
    )
    spec = {
        "x": "model",
        "x_numbers": {"m0": 75.1, "m1": 76.7},
        "y": "eval/accuracy",
        "series": "strategy",
        "panels": "data",
    }
    assert sweep_collect._points(table, spec) == {
        "bees": {"full": [(75.1, 0.9, 0.01)], "probe": [(76.7, 0.7, 0.0)]}
    }
    wise = {
        "x": "alpha",
        "x_values": (0.0, 0.5),
        "y": "wise_ft_{x}/accuracy",
        "where": {"strategy": "full"},
    }
    assert sweep_collect._points(table, wise) == {
        None: {None: [(0.0, 0.8, 0.0), (0.5, 0.95, 0.02)]}
    }


def _one_error_line(out, message: str):
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr


@pytest.mark.parametrize(
    "runs, flags, message, checked_by_trainer",
    [
        ([{"x": "a/b"}, {"x": "a_b"}], [], "would share the workdir name 'x=a_b'", False),
        ([{"stratgy": "full"}], [], "unknown config argument 'stratgy'", False),
        (
            [{"percent": 0}],
            [],
            "data.percent_per_class must be in (0, 100] (100: all), got 0.0",
            True,
        ),
        ([{"shots": 20}], [], "data.shots_per_class=20, but split 'train'", True),
        ([{"seed": 0}], ["--launcher=slurm"], "submitit package, which is not installed", False),
    ],
)
def test_bad_input_is_one_line_and_nothing_runs(
    tmp_path, folder, runs, flags, message, checked_by_trainer
):
    """Each refused before any run starts; what the trainer need not check, before TensorFlow
    is imported (the trainer imports it)."""
    # A `submitit` that cannot be imported, as when the package is not installed.
    (tmp_path / "hide" / "submitit").mkdir(parents=True)
    (tmp_path / "hide" / "submitit" / "__init__.py").write_text("raise ImportError('hidden')\n")
    config = write_config(tmp_path, folder, runs)
    cmd = sweep_command(config, tmp_path / "w", *flags)
    with mock.patch.dict(os.environ, PYTHONPATH=str(tmp_path / "hide")):
        out, imported = run_tracing_imports(cmd)
    _one_error_line(out, message)
    assert not (tmp_path / "w" / "runs").exists()
    assert "jax" in imported and ("tensorflow" in imported) == checked_by_trainer


def test_print_launcher_prints_one_command_per_run_left(tmp_path, folder):
    config = write_config(tmp_path, folder, [{"seed": 0}, {"seed": 1}, {"seed": 2}])
    planned = sweep.plan(config, tmp_path / "w")
    _fake_run(planned, planned.runs[1], 0.5, rates=[1.0], compile_seconds=[1.0])  # finished
    out = run(sweep_command(config, tmp_path / "w", "--launcher=print"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(
        line.startswith("python -m jtransfer.sweep_run ") for line in lines
    )
    assert "--workdir=" + str(tmp_path / "w" / "runs" / "seed=0") in lines[0]
    assert "seed=2" in lines[1] and "1 of 3 runs finished" in out.stderr


def test_results_script_writes_every_section_from_the_sweeps(tmp_path, folder):
    root = tmp_path / "ablations"
    planned = sweep.plan(write_config(tmp_path, folder, [{"seed": 0}, {"seed": 1}]), root / "data")
    sweep.write_manifest(planned, quick=False)
    for r, accuracy in zip(planned.runs, (0.625, 0.875), strict=True):
        _fake_run(planned, r, accuracy, rates=[1.0, 2.0], compile_seconds=[1.0])
    docs = tmp_path / "docs"
    cmd = [sys.executable, "scripts/results.py", f"--root={root}", f"--docs={docs}"]
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = (docs / "RESULTS.md").read_text()
    assert text.startswith("# Results: what transfer learning buys, measured")
    assert f"python scripts/results.py --root={root}" in text
    assert "| 2 | 0.750 ± 0.177 |" in text  # the two runs' mean and sample std
    assert "![accuracy.png](results/data/accuracy.png)" in text
    assert (docs / "results" / "data" / "accuracy.png").is_file()
    for name in ("freeze", "strategy", "similarity", "models", "lr", "wise_ft"):
        command = f"python -m jtransfer.sweep --config=configs/ablations/{name}.py"
        assert f"## {name}\n\nNot run yet: `{command}" in text


def test_results_script_rewrites_only_the_named_sections(tmp_path, folder):
    root, docs = tmp_path / "ablations", tmp_path / "docs"
    cmd = [sys.executable, "scripts/results.py", f"--root={root}", f"--docs={docs}"]
    out = subprocess.run([*cmd, "--ablations", "lr"], cwd=ROOT, env=env(), capture_output=True)
    assert out.returncode == 2 and out.stderr.decode().count("\n") == 1, out.stderr
    assert b"RESULTS.md does not exist" in out.stderr and not docs.exists()

    for name in ("data", "lr"):
        planned = sweep.plan(write_config(tmp_path, folder, [{"seed": 0}]), root / name)
        sweep.write_manifest(planned, quick=False)
        _fake_run(planned, planned.runs[0], 0.25, rates=[1.0], compile_seconds=[1.0])
    assert subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True).returncode == 0
    before = (docs / "RESULTS.md").read_text()
    shutil.rmtree(root / "data")  # its section stays as it was
    shutil.rmtree(root / "lr")  # rerun, with another result
    planned = sweep.plan(write_config(tmp_path, folder, [{"seed": 0}]), root / "lr")
    sweep.write_manifest(planned, quick=False)
    _fake_run(planned, planned.runs[0], 0.5, rates=[1.0], compile_seconds=[1.0])
    out = subprocess.run([*cmd, "--ablations", "lr"], cwd=ROOT, env=env(), capture_output=True)
    assert out.returncode == 0, out.stderr
    after = (docs / "RESULTS.md").read_text()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"Runs finished {day}.\n" in after and "| 1 | 0.500 |" in after
    assert before.count("| 1 | 0.250 |") == 2 and after.count("| 1 | 0.250 |") == 1
    old, new = before.split("\n## "), after.split("\n## ")
    assert len(old) == len(new) == 8
    changed = [i for i in range(1, 8) if old[i] != new[i]]
    assert changed == [6]  # lr, the sixth ablation, and nothing else


def test_slurm_parameters_submitit_does_not_know_are_refused_before_submitting(tmp_path, folder):
    planned = sweep.plan(write_config(tmp_path, folder, [{"seed": 0}]), tmp_path / "w")
    with pytest.raises(
        JTransferError,
        match=r"--slurm parameters \{'slurm_partitio': 'gpu'\}: "
        r"Unknown argument 'partitio' for executor 'slurm'",
    ):
        sweep_launch.slurm(planned, planned.runs, {"slurm_partitio": "gpu"}, cluster="local")
    assert not (tmp_path / "w" / "runs").exists()
