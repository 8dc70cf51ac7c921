"""Which files of a real dataset are where: finding them, saying what is missing and from where.

Layout under the data directory ``DIR``::

    mnist/           train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
                     t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]
    fashion-mnist/   the same four IDX files
    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta
    svhn/            train_32x32.mat, test_32x32.mat
    cifar-10-python.tar.gz, cifar-100-python.tar.gz   (optional: unpacked safely on first use)
    .cache/          decoded uint8 arrays (``<source>.npz``), rebuilt when a source file changes
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .archives import extract_archive
from .cache import DATA_ENV, data_dir_origin
from .errors import DataMissingError
from .sources import Source, source_for


def _missing_message(name: str, src: Source, root: Path, missing: list[str]) -> str:
    folder = root / src.folder
    what = ", ".join(src.file_label(m) for m in missing)
    msg = f"{name}: missing {what} in {folder}{os.sep} (data directory {root}). "
    if src.archive is not None:
        msg += (
            f"Download the official archive {src.archive.urls[0]} and put it in {root}{os.sep} "
            f"(it is unpacked there on first use), or unpack it yourself so that "
            f"{folder}{os.sep} holds {', '.join(src.files)}"
        )
    else:
        urls = [d.urls[0] for d in src.downloads if d.name.removesuffix(".gz") in missing]
        them = "it" if len(urls) == 1 else "them"
        msg += f"Download {', '.join(urls)} and put {them} in {folder}{os.sep}"
        msg += " (gzipped or not)" if src.gz_ok else ""
    return (
        msg + f"; or run `forwardgrad data fetch {name} --data-dir {root}`, or load with "
        f"download=True. Set the directory with --data-dir or ${DATA_ENV}. See {src.homepage}"
    )


def locate(name: str, root: Path, extract: bool = True) -> dict[str, Path]:
    """Paths of the dataset's files under ``root`` (unpacking the official archive if needed)."""
    src = source_for(name)
    folder = root / src.folder
    found = {f: p for f in src.files if (p := src.find(folder, f)) is not None}
    missing = [f for f in src.files if f not in found]
    if missing and extract and src.archive is not None and (root / src.archive.name).is_file():
        extract_archive(root / src.archive.name, root, src.folder)
        return locate(name, root, extract=False)
    if missing:
        raise DataMissingError(_missing_message(name, src, root, missing))
    found.update({f: p for f in src.optional if (p := src.find(folder, f)) is not None})
    return found


# ----------------------------------------------------------------------------------------------
# Status (for `forwardgrad data info`)
# ----------------------------------------------------------------------------------------------


@dataclass
class FileStatus:
    label: str  # name as shown (IDX: NAME[.gz])
    path: Path  # where it is, or where it is expected
    present: bool
    required: bool
    size: int | None


@dataclass
class DataStatus:
    name: str
    source: Source
    root: Path
    origin: str
    folder: Path
    files: list[FileStatus]
    archive: Path | None
    archive_present: bool

    @property
    def missing(self) -> list[FileStatus]:
        return [f for f in self.files if f.required and not f.present]

    @property
    def ready(self) -> bool:
        return not self.missing or self.archive_present


def status(name: str, data_dir: str | os.PathLike | None = None) -> DataStatus:
    """Which files of ``name`` are present, without reading or changing anything."""
    src = source_for(name)
    root, origin = data_dir_origin(data_dir)
    folder = root / src.folder
    files = []
    for f in src.files + src.optional:
        p = src.find(folder, f)
        files.append(
            FileStatus(
                p.name if p is not None else src.file_label(f),
                p or folder / f,
                p is not None,
                f in src.files,
                p.stat().st_size if p else None,
            )
        )
    archive = root / src.archive.name if src.archive is not None else None
    return DataStatus(
        name, src, root, origin, folder, files, archive, archive is not None and archive.is_file()
    )
