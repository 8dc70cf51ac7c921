"""Training with measurements at checkpoints (singhal2023/runs.py)."""

import math

import pytest
from torch import nn

from forwardgrad.data import load_dataset
from forwardgrad.io import read_jsonl
from forwardgrad.reproduce.singhal2023 import runs
from forwardgrad.training.config import TrainConfig
from forwardgrad.training.train import initial_model, train

# ---- training in segments --------------------------------------------------------------------


def test_training_in_segments_follows_one_uninterrupted_run(tmp_path):
    data = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", depth=1, width=8, guess="wt", epochs=3, batch_size=256)
    seen = []

    def measure(model: nn.Module, epoch: int) -> dict:
        seen.append(epoch)
        return {"norm": float(model[0].weight.detach().norm())}

    records, metrics = runs.train_with_measurements(cfg, tmp_path / "seg", data, 2, measure)
    assert [r["epoch"] for r in records] == [0, 2, 3] == seen
    whole = train(cfg, tmp_path / "whole", progress=False, data=data)
    assert [m["train_loss"] for m in metrics] == pytest.approx(
        [m["train_loss"] for m in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]
    )
    assert metrics[-1]["train_acc"] == whole.summary["final"]["train_acc"]
    # The start is the model train() starts from.
    assert records[0]["norm"] == pytest.approx(
        float(initial_model(cfg, data)[0].weight.detach().norm())
    )
    # A rerun of a finished run measures nothing again, with or without its checkpoint.
    runs.drop_checkpoints(tmp_path / "seg")
    again, _ = runs.train_with_measurements(cfg, tmp_path / "seg", data, 2, measure)
    assert again == records and seen == [0, 2, 3]


def test_a_diverging_run_ends_its_measurements_instead_of_the_experiment(tmp_path):
    data = load_dataset("digits")
    cfg = TrainConfig(
        dataset="digits", depth=1, width=8, guess="backprop", epochs=3, optimizer="sgd", lr=1e12
    )
    records, metrics = runs.train_with_measurements(cfg, tmp_path, data, 1, lambda m, e: {})
    assert records[-1]["epoch"] < 3 and len(metrics) < 3
    assert math.isnan(runs.final_metric([], "train_acc"))
    assert runs.train_with_measurements(cfg, tmp_path, data, 1, lambda m, e: {}) == (
        records,
        metrics,
    )
