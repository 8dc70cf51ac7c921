"""Official archives are unpacked; unsafe or truncated ones are refused, leaving nothing."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_files import (
    cifar_archive_members,
    listing,
    make_cifar10,
    make_tar,
)

from forwardgrad.data import load_dataset
from forwardgrad.data.errors import DataFileError, UnsafeArchiveError


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
    with pytest.raises(UnsafeArchiveError, match="refusing to unpack"):
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
    with pytest.raises(DataFileError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=root)
    assert listing(root) == ["cifar-10-python.tar.gz"]
