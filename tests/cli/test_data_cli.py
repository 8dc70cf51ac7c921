"""``forwardgrad data info`` and ``forwardgrad data fetch``."""

from __future__ import annotations

import argparse

import pytest
from data_files import (
    listing,
    make_cifar10,
    make_idx_set,
    make_svhn,
    md5,
    patch_svhn,
)

from forwardgrad.cli.data import add_data_parser


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="forwardgrad")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_info_present_and_missing(tmp_path, capsys):
    make_cifar10(tmp_path)
    assert run_cli(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "data_batch_1" in out and "present" in out and "status:     ready" in out
    assert "20 examples" in out and "(20, 32, 32, 3)" in out and "airplane" in out
    assert "3072" in out

    assert run_cli(["data", "info", "svhn", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "train_32x32.mat" in out and str(tmp_path / "svhn") in out
    assert "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in out
    assert "73257 train / 26032 test" in out
    assert listing(tmp_path / "cifar-10-batches-py") == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    )


def test_cli_info_reports_corrupt_file(tmp_path):
    make_idx_set(tmp_path, "fashion-mnist", gz=True)
    p = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-6])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        run_cli(["data", "info", "fashion-mnist", "--data-dir", str(tmp_path)])


def test_cli_fetch(tmp_path, server, monkeypatch, capsys):
    served, base = server
    make_svhn(served)
    md5s = {}
    for f in ("train_32x32.mat", "test_32x32.mat"):
        (served / f).write_bytes((served / "svhn" / f).read_bytes())
        md5s[f] = md5((served / f).read_bytes())
    patch_svhn(monkeypatch, base, md5s)
    root = tmp_path / "data"
    assert run_cli(["data", "fetch", "svhn", "--data-dir", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "downloaded, MD5 verified" in out and "ready" in out
    assert run_cli(["data", "fetch", "svhn", "--data-dir", str(root)]) == 0
    assert "present, MD5 verified" in capsys.readouterr().out


def test_cli_errors():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        run_cli(["data", "info", "nope"])
    with pytest.raises(ValueError, match="nothing to fetch"):
        run_cli(["data", "fetch", "digits"])
