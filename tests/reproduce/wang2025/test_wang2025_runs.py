"""Training in segments: the trajectory of one uninterrupted run, resumed and shared."""

import pytest
import torch

from forwardgrad.reproduce.wang2025 import common, runs, training
from forwardgrad.training.train import read_config


def test_segmented_run_follows_the_uninterrupted_trajectory(tmp_path):
    budget = common.Budget(epochs=3, seeds=1, train_subset=512, test_subset=64)
    data = training.dataset(budget)
    cfg = training.config(common.WT, 8, 3, seed=0)
    straight = runs.train_to(cfg, tmp_path / "straight", data, 3)

    seen: list[float] = []

    def measure(model: torch.nn.Module) -> dict:
        seen.append(float(model[0].weight.detach().sum()))
        return {"weight_sum": seen[-1]}

    summary, points = runs.measured_run(cfg, tmp_path / "segments", data, (0, 1, 3), "t", measure)
    assert sorted(points) == [0, 1, 3] and len(seen) == 3
    for key in ("train_acc", "train_loss", "test_acc"):
        assert summary["final"][key] == pytest.approx(straight["final"][key], rel=1e-6)
    final = runs.checkpoint_model(cfg, tmp_path / "segments", data, 3)
    assert float(final[0].weight.detach().sum()) == pytest.approx(seen[-1])
    assert float(
        runs.checkpoint_model(cfg, tmp_path / "straight", data, 3)[0].weight.detach().sum()
    ) == (pytest.approx(seen[-1], rel=1e-6))
    # Run again: cached measurements, nothing retrained.
    seen.clear()
    again, cached = runs.measured_run(cfg, tmp_path / "segments", data, (0, 1, 3), "t", measure)
    assert not seen and cached == points and again["steps"] == summary["steps"]
    # Another experiment sharing the finished run measures its earlier epochs from the kept
    # snapshots, without retraining: the same models as seen along the way.
    shared, other_points = runs.measured_run(
        cfg, tmp_path / "segments", data, (0, 1, 3), "other", measure
    )
    assert seen == [points[e]["weight_sum"] for e in (0, 1, 3)]
    assert sorted(other_points) == [0, 1, 3] and shared["steps"] == summary["steps"]
    # Without a snapshot an epoch the run has passed cannot be measured: a clear error.
    with pytest.raises(RuntimeError, match="no snapshot of epoch 2"):
        runs.checkpoint_model(cfg, tmp_path / "segments", data, 2)
    # A run of other settings in the same folder is refused.
    other = training.config(common.WT, 16, 3, seed=0)
    with pytest.raises(ValueError, match="other settings"):
        runs.train_to(other, tmp_path / "straight", data, 3)
    assert read_config(tmp_path / "straight")["width"] == 8
