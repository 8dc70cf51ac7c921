"""Real datasets from tiny files in their official formats, through the public loading path."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from forwardgrad.data import DATASETS, load_dataset, real
from forwardgrad.data.cli_data import add_data_parser

# ---------------------------------------------------------------------------------------------
# Writers for the official formats
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Loading through the public path
# ---------------------------------------------------------------------------------------------


def test_names_registered():
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse", "svhn"):
        assert name in DATASETS


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_sets_load(tmp_path, name, gz):
    files = make_idx_set(tmp_path, name, gz=gz)
    data = load_dataset(name, data_dir=str(tmp_path))
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (12, 28, 28, 1)
    assert data.x_test.shape == (5, 28, 28, 1)
    assert data.y_train.dtype == torch.int64
    np.testing.assert_array_equal(data.x_train[..., 0].numpy(), files["train"][0])
    np.testing.assert_array_equal(data.y_test.numpy(), files["t10k"][1])
    assert data.num_classes == 10
    f = data.features(data.x_train[:3])
    assert f.dtype == torch.float32 and f.shape == (3, 784)
    assert data.input_shape == (784,)


def test_cifar10_loads_with_official_layout(tmp_path):
    ref = make_cifar10(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (20, 32, 32, 3)
    assert data.x_test.shape == (4, 32, 32, 3) and data.num_classes == 10
    np.testing.assert_array_equal(data.y_train.numpy(), ref["y_train"])
    np.testing.assert_array_equal(data.y_test.numpy(), ref["y_test"])
    # a row is the 1024 red, then green, then blue values, row-major
    row = ref["x_train"][7]
    img = data.x_train[7].numpy()
    np.testing.assert_array_equal(img[..., 0].ravel(), row[:1024])
    np.testing.assert_array_equal(img[..., 2].ravel(), row[2048:])
    assert data.features(data.x_test).shape == (4, 3072)


def test_cifar100_fine_and_coarse(tmp_path):
    ref = make_cifar100(tmp_path)
    fine = load_dataset("cifar100", data_dir=tmp_path)
    coarse = load_dataset("cifar100-coarse", data_dir=tmp_path)
    option = load_dataset("cifar100", data_dir=tmp_path, labels="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20 and option.num_classes == 20
    np.testing.assert_array_equal(fine.y_train.numpy(), ref["train"][1])
    np.testing.assert_array_equal(coarse.y_test.numpy(), ref["test"][2])
    np.testing.assert_array_equal(option.y_train.numpy(), ref["train"][2])
    assert torch.equal(fine.x_train, coarse.x_train)
    with pytest.raises(ValueError, match="coarse"):
        load_dataset("cifar10", data_dir=tmp_path, labels="coarse")


def test_svhn_layout_and_label_ten_is_zero(tmp_path):
    ref = make_svhn(tmp_path)
    data = load_dataset("svhn", data_dir=tmp_path)
    x, y = ref["train"]
    assert data.x_train.shape == (6, 32, 32, 3) and data.x_train.dtype == torch.uint8
    np.testing.assert_array_equal(data.x_train.numpy(), x.transpose(3, 0, 1, 2))
    assert y[0, 0] == 10 and data.y_train[0] == 0  # SVHN's label 10 is the digit 0
    np.testing.assert_array_equal(data.y_train.numpy(), y.ravel() % 10)
    np.testing.assert_array_equal(data.y_test.numpy(), ref["test"][1].ravel() % 10)
    assert data.num_classes == 10 and int(data.y_train.max()) <= 9


def test_training_features_are_normalised_per_channel(tmp_path):
    make_cifar10(tmp_path, per_batch=40)
    data = load_dataset("cifar10", data_dir=tmp_path)
    f = data.features(data.x_train).reshape(-1, 32, 32, 3)
    assert f.dtype == torch.float32
    torch.testing.assert_close(f.mean((0, 1, 2)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(f.std((0, 1, 2), correction=0), torch.ones(3), atol=1e-4, rtol=0)
    # the same statistics are applied to the test split (from the training split only)
    raw = data.x_test.float() / 255
    mean = data.x_train.float().div(255).mean((0, 1, 2))
    std = data.x_train.float().div(255).std((0, 1, 2), correction=0)
    expect = ((raw - mean) / std).reshape(len(raw), -1)
    torch.testing.assert_close(data.features(data.x_test), expect, atol=1e-4, rtol=1e-4)


def _crops(img: torch.Tensor, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """All 81 crops of the zero-padded image, unflipped and flipped: (81, H, W, C) each."""
    h, w = img.shape[:2]
    padded = torch.zeros(h + 2 * pad, w + 2 * pad, img.shape[2])
    padded[pad : pad + h, pad : pad + w] = img
    crops = torch.stack(
        [padded[i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    )
    return crops, crops.flip(2)


def _kinds(data, n: int = 48, seed: int = 0) -> set[str]:
    img = data.x_train[:1].expand(n, -1, -1, -1)
    out = data.features(img, True, torch.Generator().manual_seed(seed)).reshape(n, 32, 32, 3)
    plain = data.transform.mean, data.transform.std
    base = data.x_train[0].float() / 255
    crops, flipped = _crops(base)
    crops = (crops - plain[0]) / plain[1]
    flipped = (flipped - plain[0]) / plain[1]
    kinds = set()
    for o in out:
        if any(torch.allclose(o, c, atol=1e-5) for c in crops):
            kinds.add("crop")
        elif any(torch.allclose(o, c, atol=1e-5) for c in flipped):
            kinds.add("flip")
        else:
            kinds.add("other")
    return kinds


def test_augmentation_shape_seeded_and_flips_only_for_cifar(tmp_path):
    make_cifar10(tmp_path)
    make_svhn(tmp_path)
    cifar = load_dataset("cifar10", data_dir=tmp_path, augment=True)
    x = cifar.x_train[:8]
    a = cifar.features(x, True, torch.Generator().manual_seed(3))
    b = cifar.features(x, True, torch.Generator().manual_seed(3))
    c = cifar.features(x, True, torch.Generator().manual_seed(4))
    assert a.shape == (8, 3072) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # evaluation batches are never augmented
    plain = load_dataset("cifar10", data_dir=tmp_path)
    assert torch.equal(cifar.features(x), plain.features(x))
    assert torch.equal(cifar.features(x, False, torch.Generator()), plain.features(x))
    assert _kinds(cifar) == {"crop", "flip"}
    svhn = load_dataset("svhn", data_dir=tmp_path, augment=True)
    assert _kinds(svhn) == {"crop"}
    with pytest.raises(ValueError, match="32x32"):
        load_dataset("mnist", data_dir=tmp_path, augment=True)


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    make_idx_set(tmp_path, "mnist", gz=True)
    first = load_dataset("mnist", data_dir=tmp_path)
    cache = tmp_path / ".cache" / "mnist.npz"
    assert cache.is_file()
    assert not [p for p in (tmp_path / ".cache").iterdir() if p.name != "mnist.npz"]

    def boom(*_a, **_k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(real, "read_idx", boom)
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


# ---------------------------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------------------------


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


def test_official_archive_is_unpacked(tmp_path):
    staging, root = tmp_path / "staging", tmp_path / "data"
    ref = make_cifar10(staging)
    root.mkdir()
    make_tar(
        root / "cifar-10-python.tar.gz", cifar_archive_members(staging / "cifar-10-batches-py")
    )
    data = load_dataset("cifar10", data_dir=root)
    np.testing.assert_array_equal(data.y_train.numpy(), ref["y_train"])
    assert sorted(p.name for p in root.iterdir()) == [
        ".cache",
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
    ]
    assert len(list((root / "cifar-10-batches-py").iterdir())) == 7


def _evil(kind: str) -> tarfile.TarInfo:
    if kind == "dotdot":
        return tarfile.TarInfo("cifar-10-batches-py/../../evil")
    if kind == "absolute":
        return tarfile.TarInfo(str(Path("/tmp") / "forwardgrad-evil-absolute"))
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_9")
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_malicious_archive_is_rejected(tmp_path, kind):
    staging, root = tmp_path / "staging", tmp_path / "data"
    make_cifar10(staging)
    root.mkdir()
    members = cifar_archive_members(staging / "cifar-10-batches-py")
    bad = _evil(kind)
    members.insert(3, (bad, b"pwned" if bad.isreg() else None))
    make_tar(root / "cifar-10-python.tar.gz", members)
    before_outside = listing(tmp_path.parent) if kind == "dotdot" else None
    with pytest.raises(real.UnsafeArchiveError, match="refusing to unpack"):
        load_dataset("cifar10", data_dir=root)
    assert listing(root) == ["cifar-10-python.tar.gz"]  # nothing half-extracted, no temp folder
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()
    assert not Path("/tmp/forwardgrad-evil-absolute").exists()
    if before_outside is not None:
        assert listing(tmp_path.parent) == before_outside


def test_truncated_archive_is_reported(tmp_path):
    staging, root = tmp_path / "staging", tmp_path / "data"
    make_cifar10(staging)
    root.mkdir()
    arc = root / "cifar-10-python.tar.gz"
    make_tar(arc, cifar_archive_members(staging / "cifar-10-batches-py"))
    arc.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])
    with pytest.raises(real.DataFileError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=root)
    assert listing(root) == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------------------------------------
# Missing, corrupt and truncated files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,file,url",
    [
        ("cifar10", "data_batch_1", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        (
            "mnist",
            "train-images-idx3-ubyte",
            "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        ),
        ("svhn", "test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"),
    ],
)
def test_missing_files_are_named_with_directory_and_url(tmp_path, name, file, url):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, data_dir=tmp_path)
    msg = str(e.value)
    assert file in msg and str(tmp_path / real.source_for(name).folder) in msg and url in msg
    assert f"forwardgrad data fetch {name}" in msg
    assert listing(tmp_path) == []


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(real.DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert real.resolve_data_dir() == tmp_path / "xdg" / "forwardgrad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert real.resolve_data_dir() == Path.home() / ".cache" / "forwardgrad"
    monkeypatch.setenv(real.DATA_ENV, str(tmp_path / "env"))
    assert real.resolve_data_dir() == tmp_path / "env"
    assert real.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    make_idx_set(tmp_path / "env", "mnist")
    assert len(load_dataset("mnist").x_train) == 12  # found through the environment variable


def _no_cache(root: Path) -> bool:
    return not (root / ".cache").exists() or not any((root / ".cache").iterdir())


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
    with pytest.raises(real.DataFileError, match=match) as e:
        load_dataset("mnist", data_dir=tmp_path)
    assert name in str(e.value)
    assert _no_cache(tmp_path)


def test_idx_shape_checks(tmp_path):
    make_idx_set(tmp_path, "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    with pytest.raises(real.DataFileError, match="4 labels for 5 images"):
        load_dataset("mnist", data_dir=tmp_path)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", np.zeros((5, 32, 32), np.uint8), False)
    with pytest.raises(real.DataFileError, match=r"\(N, 28, 28\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_truncated_or_hostile_pickle_is_reported(tmp_path):
    make_cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:-500])
    with pytest.raises(real.DataFileError, match="data_batch_3.*not a valid CIFAR python pickle"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert _no_cache(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    write_pickle(p, {b"data": Evil(), b"labels": []})
    with pytest.raises(real.DataFileError, match="refusing to load global"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not Path("pwned").exists()
    write_pickle(p, [1, 2, 3])
    with pytest.raises(real.DataFileError, match="not a CIFAR batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    write_pickle(p, {b"data": cifar_rows(2)})
    with pytest.raises(real.DataFileError, match="no 'labels' entry"):
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
    with pytest.raises(real.DataFileError, match="train_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path)
    assert _no_cache(tmp_path)


# ---------------------------------------------------------------------------------------------
# Downloads (no network: a local server, or a patched pooch)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over a folder: (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _patch_svhn(monkeypatch, base: str, md5s: dict[str, str]):
    src = real.SOURCES["svhn"]
    downloads = tuple(
        dataclasses.replace(d, urls=(base + d.name,), md5=md5s.get(d.name, d.md5))
        for d in src.downloads
    )
    monkeypatch.setitem(real.SOURCES, "svhn", dataclasses.replace(src, downloads=downloads))


def test_fetch_downloads_and_verifies(tmp_path, server, monkeypatch):
    served, base = server
    make_svhn(served)
    md5s = {
        f: md5((served / "svhn" / f).read_bytes()) for f in ("train_32x32.mat", "test_32x32.mat")
    }
    for f in md5s:
        (served / f).write_bytes((served / "svhn" / f).read_bytes())
    _patch_svhn(monkeypatch, base, md5s)
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
    _patch_svhn(monkeypatch, base, {})  # the official hashes: the served bytes do not match
    root = tmp_path / "data"
    with pytest.raises(real.DownloadError, match="(?i)hash") as e:
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
        with pytest.raises(real.DownloadError, match="could not download .*ConnectionError"):
            load_dataset(name, data_dir=root, download=True)
    assert not root.exists()  # not even an empty data directory is left


def test_fetch_refused_connection(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _patch_svhn(monkeypatch, f"http://127.0.0.1:{port}/", {})
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="could not download train_32x32.mat"):
        real.fetch("svhn", root)
    assert not root.exists()  # not even an empty data directory is left


def test_fetch_archive_downloads_and_unpacks(tmp_path, server, monkeypatch):
    served, base = server
    ref = make_cifar10(tmp_path / "staging")
    archive = served / "cifar-10-python.tar.gz"
    make_tar(archive, cifar_archive_members(tmp_path / "staging" / "cifar-10-batches-py"))
    src = real.SOURCES["cifar10"]
    dl = dataclasses.replace(
        src.archive, urls=(base + archive.name,), md5=md5(archive.read_bytes())
    )
    monkeypatch.setitem(real.SOURCES, "cifar10", dataclasses.replace(src, archive=dl))
    root = tmp_path / "data"
    assert real.fetch("cifar10", root) == root / "cifar-10-batches-py"
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
    with pytest.raises(real.DataFileError, match="MD5"):
        real.fetch("svhn", tmp_path)  # tiny fakes are not the official files


# ---------------------------------------------------------------------------------------------
# CLI functions
# ---------------------------------------------------------------------------------------------


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
    _patch_svhn(monkeypatch, base, md5s)
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


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def test_train_on_tiny_cifar10(tmp_path):
    from forwardgrad.config import TrainConfig
    from forwardgrad.train import train

    make_cifar10(tmp_path / "data")
    cfg = TrainConfig(
        dataset="cifar10",
        data_dir=str(tmp_path / "data"),
        guess="wt",
        depth=1,
        width=8,
        epochs=1,
        batch_size=4,
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.summary["status"] == "completed"
    assert result.summary["steps"] == 5
