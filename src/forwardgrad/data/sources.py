"""The real datasets, one ``Source`` each: files, checksums, URLs, shapes, classes and decoder.

``SOURCES`` maps each dataset name to its ``Source``; ``cifar100`` and ``cifar100-coarse`` read
the same files (same folder and cache ``key``) and differ in their default label set.

MD5 checksums: the official values as published in torchvision's dataset sources
(torchvision/datasets/mnist.py: MNIST.resources, FashionMNIST.resources;
torchvision/datasets/cifar.py: CIFAR10/CIFAR100 tgz_md5, train_list, test_list, meta;
torchvision/datasets/svhn.py: SVHN.split_list). The MNIST mirror is torchvision's, since
yann.lecun.com often refuses downloads; every mirror serves the same bytes (same MD5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .readers import decode_cifar10, decode_cifar100, decode_idx, decode_svhn

LABEL_SETS = ("fine", "coarse")


@dataclass(frozen=True)
class Download:
    """One official file: saved as ``name``, fetched from the first of ``urls`` that works."""

    name: str
    urls: tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class Source:
    """Everything about one real dataset: its files, where they come from, what they hold."""

    name: str  # dataset name, as ``load_dataset`` takes it
    summary: str  # one line for ``forwardgrad list``
    key: str  # cache name, shared by the datasets that read the same files
    title: str
    folder: str  # sub-directory of the data directory
    files: tuple[str, ...]  # required files in the folder
    optional: tuple[str, ...]  # used when present (class names)
    gz_ok: bool  # files may also be present as NAME.gz (IDX)
    downloads: tuple[Download, ...]  # files placed in the folder by ``fetch`` (if no archive)
    archive: Download | None  # official archive, placed in the data directory itself
    md5: dict[str, str]  # official MD5 of the archive's files (checked by ``fetch``)
    homepage: str
    licence: str
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int  # classes of the fine (default) label set
    sizes: tuple[int, int]  # official (train, test) sizes
    flip: bool  # horizontal flips are valid augmentation (not for digits)
    decode: Callable[[dict[str, Path]], dict[str, np.ndarray]]
    labels: str = "fine"  # label set served unless ``labels=`` says otherwise
    coarse_classes: int = 0  # classes of the coarse label set (0: there is none)

    @property
    def augmentable(self) -> bool:
        return self.image_shape[:2] == (32, 32)

    @property
    def default_classes(self) -> int:
        """Classes of the label set this dataset serves by default."""
        return self.classes_of(self.labels)

    def classes_of(self, label_set: str) -> int:
        return self.coarse_classes if label_set == "coarse" else self.num_classes

    def label_set(self, labels: str | None) -> str:
        """The label set to serve (``labels``, else the default), checked against the files."""
        chosen = self.labels if labels is None else labels
        if chosen not in LABEL_SETS:
            raise ValueError(f"labels={labels!r}: choose 'fine' or 'coarse'")
        if chosen == "coarse" and not self.coarse_classes:
            raise ValueError(f"labels={labels!r}: only cifar100 has 'coarse' labels")
        return chosen

    def file_label(self, name: str) -> str:
        return f"{name}[.gz]" if self.gz_ok else name

    def find(self, folder: Path, name: str) -> Path | None:
        """The file ``name`` in ``folder`` (or ``name.gz`` where allowed); None if absent."""
        for candidate in (name, name + ".gz") if self.gz_ok else (name,):
            p = folder / candidate
            if p.is_file():
                return p
        return None


# ----------------------------------------------------------------------------------------------
# The sources
# ----------------------------------------------------------------------------------------------

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_source(name, summary, title, mirrors, md5s, homepage, licence) -> Source:
    """A set of four gzipped IDX files of 28x28 grey images, fetched one by one."""
    return Source(
        name=name,
        summary=summary,
        key=name,
        title=title,
        folder=name,
        files=_IDX_FILES,
        optional=(),
        gz_ok=True,
        downloads=tuple(Download(n, tuple(m + n for m in mirrors), md5) for n, md5 in md5s.items()),
        archive=None,
        md5={},
        homepage=homepage,
        licence=licence,
        image_shape=(28, 28, 1),
        num_classes=10,
        sizes=(60000, 10000),
        flip=False,
        decode=decode_idx,
    )


def _cifar_source(name, summary, title, folder, archive, md5, optional, **fields) -> Source:
    """A CIFAR set: python batches in ``folder``, from the official archive ``(name, md5)``."""
    return Source(
        name=name,
        summary=summary,
        key=name,
        title=title,
        folder=folder,
        files=tuple(f for f in md5 if f not in optional),
        optional=optional,
        gz_ok=False,
        downloads=(),
        archive=Download(
            archive[0], (f"https://www.cs.toronto.edu/~kriz/{archive[0]}",), archive[1]
        ),
        md5=md5,
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        licence="A. Krizhevsky (2009), 'Learning Multiple Layers of Features from Tiny Images'; "
        "no explicit licence: cite the report",
        image_shape=(32, 32, 3),
        sizes=(50000, 10000),
        flip=True,
        **fields,
    )


_MNIST = _idx_source(
    "mnist",
    "MNIST, 60000/10000 x 28x28 grey, official IDX files (docs/datasets.md)",
    "MNIST handwritten digits",
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "http://yann.lecun.com/exdb/mnist/",
    "Y. LeCun, C. Cortes, C. Burges; no licence file is published with it (widely "
    "redistributed, often cited as CC BY-SA 3.0)",
)

_FASHION_MNIST = _idx_source(
    "fashion-mnist",
    "Fashion-MNIST, 60000/10000 x 28x28 grey, official IDX files",
    "Fashion-MNIST (Zalando article images)",
    (
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "https://github.com/zalandoresearch/fashion-mnist",
    "MIT licence, Zalando SE",
)

_CIFAR10 = _cifar_source(
    "cifar10",
    "CIFAR-10, 50000/10000 x 32x32 RGB, official python batches",
    "CIFAR-10 (32x32 colour images)",
    "cifar-10-batches-py",
    ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    optional=("batches.meta",),
    num_classes=10,
    decode=decode_cifar10,
)

_CIFAR100 = _cifar_source(
    "cifar100",
    "CIFAR-100 (100 fine labels), 50000/10000 x 32x32 RGB",
    "CIFAR-100 (32x32 colour images)",
    "cifar-100-python",
    ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
    {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    optional=("meta",),
    num_classes=100,
    coarse_classes=20,
    decode=decode_cifar100,
)

_SVHN = Source(
    name="svhn",
    summary="SVHN cropped digits, 73257/26032 x 32x32 RGB, official .mat files",
    key="svhn",
    title="SVHN street-view house numbers (cropped digits)",
    folder="svhn",
    files=("train_32x32.mat", "test_32x32.mat"),
    optional=(),
    gz_ok=False,
    downloads=(
        Download(
            "train_32x32.mat",
            ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
            "e26dedcc434d2e4c54c9b2d4a06d8373",
        ),
        Download(
            "test_32x32.mat",
            ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
            "eb5a983be6a315427106f1b164d9cef3",
        ),
    ),
    archive=None,
    md5={},
    homepage="http://ufldl.stanford.edu/housenumbers/",
    licence="Y. Netzer et al. (2011); for non-commercial use only",
    image_shape=(32, 32, 3),
    num_classes=10,
    sizes=(73257, 26032),
    flip=False,
    decode=decode_svhn,
)

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        _MNIST,
        _FASHION_MNIST,
        _CIFAR10,
        _CIFAR100,
        dataclasses.replace(
            _CIFAR100,
            name="cifar100-coarse",
            summary="CIFAR-100 with its 20 coarse labels",
            labels="coarse",
        ),
        _SVHN,
    )
}


def source_for(name: str) -> Source:
    """The ``Source`` of the real dataset ``name`` (a ValueError naming them otherwise)."""
    if name not in SOURCES:
        raise ValueError(f"{name!r} is not a real dataset; choose one of {sorted(SOURCES)}")
    return SOURCES[name]
