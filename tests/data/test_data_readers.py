"""Corrupt, truncated or hostile files in the official formats are reported clearly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from data_files import (
    cifar_rows,
    make_cifar10,
    make_idx_set,
    make_svhn,
    no_cache,
    write_idx,
    write_pickle,
)

from forwardgrad.data import load_dataset
from forwardgrad.data.errors import DataFileError


@pytest.mark.parametrize(
    "damage,match",
    [
        ("short_payload", "truncated IDX file"),
        ("trailing", "unexpected bytes"),
        ("magic", "not an IDX file"),
        ("gzip_truncated", "corrupt or truncated gzip"),
        ("header", "truncated IDX header"),
    ],
)
def test_corrupt_idx_is_reported(tmp_path, damage, match):
    make_idx_set(tmp_path, "mnist", gz=damage == "gzip_truncated")
    name = "train-images-idx3-ubyte" + (".gz" if damage == "gzip_truncated" else "")
    p = tmp_path / "mnist" / name
    raw = p.read_bytes()
    p.write_bytes(
        {
            "short_payload": raw[:-100],
            "trailing": raw + b"\0\0",
            "magic": b"\x00\x00\x07\x03" + raw[4:],
            "gzip_truncated": raw[: len(raw) // 2],
            "header": raw[:10],
        }[damage]
    )
    with pytest.raises(DataFileError, match=match) as e:
        load_dataset("mnist", data_dir=tmp_path)
    assert name in str(e.value)
    assert no_cache(tmp_path)


def test_idx_shape_checks(tmp_path):
    make_idx_set(tmp_path, "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    with pytest.raises(DataFileError, match="4 labels for 5 images"):
        load_dataset("mnist", data_dir=tmp_path)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", np.zeros((5, 32, 32), np.uint8), False)
    with pytest.raises(DataFileError, match=r"\(N, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_or_hostile_pickle_is_reported(tmp_path):
    make_cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:-500])
    with pytest.raises(DataFileError, match="data_batch_3.*not a valid CIFAR python pickle"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert no_cache(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    write_pickle(p, {b"data": Evil(), b"labels": []})
    with pytest.raises(DataFileError, match="refusing to load global"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not Path("pwned").exists()
    write_pickle(p, [1, 2, 3])
    with pytest.raises(DataFileError, match="not a CIFAR batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    write_pickle(p, {b"data": cifar_rows(2)})
    with pytest.raises(DataFileError, match="no 'labels' entry"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "keys"])
def test_bad_mat_is_reported(tmp_path, damage):
    from scipy.io import savemat

    make_svhn(tmp_path)
    p = tmp_path / "svhn" / "train_32x32.mat"
    if damage == "truncated":
        p.write_bytes(p.read_bytes()[:-2000])
    elif damage == "garbage":
        p.write_bytes(b"not a mat file at all" * 10)
    else:
        savemat(p, {"images": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataFileError, match="train_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path)
    assert no_cache(tmp_path)
