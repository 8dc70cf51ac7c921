"""Command line: ``forwardgrad COMMAND``, one module per command (``main`` wires them)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
