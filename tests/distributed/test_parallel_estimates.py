"""Two processes on 127.0.0.1 (gloo) give the estimate one process gives, sending only what
each mode must send."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from parallel_cases import BOTH, CASES, EXACT, PER_SHARD, STEPS
from processes import check_all_succeeded, launch

from forwardgrad.distributed import Collectives, make_grid

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("estimates")
    check_all_succeeded(launch([str(HERE / "estimate_worker.py"), str(out)], timeout=120))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def grid_ranks(tmp_path_factory):
    """Four processes on a 2 x 2 grid."""
    out = tmp_path_factory.mktemp("grid")
    check_all_succeeded(launch([str(HERE / "estimate_worker.py"), str(out)], world=4, timeout=180))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(4)]


def _one_process(case, shard: int | None = None):
    """The case's estimates on one process: the whole batch, or one data shard of two drawing
    that shard's tangents (its sizes weigh the shards' sum)."""
    model, x, y = case.problem()
    parallel = None
    if shard is not None:
        # shard r of two, as a data split's process r holds it (a 2 x 2 grid's process 2r)
        parallel = Collectives(make_grid("data", 2, shard), alone=True)
        lo, hi = parallel.grid.data_slice(len(x))
        x, y = x[lo:hi], y[lo:hi]
    estimator = case.estimator(model, parallel)
    out = []
    for _ in range(STEPS):
        loss, grads = estimator.estimate(x, y)
        out.append((loss, [grads.get(p) for p in model.parameters()], len(x)))
    return out


def _tolerance(case):
    return (
        dict(rtol=1e-4, atol=1e-6) if case.dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    )


@pytest.mark.parametrize("name", list(CASES))
def test_both_processes_form_the_same_estimate(ranks, name):
    for (loss0, g0), (loss1, g1) in zip(ranks[0][name]["steps"], ranks[1][name]["steps"]):
        assert torch.equal(loss0, loss1)
        for a, b in zip(g0, g1):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(EXACT))
def test_the_estimate_is_the_one_process_estimate(ranks, name):
    case = EXACT[name]
    reference = _one_process(case)
    for (loss, grads), (ref_loss, ref_grads, _) in zip(ranks[0][name]["steps"], reference):
        torch.testing.assert_close(loss, ref_loss, **_tolerance(case))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, **_tolerance(case))


@pytest.mark.parametrize("name", list(PER_SHARD))
def test_a_data_split_of_per_example_tangents_sums_the_shards_estimates(ranks, name):
    """Each shard draws its own tangents (shard 0 the one-process stream): the split's estimate
    is the size-weighted mean of what each shard's estimator gives alone."""
    case = PER_SHARD[name]
    shards = [_one_process(case, shard) for shard in range(2)]
    for step, (loss, grads) in enumerate(ranks[0][name]["steps"]):
        (l0, g0, b0), (l1, g1, b1) = shards[0][step], shards[1][step]
        torch.testing.assert_close(loss, (b0 * l0 + b1 * l1) / (b0 + b1), **_tolerance(case))
        for g, a, b in zip(grads, g0, g1):
            torch.testing.assert_close(g, (b0 * a + b1 * b) / (b0 + b1), **_tolerance(case))


def test_shard_streams_differ_so_shards_tangents_are_independent():
    case = PER_SHARD["data-activation-mean"]
    model, x, y = case.problem()
    grads = []
    for shard in range(2):
        parallel = Collectives(make_grid("data", 2, shard), alone=True)
        _, g = case.estimator(model, parallel).estimate(x[:5], y[:5])  # the same examples
        grads.append(list(g.values()))
    assert not torch.equal(grads[0][0], grads[1][0])


def test_a_tangent_split_sends_only_the_jvps(ranks):
    # k = 4 tangents, 2 per process, batch 10, float64: each process sends its (2, 10) JVPs.
    assert ranks[0]["tangents-activation-projection"]["sent"] == {
        "tangent JVPs": 2 * 10 * 8 * STEPS
    }
    # weight-space: the JVPs of the mean loss, (2,) per process
    assert ranks[1]["tangents-weight-projection"]["sent"] == {"tangent JVPs": 2 * 8 * STEPS}


def test_a_data_split_of_shared_tangents_sends_k_plus_two_scalars(ranks):
    # k JVPs of the shard's mean loss, the shard's loss and its size, float64
    assert ranks[0]["data-weight-projection"]["sent"] == {"shard sums": (4 + 2) * 8 * STEPS}


def test_a_data_split_of_per_example_tangents_sends_the_gradient(ranks):
    model, _, _ = PER_SHARD["data-activation-mean"].problem()
    params = sum(p.numel() for p in model.parameters())
    assert ranks[1]["data-activation-mean"]["sent"] == {"shard sums": (params + 2) * 8 * STEPS}


@pytest.mark.parametrize("name", list(BOTH))
def test_a_two_by_two_grid_forms_one_estimate_on_every_process(grid_ranks, name):
    """Shared (weight-space) tangents: the one-process estimate. Per-example tangents: the
    shards' weighted sum, each shard's tangents split over its two processes."""
    case = BOTH[name]
    for rank in range(1, 4):
        for (l0, g0), (l1, g1) in zip(
            grid_ranks[0][name]["steps"], grid_ranks[rank][name]["steps"]
        ):
            assert torch.equal(l0, l1)
            assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    if case.guess == "weight":
        expected = [(loss, grads) for loss, grads, _ in _one_process(case)]
    else:
        shards = [_one_process(case, shard) for shard in range(2)]
        expected = []
        for (l0, g0, b0), (l1, g1, b1) in zip(*shards):
            mix = [(b0 * a + b1 * b) / (b0 + b1) for a, b in zip(g0, g1)]
            expected.append(((b0 * l0 + b1 * l1) / (b0 + b1), mix))
    for (loss, grads), (ref_loss, ref_grads) in zip(grid_ranks[0][name]["steps"], expected):
        torch.testing.assert_close(loss, ref_loss, **_tolerance(case))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, **_tolerance(case))
    sent = grid_ranks[3][name]["sent"]
    assert set(sent) == {"tangent JVPs", "shard sums"}
