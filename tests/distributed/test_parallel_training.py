"""Training over two processes on 127.0.0.1: the one-process metrics, rank 0's folder only,
and clear, bounded stops when a process fails."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from processes import check_all_succeeded, launch

from forwardgrad.cli import main

HERE = Path(__file__).resolve().parent
TINY = ["--dataset", "digits", "--depth", "1", "--width", "16", "--batch-size", "128"]
TINY += ["--threads", "1", "--no-progress", "--lr", "0.003"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _close(a: list[dict], b: list[dict], keys=("train_loss", "test_loss")) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        for key in keys:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-7), (key, ra, rb)
        assert ra["train_acc"] == pytest.approx(rb["train_acc"], abs=2e-3)


def _torchrun_like(args: list[str], **kwargs):
    return launch(["-m", "forwardgrad", "train", *args], **kwargs)


@pytest.mark.parametrize(
    "flags",
    [
        ["--parallel", "tangents", "--guess", "activation", "--tangents", "4"],
        ["--parallel", "data", "--guess", "weight", "--tangents", "2"],
    ],
    ids=["tangents", "data-weight-space"],
)
def test_two_processes_train_to_the_one_process_metrics(tmp_path, flags):
    """Exact modes: the same metrics as one process, with only process 0 writing."""
    args = [*TINY, *flags, "--aggregate", "projection", "--epochs", "2"]
    check_all_succeeded(_torchrun_like([*args, "--out", str(tmp_path / "two")]))
    assert main(["train", *args, "--out", str(tmp_path / "one")]) == 0
    _close(_metrics(tmp_path / "two"), _metrics(tmp_path / "one"))
    record = json.loads((tmp_path / "two" / "config.json").read_text())
    assert record["processes"]["processes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # nothing else written


def test_a_data_split_of_per_example_tangents_trains_and_resumes_on_one_process(tmp_path):
    """Activity tangents per shard: not the one-process draw, but the processes stay identical
    (checked every step here) and the loss falls; the run then resumes on one process."""
    run = tmp_path / "run"
    args = [*TINY, "--parallel", "data", "--guess", "wt", "--tangents", "2", "--epochs", "2"]
    check_all_succeeded(_torchrun_like([*args, "--checksum-every", "1", "--out", str(run)]))
    rows = _metrics(run)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] < 2.4
    assert main(["train", "--resume", str(run), "--epochs", "3", "--parallel", "none"]) == 0
    assert [r["epoch"] for r in _metrics(run)] == [1, 2, 3]


def test_a_run_resumes_with_another_process_count_and_matches(tmp_path):
    """Two epochs on one process, the third on two (tangent split): the three-epoch
    one-process run's metrics."""
    args = [*TINY, "--guess", "wt", "--tangents", "2", "--aggregate", "projection"]
    assert main(["train", *args, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *args, "--epochs", "2", "--out", str(tmp_path / "split")]) == 0
    resume = ["--resume", str(tmp_path / "split"), "--epochs", "3", "--parallel", "tangents"]
    check_all_succeeded(_torchrun_like(resume))
    _close(_metrics(tmp_path / "split"), _metrics(tmp_path / "whole"))
    record = json.loads((tmp_path / "split" / "config.json").read_text())
    assert record["resumed"][0]["processes"]["processes"] == 2


def _api_run(tmp_path, fault: str | None = None, timeout_s: float = 60, **env):
    settings = {
        "dataset": "digits",
        "depth": 1,
        "width": 16,
        "batch_size": 128,
        "epochs": 3,
        "threads": 1,
        "guess": "activation",
        "tangents": 2,
        "parallel": "tangents",
        "parallel_timeout": timeout_s,
    }
    run = tmp_path / "run"
    extra = {1: {"FAULT": fault or "", "FAULT_RANK": "1", **env}}
    finished = launch(
        [str(HERE / "train_worker.py"), str(run), json.dumps(settings)], extra_env=extra
    )
    return run, finished


def _checkpoint_epoch(run: Path) -> int:
    import torch

    return int(torch.load(run / "checkpoint.pt", weights_only=False)["epoch"])


def test_a_killed_process_stops_the_other_at_once_keeping_the_last_checkpoint(tmp_path):
    run, (leader, follower) = _api_run(tmp_path, "die")
    assert follower.returncode == 7
    assert leader.returncode == 1
    assert "the exchange of" in leader.output and "has stopped or hangs" in leader.output
    assert "The checkpoint of epoch 1 is kept" in leader.output
    assert _checkpoint_epoch(run) == 1
    assert not list(run.glob(".*.tmp"))  # no partial checkpoint
    assert leader.seconds - follower.seconds < 10  # at once, not after the 60 s timeout


def test_a_hung_process_stops_the_other_within_the_timeout(tmp_path):
    run, (leader, follower) = _api_run(tmp_path, "hang", timeout_s=4)
    assert leader.returncode == 1, leader.output
    assert "timeout 4 s" in leader.output and "The checkpoint of epoch 1 is kept" in leader.output
    assert _checkpoint_epoch(run) == 1
    assert follower.returncode != 0  # still asleep: the launcher stops it, as torchrun would


def test_parameters_that_drift_apart_stop_the_run(tmp_path):
    run, finished = _api_run(tmp_path, "nudge")
    for f in finished:
        assert f.returncode == 1
        assert "differ from process 0's" in f.output
    assert _checkpoint_epoch(run) == 1


def test_processes_started_with_different_configs_refuse_to_train(tmp_path):
    run, finished = _api_run(tmp_path, LR_ON_RANK1="0.5")
    for f in finished:
        assert f.returncode == 1
        assert "process 1 was started with another config than process 0 (lr = " in f.output
    assert not run.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--parallel", "tangents", "--tangents", "3"], "--tangents 3 cannot be split evenly"),
        (["--parallel", "none"], "2 processes were launched but --parallel is 'none'"),
        (["--parallel", "data", "--batch-size", "1"], "a batch of 1 examples occurs"),
    ],
    ids=["k-not-divisible", "no-parallel-mode", "shard-without-examples"],
)
def test_bad_launch_settings_stop_every_process_with_a_clear_error(tmp_path, flags, message):
    finished = _torchrun_like(
        [*TINY, "--guess", "activation", *flags, "--out", str(tmp_path / "r")]
    )
    for f in finished:
        assert f.returncode == 2, f.output
        assert message in f.output
    assert not (tmp_path / "r").exists()


def test_a_folder_only_the_leader_can_check_stops_the_followers_too(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    args = [*TINY, "--parallel", "tangents", "--guess", "activation", "--tangents", "2"]
    finished = _torchrun_like([*args, "--out", str(tmp_path / "file" / "run")])
    assert all(f.returncode == 2 for f in finished), [f.output for f in finished]
    assert "is a file, not a folder" in finished[0].output
    assert "process 0 failed in the run folder" in finished[1].output


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
