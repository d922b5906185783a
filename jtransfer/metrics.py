"""Where numbers go: `metrics.jsonl` (one JSON object per write), TensorBoard events, console.

Only process 0 writes, so a multi-host run leaves one copy of everything. The console progress
line carries step, loss, images per second and the estimated time left.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import jax


class MetricWriter:
    def __init__(self, workdir: str, total_steps: int, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.total_steps = total_steps
        self._jsonl = self._tb = None
        if self.enabled:
            import tensorflow as tf  # the input pipeline's TensorFlow writes the events too

            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
            self._scalar = tf.summary.scalar
        self._last = None  # (time, step) of the previous progress line

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        with self._tb.as_default():
            for k, v in values.items():
                self._scalar(k, v, step=step)
        self._tb.flush()

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
