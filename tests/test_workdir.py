"""A workdir on a file system that is not the local disk: what train.py and the metric writer
write there, and a `gs://` workdir that cannot be reached, refused before anything is built.

The files go to TensorFlow's in-memory `ram://` file system: like `gs://`, it is reached only
through `tf.io.gfile`, so an `open` or `os` call left anywhere on the path would not find the
files (it would treat `ram://...` as a local relative path; the tests check that no such local
directory appears). The checkpoints cannot go there (orbax writes arrays with TensorStore, which
has no `ram://`); tests/test_checkpoint.py runs orbax's Cloud Storage commit protocol on the
local disk instead.

No test reaches the network. The `gs://` workdir that cannot be reached is real (TensorFlow's GCS
file system, in a subprocess) with every HTTP request sent to a proxy at a closed local port and
no credentials, so each request fails at once; a bucket that does not exist, or a bucket whose
metadata the credentials may not read, cannot be produced offline and is simulated by replacing
`tf.io.gfile.exists`.
"""

import json
import os
import subprocess
import time

import ml_collections
import pytest
import tensorflow as tf
from cli import command, env

from jtransfer import files, metrics, train
from jtransfer.checkpoint import ResumeConfigError
from jtransfer.files import WorkdirError


@pytest.fixture
def ram(tmp_path, monkeypatch):
    """A fresh `ram://` workdir; the working directory is an empty local one, so that a local
    `ram:/...` written by mistake would show."""
    monkeypatch.chdir(tmp_path)
    yield f"ram://{tmp_path.name}/run"
    assert os.listdir(tmp_path) == [], "something wrote the workdir as a local path"


def test_config_json_and_final_eval_round_trip_and_guard_the_workdir(ram):
    config = ml_collections.ConfigDict({"seed": 0, "lr": 0.1, "log_every": 5})
    files.makedirs(ram)
    train.write_json(ram, "config.json", json.loads(config.to_json()))
    assert train._finished_run(ram, config, 10) is None  # unfinished: no final_eval.json
    final = {"step": 10, "train_seconds": 1.5, "eval": {"accuracy": 0.75}}
    train.write_json(ram, "final_eval.json", final)

    assert train._finished_run(ram, config, 10) == final
    assert train._finished_run(ram, config, 12) is None  # the same config, trained longer
    harmless = ml_collections.ConfigDict({"seed": 0, "lr": 0.1, "log_every": 1})
    assert train._finished_run(ram, harmless, 10) == final
    with pytest.raises(ResumeConfigError, match=r"lr: 0.1 -> 0.5; seed: 0 -> 1"):
        train._finished_run(ram, ml_collections.ConfigDict({"seed": 1, "lr": 0.5}), 10)
    assert sorted(tf.io.gfile.listdir(ram)) == ["config.json", "final_eval.json"]  # no .tmp


def _events(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """Tag -> (step, value) of the TensorBoard scalars under workdir, in the order written."""
    out: dict[str, list[tuple[int, float]]] = {}
    directory = os.path.join(workdir, metrics.TENSORBOARD_DIR)
    for name in sorted(tf.io.gfile.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                scalar = float(tf.make_ndarray(value.tensor))
                out.setdefault(value.tag, []).append((event.step, scalar))
    return out


def test_metrics_and_events_resume_on_ram_keeping_each_step_once(ram):
    writer = metrics.MetricWriter(ram, total_steps=4, enabled=True)
    for step in range(1, 5):
        writer.write(step, {"train/loss": 1 / step})
    writer.close()
    assert [r["step"] for r in metrics.read_rows(ram)] == [1, 2, 3, 4]

    writer = metrics.MetricWriter(ram, total_steps=4, resume_step=2, enabled=True)
    assert metrics.read_rows(ram) == [
        {"step": 1, "train/loss": 1.0},
        {"step": 2, "train/loss": 0.5},
    ]
    # the rows of a compiled chunk of steps, written at once
    writer.write_rows(
        [(3, {"train/loss": 0.25, "eval/accuracy": float("nan")}), (4, {"train/loss": 0.125})]
    )
    assert metrics.read_rows(ram)[-2:] == [
        {"step": 3, "train/loss": 0.25, "eval/accuracy": None},
        {"step": 4, "train/loss": 0.125},
    ]
    writer.close()
    assert _events(ram) == {"train/loss": [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125)]}


def test_files_are_written_whole_and_removed_on_ram(ram):
    path = os.path.join(ram, "a.json")
    files.makedirs(ram)
    files.write_json(path, {"x": [1, 2]})
    files.write_json(path, {"x": [3]})  # over an existing file
    assert files.read_json(path) == {"x": [3]}
    assert tf.io.gfile.listdir(ram) == ["a.json"]
    files.rmtree(os.path.join(ram, "absent"))  # nothing to remove is not an error
    files.rmtree(ram)
    assert not files.exists(ram)


def test_is_url():
    assert files.is_url("gs://bucket/runs/a") and files.is_url("ram://x")
    assert not files.is_url("/tmp/run") and not files.is_url("runs/gs:/x")


def test_a_local_workdir_is_not_probed(tmp_path):
    files.check_workdir(str(tmp_path / "new" / "run"))
    assert os.listdir(tmp_path) == []


def test_a_scheme_without_a_file_system_is_one_line_naming_it():
    with pytest.raises(WorkdirError) as e:
        files.check_workdir("s3://bucket/run")
    assert str(e.value) == (
        "cannot reach the workdir s3://bucket/run: File system scheme 's3' not implemented "
        "(file: 's3://bucket/run')"
    )


def _fake_gcs(monkeypatch, answers: dict):
    """`tf.io.gfile.exists` answering from `answers` (path -> bool or exception)."""
    asked = []

    def exists(path):
        asked.append(path)
        answer = answers[path]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(tf.io.gfile, "exists", exists)
    return asked


def test_a_bucket_that_does_not_exist_is_named_simulated(monkeypatch):
    asked = _fake_gcs(
        monkeypatch, {"gs://no-such-bucket/runs/a": False, "gs://no-such-bucket": False}
    )
    with pytest.raises(WorkdirError) as e:
        files.check_workdir("gs://no-such-bucket/runs/a")
    assert str(e.value) == (
        "the workdir gs://no-such-bucket/runs/a is in the bucket gs://no-such-bucket, which does "
        "not exist (or these credentials cannot see it): create it, or fix the path"
    )
    assert asked == ["gs://no-such-bucket/runs/a", "gs://no-such-bucket"]


def test_missing_credentials_are_one_line_simulated(monkeypatch):
    denied = tf.errors.PermissionDeniedError(None, None, "Error executing an HTTP request:\n 401")
    _fake_gcs(monkeypatch, {"gs://b/runs/a": denied})
    with pytest.raises(WorkdirError) as e:
        files.check_workdir("gs://b/runs/a")
    assert str(e.value) == (
        "cannot reach the workdir gs://b/runs/a: Error executing an HTTP request: 401; on a Cloud "
        "TPU VM its service account needs read/write access to the bucket, elsewhere run "
        "`gcloud auth application-default login`"
    )


def test_object_access_without_the_buckets_metadata_passes_simulated(monkeypatch):
    denied = tf.errors.PermissionDeniedError(None, None, "storage.buckets.get denied")
    asked = _fake_gcs(monkeypatch, {"gs://b/runs/a": False, "gs://b": denied})
    files.check_workdir("gs://b/runs/a")
    assert asked == ["gs://b/runs/a", "gs://b"]


def test_unreachable_gs_workdir_stops_the_cli_before_anything_is_built(tmp_path):
    """Real TensorFlow GCS file system, no credentials, every request refused locally."""
    workdir = "gs://nonexistent-bucket-jtransfer-test/runs/a"
    offline = env()
    for name in ("no_proxy", "NO_PROXY", "GOOGLE_APPLICATION_CREDENTIALS"):
        offline.pop(name, None)
    offline.update(
        https_proxy="http://127.0.0.1:9",  # port 9 (discard): connection refused at once
        http_proxy="http://127.0.0.1:9",
        NO_GCE_CHECK="True",  # no GCE metadata server to ask for a token
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),  # no gcloud application-default credentials
        GCS_RETRY_CONFIG_MAX_RETRIES="0",
    )
    began = time.perf_counter()
    out = subprocess.run(
        command(workdir, str(tmp_path / "tfds")),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=offline,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - began
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert lines[0].startswith(f"error: cannot reach the workdir {workdir}: "), lines[0]
    assert "Could not connect to server" in lines[0]
    assert out.stdout == ""  # nothing built, nothing trained
    assert not os.path.exists(tmp_path / "tfds")  # the dataset was not even opened
    assert seconds < 120
