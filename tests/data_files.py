"""Tiny files in the real datasets' official formats, and a local server to download them from."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from forwardgrad.data import sources

RNG = np.random.default_rng(0)


def idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_set(root: Path, folder: str = "mnist", gz: bool = True, n_train=12, n_test=5):
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(d / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(d / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[prefix] = (x, y)
    return out


def cifar_rows(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_pickle(path: Path, obj, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def make_cifar10(root: Path, per_batch: int = 4, n_test: int = 4, folder=True) -> dict:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = cifar_rows(per_batch), [int(v) for v in RNG.integers(0, 10, per_batch)]
        write_pickle(
            d / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": y,
                b"data": x,
                b"filenames": [b"f.png"] * per_batch,
            },
        )
        xs.append(x)
        ys += y
    xt, yt = cifar_rows(n_test), [int(v) for v in RNG.integers(0, 10, n_test)]
    write_pickle(
        d / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": yt,
            b"data": xt,
            b"filenames": [b"t.png"] * n_test,
        },
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(
        d / "batches.meta",
        {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
    )
    return {
        "x_train": np.concatenate(xs),
        "y_train": np.array(ys),
        "x_test": xt,
        "y_test": np.array(yt),
    }


def make_cifar100(root: Path, n_train: int = 10, n_test: int = 4) -> dict:
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = cifar_rows(n)
        fine = [int(v) for v in RNG.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        write_pickle(
            d / split,
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": b"b",
                b"fine_labels": fine,
                b"coarse_labels": coarse,
                b"data": x,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        out[split] = (x, np.array(fine), np.array(coarse))
    write_pickle(
        d / "meta",
        {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
        },
    )
    return out


def make_svhn(root: Path, n_train: int = 6, n_test: int = 4) -> dict:
    from scipy.io import savemat

    d = root / "svhn"
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = ((np.arange(n) + 9) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 10, 1, 2, ...: 10 = 0
        savemat(d / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return out


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)


def cifar_archive_members(src: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members = [(tarfile.TarInfo("cifar-10-batches-py"), None)]
    members[0][0].type = tarfile.DIRTYPE
    for f in sorted(src.iterdir()):
        members.append((tarfile.TarInfo(f"cifar-10-batches-py/{f.name}"), f.read_bytes()))
    return members


def no_cache(root: Path) -> bool:
    return not (root / ".cache").exists() or not any((root / ".cache").iterdir())


def patch_svhn(monkeypatch, base: str, md5s: dict[str, str]) -> None:
    """Serve SVHN's files from ``base``, with the given MD5s (the official ones otherwise)."""
    src = sources.SOURCES["svhn"]
    downloads = tuple(
        dataclasses.replace(d, urls=(base + d.name,), md5=md5s.get(d.name, d.md5))
        for d in src.downloads
    )
    monkeypatch.setitem(sources.SOURCES, "svhn", dataclasses.replace(src, downloads=downloads))


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server over ``folder`` (created here): (folder, base URL)."""
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
