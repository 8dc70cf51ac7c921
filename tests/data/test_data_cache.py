"""The data directory's resolution and the decoded cache (used, invalidated, rebuilt)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import (
    idx_bytes,
    make_idx_set,
)

from forwardgrad.data import cache, load_dataset, readers


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    make_idx_set(tmp_path, "mnist", gz=True)
    first = load_dataset("mnist", data_dir=tmp_path)
    cache = tmp_path / ".cache" / "mnist.npz"
    assert cache.is_file()
    assert not [p for p in (tmp_path / ".cache").iterdir() if p.name != "mnist.npz"]

    def boom(*_a, **_k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(readers, "read_idx", boom)
    second = load_dataset("mnist", data_dir=tmp_path)  # from the cache
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    monkeypatch.undo()

    # changing a source file invalidates the cache
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    new = np.full(12, 7, dtype=np.uint8)
    labels.write_bytes(gzip.compress(idx_bytes(new)))
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    third = load_dataset("mnist", data_dir=tmp_path)
    assert third.y_train.tolist() == [7] * 12


def test_damaged_cache_is_rebuilt(tmp_path):
    make_idx_set(tmp_path, "mnist", gz=False)
    load_dataset("mnist", data_dir=tmp_path)
    cache = tmp_path / ".cache" / "mnist.npz"
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable cache"):
        data = load_dataset("mnist", data_dir=tmp_path)
    assert data.x_train.shape == (12, 28, 28, 1)
    load_dataset("mnist", data_dir=tmp_path)  # rebuilt: no warning now


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.resolve_data_dir() == tmp_path / "xdg" / "forwardgrad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.resolve_data_dir() == Path.home() / ".cache" / "forwardgrad"
    monkeypatch.setenv(cache.DATA_ENV, str(tmp_path / "env"))
    assert cache.resolve_data_dir() == tmp_path / "env"
    assert cache.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    make_idx_set(tmp_path / "env", "mnist")
    assert len(load_dataset("mnist").x_train) == 12  # found through the environment variable
