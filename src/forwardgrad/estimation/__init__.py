"""Estimators: a guess, an engine, a strategy and an aggregation composed into ``.grad``."""

from .estimator import Estimator, cross_entropy_per_example

__all__ = ["Estimator", "cross_entropy_per_example"]
