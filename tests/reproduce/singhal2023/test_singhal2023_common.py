"""The conventions the *How to Guess a Gradient* reproductions share, and the paper's numbers."""

import pytest

from forwardgrad.reproduce import singhal2023


def test_paper_conventions():
    assert singhal2023.hidden_layers(6) == 5 and singhal2023.hidden_layers(3) == 2
    with pytest.raises(ValueError):
        singhal2023.hidden_layers(0)
    counts = singhal2023.guess_counts(8192)
    assert counts[0] == 2 and counts[-1] == 8192 and len(counts) == 13
    assert singhal2023.table2_mnist(3, 128, "weight", "train") == 92.3
    assert (
        singhal2023.table2_mnist(6, 1024, "self-sharpening:optimizer=stable-adamw", "test") == 93.7
    )
    assert singhal2023.table2_mnist(6, 1024, "backprop", "test") == 97.9
    assert singhal2023.table2_mnist(3, 16, "wt", "train") is None
    assert singhal2023.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert singhal2023.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_the_papers_numbers_are_read_from_the_data_files():
    from forwardgrad.reproduce.singhal2023.common import DATA_DIR, paper_numbers
    from forwardgrad.reproduce.singhal2023.fig1_cosine import COSINE_METHODS

    names = sorted(path.stem for path in DATA_DIR.glob("*.json"))
    assert names == ["fig1_cosine", "fig2_subspace", "fig4_bias", "fig5_sharpening", "table2_mlp"]
    fig1 = paper_numbers("fig1_cosine")["methods"]
    assert set(COSINE_METHODS) | {"backprop"} == set(fig1)
    assert fig1["wt"]["cosine_mean"] == 0.030 and fig1["weight"]["effectiveness_sd"] == 1e-6
    assert paper_numbers("fig1_cosine") is paper_numbers("fig1_cosine")  # read once
