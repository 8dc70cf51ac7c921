"""The errors of the real datasets: each says what is wrong, with which file, and what to do."""

from __future__ import annotations


class DataFileError(ValueError):
    """A data file is corrupt, truncated or not in the format its name promises."""


class UnsafeArchiveError(DataFileError):
    """An archive member could write outside its folder: refused, nothing extracted."""


class DataMissingError(FileNotFoundError):
    """Files of a dataset are missing; the message says which, where, and where they come from."""


class DownloadError(ValueError):
    """A download failed (offline, server error or checksum mismatch); nothing was left behind."""
