"""Training curves to PNG (``forwardgrad plot``) and metrics to TensorBoard."""

from __future__ import annotations

import pytest

from forwardgrad.cli import main
from forwardgrad.training.curves import find_runs, group_runs

TINY = ["--dataset", "digits", "--depth", "1", "--width", "8", "--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    argv = ["compare", *TINY, "--guesses", "wt,activation", "--seeds", "2", "--no-plot"]
    assert main([*argv, "--out", str(root / "cmp")]) == 0
    return root / "cmp"


def test_runs_of_one_setting_are_one_curve(compared):
    runs = find_runs([compared])
    assert len(runs) == 4
    groups = group_runs(runs)
    assert {k: len(v) for k, v in groups.items()} == {"activation": 2, "wt": 2}


def test_plot_writes_a_png_for_a_folder_of_runs_and_for_single_runs(compared, tmp_path, capsys):
    assert main(["plot", str(compared)]) == 0
    assert (compared / "curves.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "two.png"
    assert main(["plot", str(compared / "wt" / "seed0"), str(compared / "wt" / "seed1"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "wt (2 run(s))" in capsys.readouterr().out


def test_plot_refuses_what_it_cannot_draw(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "holds no run" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "empty"), "--out", "x.jpg"]) == 2


def test_metrics_go_to_tensorboard_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", *TINY, "--tensorboard", "true", "--out", str(run)]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("accuracy/train")]
    assert steps == [1, 2]
    # a resumed run continues the same curves
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("accuracy/train")] == [1, 2, 3]
