"""The process grid: who holds which shard and share, and the launch settings it refuses."""

from __future__ import annotations

import pytest
import torch

from forwardgrad.distributed import LaunchError, make_grid, tensor_checksum


def test_tangent_split_gives_each_process_an_equal_contiguous_share():
    shares = [make_grid("tangents", 4, r).tangent_slice(16) for r in range(4)]
    assert shares == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert all(make_grid("tangents", 4, r).data_slice(10) == (0, 10) for r in range(4))


def test_data_split_covers_the_batch_once_with_sizes_one_apart():
    slices = [make_grid("data", 3, r).data_slice(10) for r in range(3)]
    assert slices == [(0, 4), (4, 7), (7, 10)]
    assert all(make_grid("data", 3, r).tangent_slice(5) == (0, 5) for r in range(3))


def test_both_lays_the_processes_out_on_a_data_by_tangent_grid():
    grids = [make_grid("both", 6, r, tangent_procs=3) for r in range(6)]
    assert [(g.data_rank, g.tangent_rank) for g in grids] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
        (1, 2),
    ]
    assert grids[0].tangent_group_ranks() == [[0, 1, 2], [3, 4, 5]]
    assert grids[0].data_group_ranks() == [[0, 3], [1, 4], [2, 5]]
    assert make_grid("both", 8, 0).tangent_size == 2  # the largest divisor <= sqrt(8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_grid("tangents", 2, 0).tangent_slice(3), "--tangents 3 cannot be split"),
        (lambda: make_grid("both", 6, 0, tangent_procs=4), "must divide the 6 processes"),
        (lambda: make_grid("data", 2, 0, tangent_procs=2), "read only by --parallel both"),
        (lambda: make_grid("none", 2, 0), "2 processes were launched but --parallel is 'none'"),
        (lambda: make_grid("ring", 2, 0), "unknown parallel mode 'ring'"),
        (lambda: make_grid("data", 2, 5), "rank 5 of 2 processes"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_name(call, message):
    with pytest.raises(LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_the_checksum_sees_one_flipped_bit():
    a = [torch.ones(3), torch.zeros(2, dtype=torch.float64)]
    b = [t.clone() for t in a]
    assert tensor_checksum(a) == tensor_checksum(b)
    b[0].view(torch.int32)[1] ^= 1
    assert tensor_checksum(a) != tensor_checksum(b)
