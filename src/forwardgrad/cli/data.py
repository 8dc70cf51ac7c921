"""``forwardgrad data info NAME`` and ``forwardgrad data fetch NAME``.

Wire into the main parser with ``add_data_parser(sub)``. The commands return an exit code and
raise ``ValueError`` / ``FileNotFoundError`` with a clear message on problems.
"""

from __future__ import annotations

import argparse
import sys

from ..data import DATASETS, dataset_spec, load_dataset
from ..data.cache import DATA_ENV, default_data_dir
from ..data.download import fetch
from ..data.files import status
from ..data.real import class_names
from ..data.sources import SOURCES


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def _print_loaded(data, classes: list[str] | None = None) -> None:
    x = data.x_train
    print(
        f"  train:      {len(x)} examples, stored {str(x.dtype).replace('torch.', '')} "
        f"{tuple(x.shape)}"
    )
    print(f"  test:       {len(data.x_test)} examples")
    shown = f" ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})" if classes else ""
    print(f"  classes:    {data.num_classes}{shown}")
    print(f"  features:   {data.num_features} float32 per example after the transform")


def cmd_data_info(args: argparse.Namespace) -> int:
    """Describe a dataset: files (present or expected), shapes, classes, split sizes.

    Exit code 0 when the dataset can be loaded, 1 when files are missing. When present, the
    dataset is loaded (so corrupt files are reported, and the decoded cache is built).
    """
    name = args.name
    dataset_spec(name)  # a clear error for an unknown name
    if name not in SOURCES:
        print(f"{name}: {DATASETS[name].summary}")
        print("  embedded in an installed package: no files needed")
        _print_loaded(load_dataset(name))
        return 0
    st = status(name, args.data_dir)
    src = st.source
    h, w, c = src.image_shape
    print(f"{name}: {src.title}")
    print(f"  homepage:   {src.homepage}")
    print(f"  licence:    {src.licence}")
    print(f"  data dir:   {st.root}  (from {st.origin}; set with --data-dir or ${DATA_ENV})")
    print(f"  files in:   {st.folder}")
    width = max(len(f.label) for f in st.files)
    for f in st.files:
        state = f"present ({_size(f.size)})" if f.present else "missing"
        if not f.required:
            state += "  [optional: class names]"
        print(f"    {f.label:<{width}}  {state}")
    if st.archive is not None:
        where = "present" if st.archive_present else "absent"
        print(f"  archive:    {st.archive}  ({where}; from {src.archive.urls[0]})")
    else:
        print("  downloads:  " + "\n              ".join(d.urls[0] for d in src.downloads))
    if not st.ready:
        missing = ", ".join(f.label for f in st.missing)
        print(f"  status:     MISSING {missing}")
        print(
            f"              run `forwardgrad data fetch {name} --data-dir {st.root}`, or put "
            f"the official files there (see docs/datasets.md)"
        )
        print(
            f"  expected:   {src.sizes[0]} train / {src.sizes[1]} test images of {h}x{w}x{c}, "
            f"{src.default_classes} classes"
        )
        return 1
    print("  status:     ready" + ("" if not st.missing else " (unpacking the archive now)"))
    data = load_dataset(name, data_dir=str(st.root))
    _print_loaded(data, class_names(name, st.root))
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    """Download the official files of a dataset (MD5-verified); files already there are checked."""
    name = args.name
    dataset_spec(name)  # a clear error for an unknown name
    if name not in SOURCES:
        raise ValueError(f"{name} is embedded in an installed package; there is nothing to fetch")
    progress = not args.no_progress and sys.stderr.isatty()
    folder = fetch(name, args.data_dir, progress=progress, log=lambda m: print(f"  {m}"))
    data = load_dataset(name, data_dir=str(folder.parent))  # decode once: validates, fills cache
    print(f"{name}: ready in {folder} ({len(data.x_train)} train / {len(data.x_test)} test)")
    return 0


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help=f"data directory (default: ${DATA_ENV} or {default_data_dir()})",
    )


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``data info|fetch`` to the main parser's subparsers; returns the ``data`` parser."""
    names = ", ".join(SOURCES)
    p = subparsers.add_parser(
        "data",
        help="real datasets: where their files go, and fetching them",
        description=f"Real datasets ({names}) read from their official files. The data directory "
        f"is --data-dir, else ${DATA_ENV}, else {default_data_dir()}.",
    )
    sub = p.add_subparsers(dest="data_command", required=True)

    q = sub.add_parser(
        "info",
        help="files (present or expected), shapes, classes, split sizes",
        description="Describe a dataset; exit code 1 when its files are missing.",
    )
    q.add_argument("name", metavar="NAME", help=f"dataset name ({names}; or an embedded one)")
    _add_data_dir(q)
    q.set_defaults(func=cmd_data_info)

    q = sub.add_parser(
        "fetch",
        help="download the official files and verify their MD5",
        description="Download what is missing (nothing else is ever downloaded).",
    )
    q.add_argument("name", metavar="NAME", help=f"dataset name ({names})")
    _add_data_dir(q)
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_data_fetch)
    return p
