"""The orderings ``tangents-sota`` checks (reproduce/flugel2024/sota_claims.py), on synthetic
records."""

from __future__ import annotations

import math

import pytest

from forwardgrad.reproduce.flugel2024 import sota_claims as claims


def _record(method, k, losses, diverged=0, test_acc=0.5):
    mean = sum(losses) / len(losses) if losses else math.nan
    se = None
    if len(losses) > 1:
        var = sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)
        se = math.sqrt(var / len(losses))
    return {
        "model": "vit",
        "method": method,
        "tangents": k,
        "diverged": diverged,
        "train_loss": {"values": losses, "mean": mean, "se": se},
        "test_acc": {"values": [test_acc], "mean": test_acc, "se": None},
    }


METHODS = (("backprop", None), ("mean", 1), ("mean", 2), ("projection", 2))


def _claims(records):
    return {c["claim"]: c for c in claims.paper_claims(records, ["vit"], METHODS)}


def test_orderings_held_on_synthetic_records():
    records = [
        _record("backprop", None, [0.1, 0.12]),
        _record("mean", 1, [2.0, 2.1]),
        _record("mean", 2, [1.5, 1.6]),
        _record("projection", 2, [1.0, 1.1]),
    ]
    found = _claims(records)
    assert set(found) == {
        claims.PROJECTION_VS_MEAN,
        claims.MORE_TANGENTS.format(method="mean"),
        claims.BACKPROP_FIRST,
    }  # one projection k: no "more tangents" ordering for it
    assert all(c["held"] for c in found.values())
    gap = found[claims.PROJECTION_VS_MEAN]["comparisons"][0]
    assert gap["difference"] == pytest.approx(-0.5) and gap["clear"] is True
    assert len(found[claims.BACKPROP_FIRST]["comparisons"]) == 3


def test_orderings_not_held_on_synthetic_records():
    records = [
        _record("backprop", None, [1.2]),  # behind the projection
        _record("mean", 1, [1.4]),
        _record("mean", 2, [1.5]),  # more tangents, higher loss
        _record("projection", 2, [1.0]),
    ]
    found = _claims(records)
    assert found[claims.PROJECTION_VS_MEAN]["held"]
    assert not found[claims.MORE_TANGENTS.format(method="mean")]["held"]
    backprop = found[claims.BACKPROP_FIRST]
    assert not backprop["held"] and [c["held"] for c in backprop["comparisons"]] == [
        True,
        True,
        False,
    ]
    assert all(c["clear"] is None for c in backprop["comparisons"])  # one seed: no SE


def test_a_gap_within_seed_noise_still_counts_but_is_not_clear():
    gap = claims.compare(_record("projection", 2, [1.0, 1.4]), _record("mean", 2, [1.1, 1.5]))
    assert gap["held"] and gap["clear"] is False


def test_a_diverged_run_counts_as_the_worst_loss():
    diverged = _record("projection", 2, [], diverged=1)
    finite = _record("mean", 2, [2.0])
    assert not claims.compare(diverged, finite)["held"]
    assert claims.compare(finite, diverged)["held"]
    assert not claims.compare(diverged, _record("mean", 1, [], diverged=1))["held"]
    rows = claims.claim_rows(claims.paper_claims([diverged, finite], ["vit"], METHODS))
    assert [r.labels["held"] for r in rows] == ["no"]
