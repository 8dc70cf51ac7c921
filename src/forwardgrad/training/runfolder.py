"""Run folders: one process at a time, checked before use, nothing half-made left behind.

* :class:`RunLock` holds an advisory lock (``flock``) on ``RUN_DIR/.lock`` for as long as a
  process trains in the folder. The kernel drops the lock when the process ends, however it
  ends (a crash or SIGKILL included), so a dead process never leaves a folder stuck; the file
  itself is removed on release.
* :func:`check_out_dir` refuses, before any data is loaded, a folder that cannot be created or
  written (under a file, read-only).
* :func:`refuse_taken` refuses a folder that holds any file of another run.
* :func:`remove_temp_files` deletes temporary files that a killed writer left beside the run's
  files (only ever called while holding the lock, so no live writer owns them).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
from pathlib import Path

LOCK_NAME = ".lock"
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "probes.jsonl")
"""The files a training run writes (with ``tensorboard/`` when asked for)."""
TENSORBOARD_DIR = "tensorboard"


class RunFolderTaken(FileExistsError):
    """The folder holds (part of) another run."""


class RunFolderBusy(FileExistsError):
    """Another process is training in the folder right now."""


class RunFolderUnusable(ValueError):
    """The folder cannot be created or written."""


def check_out_dir(path: str | Path) -> None:
    """Refuse a run folder that cannot be created and written, before anything is loaded."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise RunFolderUnusable(f"{path} is a file, not a folder; choose another --out")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderUnusable(
            f"cannot create the run folder {path}: {existing} is a file, not a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderUnusable(
            f"cannot write the run folder {path}: {existing} is not writable by this user; "
            "choose another --out"
        )


def run_files(path: str | Path) -> list[str]:
    """The run files (and run subfolders) that ``path`` holds, by name."""
    p = Path(path)
    if not p.is_dir():
        return []
    names = [n for n in RUN_FILES if (p / n).exists()]
    if (p / TENSORBOARD_DIR).is_dir():
        names.append(TENSORBOARD_DIR + "/")
    return names


def refuse_taken(path: str | Path) -> None:
    """Raise :class:`RunFolderTaken` when ``path`` holds any file of a run."""
    held = run_files(path)
    if held:
        hint = (
            "pass --resume to continue it"
            if "checkpoint.pt" in held
            else "it never finished an epoch, so there is nothing to resume; remove the folder"
        )
        raise RunFolderTaken(
            f"{path} already holds a run ({', '.join(held)}); {hint}, or choose another --out"
        )


def refuse_busy(path: str | Path) -> None:
    """Raise :class:`RunFolderBusy` when another process holds the folder's lock right now."""
    lock_path = Path(path) / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return  # no lock file: nobody is training there
    try:
        free = _try_lock(fd)  # released again by closing the descriptor below
    finally:
        os.close(fd)
    if not free:
        raise RunFolderBusy(_busy_message(Path(path)))


def _busy_message(path: Path) -> str:
    return (
        f"{path} is in use by another forwardgrad process ({_holder(path / LOCK_NAME)}); "
        "wait for it to finish or choose another --out"
    )


def next_free_dir(path: str | Path) -> Path:
    """``path`` if it holds no run, else the first of ``path-2``, ``path-3``, ... holding none."""
    p = Path(path)
    n = 1
    candidate = p
    while run_files(candidate) or (candidate / LOCK_NAME).exists():
        n += 1
        candidate = p.with_name(f"{p.name}-{n}")
    return candidate


def remove_temp_files(path: str | Path) -> list[str]:
    """Delete the temporary files (``.<run file>.*.tmp``) a killed writer left; returns their
    names. Call only while holding the folder's lock."""
    removed = []
    for name in RUN_FILES:
        for tmp in Path(path).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    return removed


def discard_run(path: str | Path, created: bool) -> None:
    """Remove the files of a run that never wrote a checkpoint (and the folder, if this run
    created it and nothing else is left in it)."""
    p = Path(path)
    for name in RUN_FILES:
        (p / name).unlink(missing_ok=True)
    shutil.rmtree(p / TENSORBOARD_DIR, ignore_errors=True)
    remove_temp_files(p)
    if created:
        with contextlib.suppress(OSError):
            p.rmdir()  # only when empty: never removes anything it did not write


class RunLock:
    """Exclusive use of a run folder by this process (creating the folder if needed).

    ``with RunLock(path) as lock:`` raises :class:`RunFolderBusy` at once if another process
    holds it; ``lock.created`` says whether the folder was made by this lock.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.created = False
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderUnusable(
                f"cannot create the run folder {self.path}: {e.strerror or e}"
            ) from None
        lock_path = self.path / LOCK_NAME
        for _ in range(5):  # retry while another process removes the lock file under us
            fd = self._open(lock_path)
            if not _try_lock(fd):
                os.close(fd)
                raise RunFolderBusy(_busy_message(self.path))
            if _same_file(fd, lock_path):
                self._fd = fd
                _write_holder(fd)
                return
            os.close(fd)  # we locked a lock file that its owner has just removed
        raise RunFolderBusy(f"{self.path}: could not take its lock; try again")

    def _open(self, lock_path: Path) -> int:
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderUnusable(
                f"cannot write the run folder {self.path}: {e.strerror or e}"
            ) from None

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink before unlocking: a process that opens the old file after this sees it gone
        # (the inode check in acquire) and retries on a fresh one.
        with contextlib.suppress(OSError):
            (self.path / LOCK_NAME).unlink()
        os.close(self._fd)  # closing drops the lock
        self._fd = None


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _write_holder(fd: int) -> None:
    # Written in place, not atomically: the lock belongs to this file's inode, and replacing
    # the file would hand out a second lock. The text only tells a waiting user who holds it.
    since = datetime.datetime.now().isoformat(timespec="seconds")
    text = f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n"
    os.ftruncate(fd, 0)
    os.write(fd, text.encode())


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "holder unknown"
