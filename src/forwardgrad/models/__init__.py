"""Model builders: plain ``nn.Module``s, one per module."""

from .mlp import mlp

__all__ = ["mlp"]
