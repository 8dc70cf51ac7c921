"""Downloads (no network: a local server, or a patched pooch): checked, nothing left behind."""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest
from data_files import (
    cifar_archive_members,
    listing,
    make_cifar10,
    make_svhn,
    make_tar,
    md5,
    patch_svhn,
)

from forwardgrad.data import load_dataset, sources
from forwardgrad.data.download import fetch
from forwardgrad.data.errors import DataFileError, DownloadError


def test_fetch_downloads_and_verifies(tmp_path, server, monkeypatch):
    served, base = server
    make_svhn(served)
    md5s = {
        f: md5((served / "svhn" / f).read_bytes()) for f in ("train_32x32.mat", "test_32x32.mat")
    }
    for f in md5s:
        (served / f).write_bytes((served / "svhn" / f).read_bytes())
    patch_svhn(monkeypatch, base, md5s)
    root = tmp_path / "data"
    data = load_dataset("svhn", data_dir=root, download=True)
    assert data.x_train.shape == (6, 32, 32, 3)
    assert listing(root) == [
        ".cache",
        ".cache/svhn.npz",
        "svhn",
        "svhn/test_32x32.mat",
        "svhn/train_32x32.mat",
    ]


def test_fetch_wrong_hash_leaves_nothing(tmp_path, server, monkeypatch):
    served, base = server
    (served / "train_32x32.mat").write_bytes(b"x" * 5000)
    (served / "test_32x32.mat").write_bytes(b"y" * 5000)
    patch_svhn(monkeypatch, base, {})  # the official hashes: the served bytes do not match
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="(?i)hash") as e:
        load_dataset("svhn", data_dir=root, download=True)
    assert "train_32x32.mat" in str(e.value) and "Nothing was written" in str(e.value)
    assert not root.exists()  # not even an empty data directory is left


def test_fetch_offline_leaves_nothing(tmp_path, monkeypatch):
    import pooch
    import requests

    def offline(url, **_):
        raise requests.exceptions.ConnectionError(f"Failed to resolve host for {url}")

    monkeypatch.setattr(pooch, "retrieve", offline)
    root = tmp_path / "data"
    for name in ("mnist", "cifar10"):
        with pytest.raises(DownloadError, match="could not download .*ConnectionError"):
            load_dataset(name, data_dir=root, download=True)
    assert not root.exists()  # not even an empty data directory is left


def test_fetch_refused_connection(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    patch_svhn(monkeypatch, f"http://127.0.0.1:{port}/", {})
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="could not download train_32x32.mat"):
        fetch("svhn", root)
    assert not root.exists()  # not even an empty data directory is left


def test_fetch_archive_downloads_and_unpacks(tmp_path, server, monkeypatch):
    served, base = server
    ref = make_cifar10(tmp_path / "staging")
    archive = served / "cifar-10-python.tar.gz"
    make_tar(archive, cifar_archive_members(tmp_path / "staging" / "cifar-10-batches-py"))
    src = sources.SOURCES["cifar10"]
    dl = dataclasses.replace(
        src.archive, urls=(base + archive.name,), md5=md5(archive.read_bytes())
    )
    monkeypatch.setitem(sources.SOURCES, "cifar10", dataclasses.replace(src, archive=dl))
    root = tmp_path / "data"
    assert fetch("cifar10", root) == root / "cifar-10-batches-py"
    assert sorted(p.name for p in root.iterdir()) == [
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    data = load_dataset("cifar10", data_dir=root)
    np.testing.assert_array_equal(data.y_test.numpy(), ref["y_test"])


def test_fetch_checks_files_already_present(tmp_path, monkeypatch):
    import pooch

    make_svhn(tmp_path)
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("downloaded"))
    # download=True only fetches what is missing: present files are loaded as they are
    assert len(load_dataset("svhn", data_dir=tmp_path, download=True).x_train) == 6
    with pytest.raises(DataFileError, match="MD5"):
        fetch("svhn", tmp_path)  # tiny fakes are not the official files
