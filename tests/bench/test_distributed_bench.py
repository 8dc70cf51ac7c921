"""The distributed preset: measured payloads match what each mode must send, and the cost
model's formulas match the payloads measured at N = 2."""

from __future__ import annotations

import pytest

from forwardgrad.bench import cost_model
from forwardgrad.bench.distributed import Setup, run_distributed_bench, to_markdown
from forwardgrad.models import mlp


@pytest.fixture(scope="module")
def measured():
    return run_distributed_bench(Setup(depth=1, width=16, batch=8, tangents=4, repeats=2, warmup=1))


def _row(measured, label):
    return next(r for r in measured["rows"] if r["label"] == label)


def test_payloads_are_what_each_mode_must_send(measured):
    params = sum(p.numel() for p in mlp(784, 10, 1, 16).parameters())
    assert measured["parameters"] == params
    # the tangent split: each process's (k/2, B) float32 JVPs
    assert _row(measured, "activation, tangent split")["bytes_per_step"] == 4 // 2 * 8 * 4
    assert _row(measured, "wt, tangent split")["bytes_per_step"] == 4 // 2 * 8 * 4
    # shared tangents split by data: k JVPs, the loss and the shard size
    assert _row(measured, "weight, data split")["bytes_per_step"] == (4 + 2) * 4
    # per-example tangents split by data, and backprop: the gradient (plus loss and size)
    for label in ("activation, data split", "backprop, data split (DDP-style)"):
        assert _row(measured, label)["bytes_per_step"] == (params + 2) * 4
    assert measured["gradient_allreduce_bytes"] == (params + 2) * 4


def test_every_time_is_measured_and_reported(measured):
    for r in measured["rows"]:
        for key in ("two_processes_ms", "one_process_2_threads_ms", "one_process_1_thread_ms"):
            assert r[key] > 0
    text = to_markdown(measured) + cost_model.to_markdown(measured)
    assert "activation, tangent split" in text and "needs N <= k = 4" in text


def test_the_cost_model_at_two_processes_is_the_measured_payload(measured):
    k, batch, params = 4, 8, measured["parameters"]
    tangent = _row(measured, "activation, tangent split")["bytes_per_step"]
    assert cost_model.allgather_bytes(4 * k * batch / 2, 2) == tangent
    scalar = _row(measured, "weight, data split")["bytes_per_step"]
    assert cost_model.allreduce_bytes(4 * (k + 2), 2) == scalar
    ddp = _row(measured, "backprop, data split (DDP-style)")["bytes_per_step"]
    assert cost_model.allreduce_bytes(4 * params, 2) == ddp - 8  # less the loss and size


def test_ring_traffic_approaches_twice_the_gradient_and_latency_grows_with_log_n():
    net = cost_model.Network("test", latency_s=1.0, bandwidth_bytes_per_s=1e12)
    assert cost_model.allreduce_bytes(100.0, 1024) == pytest.approx(2 * 100 * 1023 / 1024)
    assert cost_model.allreduce_seconds(1.0, 1024, net) == pytest.approx(20, rel=1e-6)
    assert cost_model.allgather_seconds(1.0, 8, net) == pytest.approx(3, rel=1e-6)
    assert cost_model.allreduce_seconds(1.0, 1, net) == 0.0


def test_a_fit_through_two_points_keeps_its_intercept_non_negative():
    f = cost_model.fit_two_points(whole_s=3.0, half_s=2.0, units=4, params=10)
    assert (f.fixed, f.per_unit) == pytest.approx((1.0, 0.5))
    assert f.seconds(4, 20) == pytest.approx(6.0)  # twice the parameters, twice the time
    noisy = cost_model.fit_two_points(whole_s=3.0, half_s=1.0, units=4, params=10)
    assert noisy.fixed == 0.0
