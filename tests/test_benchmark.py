"""scripts/benchmark.py's model-FLOPs utilisation: the peak it divides by, per device kind as JAX
names it, and a backend whose `cost_analysis()` reports nothing."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from jtransfer import cost

_spec = importlib.util.spec_from_file_location(
    "benchmark",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "benchmark.py"
    ),
)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


@pytest.mark.parametrize(
    "device_kind, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L4", 121),
        ("NVIDIA L40", 181),  # once matched "L4"
        ("NVIDIA L40S", 362),  # likewise
        ("TPU v4", 275),
        ("TPU v4 lite", 138),
        ("TPU v5 lite", 197),
        ("TPU v5e", 197),  # once matched "TPU v5" (v5p)
        ("TPU v5", 459),
        ("TPU v5p", 459),
        ("TPU v6 lite", 918),
        ("TPU v6e", 918),  # once matched nothing
        ("TPU7x", None),
        ("NVIDIA GeForce RTX 4090", None),
        ("cpu", None),
    ],
)
def test_peak_by_device_kind(device_kind, tflops):
    peak = benchmark._peak_flops(device_kind, None)
    assert peak == (tflops * 1e12 if tflops else None)


def test_peak_given_on_the_command_line_wins():
    assert benchmark._peak_flops("TPU v5 lite", 100.0) == 100e12
    assert benchmark._peak_flops("TPU7x", 2307.0) == 2307e12


class _Uncounted:
    """A jitted function whose compiled program's `cost_analysis()` is None, as on some
    backends."""

    def lower(self, *args):
        return self

    def compile(self):
        return self

    def cost_analysis(self):
        return None


def test_flops_are_none_where_the_backend_counts_none_and_xlas_count_otherwise():
    assert benchmark._flops_or_none(_Uncounted(), 1) is None
    matmul = jax.jit(lambda a, b: a @ b)
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    assert benchmark._flops_or_none(matmul, a, b) == cost.flops(matmul, a, b) == 2 * 8 * 16 * 4
