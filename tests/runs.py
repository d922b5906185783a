"""Checkpoints shaped like a jtransfer run's, for the tests that read runs back."""

import os

import jax
import numpy as np
import optax

from jtransfer.checkpoint import Checkpointer


def save_run(workdir, step: int, variables: dict) -> None:
    """Saves a train state like train.py's at `step`, with fields a reader must not need."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    ckpt.save(
        step,
        {
            "step": np.int32(step),
            "params": variables["params"],
            "batch_stats": variables["batch_stats"],
            "opt_state": optax.sgd(0.1, momentum=0.9).init(variables["params"]),
            "rng": jax.random.PRNGKey(1),
            "phase": np.int32(2),
        },
    )
    ckpt.close()
