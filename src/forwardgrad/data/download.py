"""Fetching a real dataset's official files, checked against their official MD5.

Nothing is downloaded unless asked (``forwardgrad data fetch NAME`` or ``download=True``).
Downloads go through pooch, into a temporary folder renamed into place once the checksum
matches; offline, on a server error or a checksum mismatch the ``DownloadError`` says what
failed for each mirror and nothing is left behind, not even an empty folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .archives import extract_archive
from .cache import resolve_data_dir
from .errors import DataFileError, DownloadError
from .sources import Download, Source, source_for


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # the official checksums are MD5 (integrity only)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    """A DataFileError unless ``path`` is the official file (its MD5 is ``md5``)."""
    got = file_md5(path)
    if got != md5:
        raise DataFileError(
            f"{path} has MD5 {got}, but the official file's is {md5}: it is corrupt, truncated or "
            "not the official file. Delete it and fetch it again."
        )


def _short(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _folder_for_writing(folder: Path) -> Iterator[Path]:
    """``folder``, created for the block and removed again if the block leaves it new and empty."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def download_file(dl: Download, dest_dir: Path, progress: bool = False) -> Path:
    """Download ``dl`` into ``dest_dir`` with pooch, checking its MD5; leave nothing on failure."""
    try:
        import pooch
    except ImportError:  # pragma: no cover
        raise DownloadError("downloading needs the 'pooch' package (pip install pooch)") from None
    target = dest_dir / dl.name
    errors = []
    logger = pooch.get_logger()
    level = logger.level
    with _folder_for_writing(dest_dir):
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest_dir))
        logger.setLevel("WARNING")  # we say what we download; pooch would show the temporary name
        try:
            for url in dl.urls:
                try:
                    got = pooch.retrieve(
                        url,
                        known_hash=f"md5:{dl.md5}",
                        fname=dl.name,
                        path=tmp,
                        progressbar=progress,
                    )
                except MemoryError:
                    raise
                except Exception as e:  # offline, HTTP error, checksum mismatch: try the next one
                    errors.append(f"{url}: {_short(e)}")
                    continue
                os.replace(got, target)
                return target
        finally:
            logger.setLevel(level)
            shutil.rmtree(tmp, ignore_errors=True)
    raise DownloadError(
        f"could not download {dl.name}: " + "; ".join(errors) + f". Nothing was written. Check "
        f"the network connection, or download {dl.urls[0]} by hand and put it in {dest_dir}"
    )


def _verified_or_downloaded(
    dl: Download, dest_dir: Path, say: Callable[[str], None], progress: bool
) -> Path:
    """``dest_dir/dl.name``: checked against its MD5 when present, else downloaded (and checked)."""
    path = dest_dir / dl.name
    if path.is_file():
        verify_md5(path, dl.md5)
        say(f"{path}: present, MD5 verified")
    else:
        say(f"downloading {dl.urls[0]}")
        download_file(dl, dest_dir, progress)
        say(f"{path}: downloaded, MD5 verified")
    return path


def _fetch_archive(src: Source, root: Path, say: Callable[[str], None], progress: bool) -> Path:
    """The folder unpacked from the official archive (fetched if absent), or checked if there."""
    folder = root / src.folder
    present = {f: p for f in src.files + src.optional if (p := src.find(folder, f))}
    if all(f in present for f in src.files):
        for f, p in present.items():
            verify_md5(p, src.md5[f])
        say(f"{folder}: all files present, MD5 verified")
        return folder
    archive = _verified_or_downloaded(src.archive, root, say, progress)
    extract_archive(archive, root, src.folder)
    say(f"{folder}: unpacked")
    return folder


def _fetch_downloads(src: Source, root: Path, say: Callable[[str], None], progress: bool) -> Path:
    """The folder holding each official file: checked if there, downloaded if not."""
    folder = root / src.folder
    for dl in src.downloads:
        logical = dl.name.removesuffix(".gz") if src.gz_ok else dl.name
        p = src.find(folder, logical)
        if p is not None and p.name != dl.name:
            say(f"{p}: present (uncompressed: no official checksum; checked when decoded)")
        else:
            _verified_or_downloaded(dl, folder, say, progress)
    return folder


def fetch(
    name: str,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download (and verify) the official files of ``name`` that are not there yet.

    Files already present are checked against the official MD5 (uncompressed IDX files, which
    have no official checksum, are only decoded later). Returns the dataset's folder.
    """
    src = source_for(name)
    say = log or (lambda _msg: None)
    # leave no empty data directory behind either
    with _folder_for_writing(resolve_data_dir(data_dir)) as root:
        if src.archive is not None:
            return _fetch_archive(src, root, say, progress)
        return _fetch_downloads(src, root, say, progress)
