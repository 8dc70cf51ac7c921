"""A run measured at chosen epochs: the trajectory of one uninterrupted run, resumed and
shared by experiments (training/measured.py)."""

import pytest
import torch

from forwardgrad.reproduce.wang2025 import common, training
from forwardgrad.training.ensure import ensure_trained
from forwardgrad.training.measured import measured_run, model_at
from forwardgrad.training.train import read_config


def test_segmented_run_follows_the_uninterrupted_trajectory(tmp_path):
    budget = common.Budget(epochs=3, seeds=1, train_subset=512, test_subset=64)
    data = training.dataset(budget)
    cfg = training.config(common.WT, 8, 3, seed=0)
    straight = ensure_trained(cfg, tmp_path / "straight", 3, data=data)

    seen: list[float] = []

    def measure(model: torch.nn.Module, epoch: int) -> dict:
        seen.append(float(model[0].weight.detach().sum()))
        return {"weight_sum": seen[-1]}

    summary, points = measured_run(
        cfg, tmp_path / "segments", data, (0, 1, 3), measure, "t.json", True
    )
    assert sorted(points) == [0, 1, 3] and len(seen) == 3
    for key in ("train_acc", "train_loss", "test_acc"):
        assert summary["final"][key] == pytest.approx(straight["final"][key], rel=1e-6)
    final = model_at(cfg, tmp_path / "segments", data, 3)
    assert float(final[0].weight.detach().sum()) == pytest.approx(seen[-1])
    assert float(model_at(cfg, tmp_path / "straight", data, 3)[0].weight.detach().sum()) == (
        pytest.approx(seen[-1], rel=1e-6)
    )
    # Run again: cached measurements, nothing retrained.
    seen.clear()
    again, cached = measured_run(
        cfg, tmp_path / "segments", data, (0, 1, 3), measure, "t.json", True
    )
    assert not seen and cached == points and again["steps"] == summary["steps"]
    # Another experiment sharing the finished run measures its earlier epochs from the kept
    # snapshots, without retraining: the same models as seen along the way.
    shared, other_points = measured_run(
        cfg, tmp_path / "segments", data, (0, 1, 3), measure, "other.json", True
    )
    assert seen == [points[e]["weight_sum"] for e in (0, 1, 3)]
    assert sorted(other_points) == [0, 1, 3] and shared["steps"] == summary["steps"]
    # Without a snapshot an epoch the run has passed cannot be measured: a clear error.
    with pytest.raises(RuntimeError, match="no snapshot of epoch 2"):
        model_at(cfg, tmp_path / "segments", data, 2)
    # A run of other settings in the same folder is refused.
    other = training.config(common.WT, 16, 3, seed=0)
    with pytest.raises(ValueError, match="other settings"):
        ensure_trained(other, tmp_path / "straight", 3, data=data)
    assert read_config(tmp_path / "straight")["width"] == 8
