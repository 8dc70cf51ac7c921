"""Unpacking an official archive (CIFAR's ``*.tar.gz``), safely and atomically.

Archives are unpacked only after every member has been checked (no absolute paths, no ``..``,
no links, no device files), with tarfile's ``"data"`` filter where available, into a temporary
folder that is then renamed into place: a refused, interrupted or failed extraction leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import DataFileError, UnsafeArchiveError

_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why extracting ``member`` could write outside its folder, or None when it is safe."""
    name = member.name
    if not name or "\x00" in name:
        return "has an empty or invalid name"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "has a '..' component"
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
    if not (member.isfile() or member.isdir()):
        return "is a device file, FIFO or other special file"
    return None


def _members_of(tar: tarfile.TarFile, archive: Path, folder: str) -> list[tarfile.TarInfo]:
    """The members under ``folder/``, after checking every member of the archive."""
    try:
        members = tar.getmembers()
    except _TAR_ERRORS as e:
        raise DataFileError(f"{archive}: corrupt or truncated archive ({e})") from None
    selected = []
    for m in members:
        problem = unsafe_member(m)
        if problem:
            raise UnsafeArchiveError(
                f"{archive}: refusing to unpack it: member {m.name!r} {problem}; nothing "
                "was extracted. Use the official archive."
            )
        parts = PurePosixPath(m.name).parts
        if parts and parts[0] == folder:
            selected.append(m)
    if not any(m.isfile() for m in selected):
        raise DataFileError(f"{archive}: holds no {folder}/ folder; is it the right file?")
    return selected


def extract_archive(archive: Path, root: Path, folder: str) -> Path:
    """Unpack ``folder/`` of a tar archive into ``root/folder``, safely and atomically.

    Every member is checked first; one unsafe member rejects the whole archive. Members are
    extracted (tarfile's ``"data"`` filter where available) into a temporary folder inside
    ``root``, then renamed into place, so an interrupted or failed extraction leaves nothing.
    """
    target = root / folder
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            tar = tarfile.open(archive, "r:*")
        except _TAR_ERRORS as e:
            raise DataFileError(f"{archive}: not a readable tar archive ({e})") from None
        with tar:
            selected = _members_of(tar, archive, folder)
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=selected, filter="data")
                else:  # pragma: no cover  (Python without extraction filters)
                    tar.extractall(tmp, members=selected)
            except _TAR_ERRORS as e:
                raise DataFileError(
                    f"{archive}: corrupt or truncated archive ({e}); nothing was extracted"
                ) from None
        _move_into_place(tmp / folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(src: Path, target: Path) -> None:
    try:
        os.rename(src, target)  # atomic; fails when target exists and is not empty
        return
    except OSError:
        if not target.is_dir():
            raise
    for f in src.iterdir():  # target holds some files: add the missing ones, one rename each
        if f.is_file() and not (target / f.name).exists():
            os.replace(f, target / f.name)
