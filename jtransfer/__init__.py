"""jtransfer: transfer learning and fine-tuning of pretrained vision models in JAX/Flax."""

__version__ = "0.1.0"
