"""Where numbers go: `metrics.jsonl` (one JSON object per write), TensorBoard events, console.

Only process 0 writes and prints (`console.say`), so a multi-host run leaves one copy of
everything and one console. The console progress line carries step, loss, images per second and
the estimated time left.

A resumed run must not log a step twice: the steps after the restored checkpoint were already
logged by the run that was interrupted, and are about to be logged again. So a writer opened at
`resume_step` keeps only the rows up to that step and rebuilds the TensorBoard events from them
(event files can only be appended to), so the two records always agree.

Both go through `jtransfer.files` (and the events through TensorFlow's file systems, which
TensorBoard's own event writer uses when TensorFlow is installed), so a workdir may be a `gs://`
path: the events then land in the bucket as they are flushed, not when the file is closed as
through a FUSE mount. A row is one event holding all its scalars, built as protos by
TensorBoard's `scalar_pb` and queued to the writer's thread: `tf.summary.scalar` costs about a
millisecond of eager TensorFlow per value, which was a third of the cached probe's whole
training of the head.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar.summary import scalar_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from jtransfer import files
from jtransfer.console import say

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def summary(result: Mapping[str, float]) -> str:
    """The headline numbers of an evaluation: 'accuracy 0.9500, loss 0.2100, count 153'.

    Per-class ('iou/cat') and per-seed ('1shot_seed0', '1shot_std') entries are left to the
    files.
    """
    shown = [k for k in result if "/" not in k and "_seed" not in k and not k.endswith("_std")]
    return ", ".join(
        f"{k} {int(result[k])}" if k == "count" else f"{k} {result[k]:.4f}" for k in shown
    )


def read_rows(workdir: str) -> list[dict]:
    """The rows of `workdir/metrics.jsonl`, in order (none if it does not exist)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not files.exists(path):
        return []
    return [json.loads(line) for line in files.read_text(path).splitlines() if line.strip()]


class MetricWriter:
    def __init__(
        self,
        workdir: str,
        total_steps: int,
        resume_step: int = 0,
        enabled: bool | None = None,
    ):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.total_steps = total_steps
        self._jsonl = self._tb = None
        if self.enabled:
            files.makedirs(workdir)
            kept = [row for row in read_rows(workdir) if self._kept(row, resume_step)]
            path = os.path.join(workdir, METRICS_FILE)
            files.write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
            events = os.path.join(workdir, TENSORBOARD_DIR)
            files.rmtree(events)
            self._tb = EventFileWriter(events)
            for row in kept:
                values = {k: v for k, v in row.items() if k != "step" and v is not None}
                self._events(row["step"], values)
            self._tb.flush()
            self._jsonl = files.open_append(path)
        self._last = None  # (time, step) of the previous progress line

    def _kept(self, row: dict, resume_step: int) -> bool:
        """Whether a row logged before the resume stays: every row up to the restored step,
        except the final evaluation's rows, which a run resumed at its last step writes again."""
        if row["step"] < resume_step:
            return True
        final = row["step"] == resume_step == self.total_steps
        return row["step"] == resume_step and not (
            final and any(not k.startswith("train/") for k in row if k != "step")
        )

    def _events(self, step: int, values: Mapping[str, float]) -> None:
        scalars = [value for k, v in values.items() for value in scalar_pb(k, v).value]
        summary = summary_pb2.Summary(value=scalars)
        self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.write_rows([(step, metrics)])

    def write_rows(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """One row per (step, metrics), both records flushed once after the last."""
        if not self.enabled:
            return
        for step, metrics in rows:
            values = {k: float(v) for k, v in metrics.items()}
            # JSON has no NaN: a metric that is undefined (a class absent from the split) is null.
            row = {k: (None if math.isnan(v) else v) for k, v in values.items()}
            self._jsonl.write(json.dumps({"step": step, **row}) + "\n")
            self._events(step, {k: v for k, v in values.items() if not math.isnan(v)})
        self._jsonl.flush()
        self._tb.flush()

    def write_evaluations(
        self, step: int, results: Mapping[str, Mapping[str, float]], final: bool = False
    ) -> None:
        """Rows `{evaluator}/{metric}` and a console line per evaluator."""
        if final:
            say(f"final evaluation at step {step}:")
        for name, result in results.items():
            self.write(step, {f"{name}/{k}": v for k, v in result.items()})
            say(
                f"  {name}: {summary(result)}"
                if final
                else f"step {step:>6}: {name} {summary(result)}"
            )

    def start(self, step: int) -> None:
        """Mark where the rate of the next progress line counts from."""
        self._last = (time.perf_counter(), step)

    def progress(self, step: int, loss: float, batch_size: int, extra: str = "") -> float | None:
        """Print the progress line; returns images/s since the previous call (None the first)."""
        now = time.perf_counter()
        rate = None
        if self._last is not None and step > self._last[1]:
            rate = (step - self._last[1]) * batch_size / (now - self._last[0])
        self._last = (now, step)
        if self.enabled:
            speed = f"{rate:7.1f} img/s" if rate else "    -- img/s"
            eta = ""
            if rate:
                seconds = (self.total_steps - step) * batch_size / rate
                eta = f"  ETA {int(seconds // 60):d}m{int(seconds % 60):02d}s"
            print(
                f"step {step:>6}/{self.total_steps}  loss {loss:.4f}  {speed}{eta}{extra}",
                flush=True,
            )
        return rate

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
