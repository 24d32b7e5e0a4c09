"""``python -m wbc download {pbc,all,bloodmnist,lmu} --data-dir DIR``: fetch and verify data."""
from __future__ import annotations

import argparse

from wbc.errors import WbcError

DATASETS = ("pbc", "all", "bloodmnist", "lmu")
SIZES = (28, 64, 128, 224)


def register(subparsers) -> None:
    """Add the ``download`` sub-command."""
    parser = subparsers.add_parser(
        "download", help="download a dataset into the data folder and verify it",
        description="Download a dataset into DIR under its standard name and verify it "
                    "(checksums where the owner publishes them, else folder names, per-class "
                    "counts and image decoding). Re-running is safe: an interrupted download "
                    "resumes, a complete dataset is reported and left alone. 'lmu' prints how "
                    "to get the TCIA collection by hand and verifies DIR/AML-Cytomorphology_LMU.")
    parser.add_argument("dataset", choices=DATASETS, help="which dataset")
    parser.add_argument("--data-dir", default=None,
                        help="data folder (default: $WBC_DATA_DIR)")
    parser.add_argument("--url", default=None,
                        help="download address overriding the registry's (pbc, bloodmnist)")
    parser.add_argument("--size", type=int, choices=SIZES, default=None,
                        help="BloodMNIST image size (default 28)")
    parser.add_argument("--verify-all", action="store_true",
                        help="decode every image instead of a sample (pbc, all, lmu)")
    parser.add_argument("--max-archive-gb", type=float, default=None,
                        help="pbc: refuse an archive that unpacks to more than this many GiB, "
                             "checked before extracting (default 20)")
    parser.add_argument("--max-archive-entries", type=int, default=None,
                        help="pbc: refuse an archive with more entries than this, checked before "
                             "extracting (default 200000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=main)


def _options(args: argparse.Namespace) -> dict:
    """The keyword options for ``download_dataset``; rejects flags that do not apply."""
    name = args.dataset
    if args.url and name not in ("pbc", "bloodmnist"):
        raise WbcError(f"--url applies to pbc and bloodmnist only ({name} has no plain HTTPS "
                       "download)")
    if args.size is not None and name != "bloodmnist":
        raise WbcError("--size applies to bloodmnist only")
    if args.verify_all and name == "bloodmnist":
        raise WbcError("--verify-all does not apply to bloodmnist (its MD5 covers every byte)")
    limits = getattr(args, "max_archive_gb", None), getattr(args, "max_archive_entries", None)
    if any(v is not None for v in limits) and name != "pbc":
        raise WbcError("--max-archive-gb and --max-archive-entries apply to pbc only (the other "
                       "datasets are not zip archives)")
    options: dict = {}
    if limits[0] is not None:
        if not limits[0] > 0:
            raise WbcError(f"--max-archive-gb must be above 0, got {limits[0]}")
        options["max_archive_bytes"] = int(limits[0] * 1024 ** 3)
    if limits[1] is not None:
        if limits[1] < 1:
            raise WbcError(f"--max-archive-entries must be at least 1, got {limits[1]}")
        options["max_archive_entries"] = limits[1]
    if name in ("pbc", "bloodmnist"):
        options["url"] = args.url
    if name == "bloodmnist":
        options["size"] = args.size or 28
    else:
        options["verify_all"] = args.verify_all
    if name != "lmu":
        options["progress"] = not args.no_progress
    return options


def main(args: argparse.Namespace) -> int:
    """Run the download; 0 when the data is usable, 1 when files are missing or unreadable."""
    from wbc.config import data_dir_argument
    from wbc.download import download_dataset, lmu_instructions

    data_dir = data_dir_argument(args.data_dir, must_exist=False)
    if args.dataset == "lmu":
        print(lmu_instructions(data_dir))
    result = download_dataset(args.dataset, data_dir, **_options(args))
    print(result.summary())
    return 0 if result.report is None or result.report.usable else 1
