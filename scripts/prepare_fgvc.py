"""Turn an FGVC dataset's original download into VPT's json splits, which `dataset=fgvc/<name>` reads.

    python scripts/prepare_fgvc.py --root ~/data --dataset cub --archive CUB_200_2011.tgz
    python scripts/prepare_fgvc.py --root ~/data --dataset nabirds --archive nabirds.tar.gz
    python scripts/prepare_fgvc.py --root ~/data --dataset oxford_flowers \\
        --archive 102flowers.tgz --archive imagelabels.mat --archive setid.mat
    python scripts/prepare_fgvc.py --root ~/data --dataset stanford_dogs --archive images.tar --archive lists.tar
    python scripts/prepare_fgvc.py --root ~/data --dataset stanford_cars --archive cars_train.tgz \\
        --archive cars_test.tgz --archive car_devkit.tgz --archive cars_test_annos_withlabels.mat

An already extracted download can be given with `--source DIR` instead (or as well). `val` is drawn from
the official training split with `--seed` (Flowers uses its official val); a finished dataset is skipped
on a rerun unless `--force`. Layout and rules: `data/fgvc_prepare.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data.fgvc import FGVC_SETS, SPLITS, fgvc_set
from data.fgvc_prepare import prepare
from runners.errors import guard


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, required=True, help="data folder (paths.data_dir); the dataset "
                        "goes to <root>/<folder>")
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(s.name for s in FGVC_SETS)}")
    parser.add_argument("--archive", type=Path, action="append", default=[],
                        help="an original download (tar, tgz, zip or .mat); repeat for each file")
    parser.add_argument("--source", type=Path, help="a folder holding the extracted download")
    parser.add_argument("--seed", type=int, default=0, help="seed of the val draw (default 0)")
    parser.add_argument("--force", action="store_true", help="redo a dataset that is already prepared")
    args = parser.parse_args(argv)
    fgvc = fgvc_set(args.dataset)
    done = prepare(args.root, fgvc.name, args.archive, args.source, seed=args.seed, force=args.force)
    sizes = ", ".join(f"{split} {done.sizes[split]}" for split in SPLITS)
    if done.skipped:
        print(f"{fgvc.name}: already prepared in {done.folder} ({sizes}); --force redoes it")
        return
    vpt = "" if tuple(done.sizes[s] for s in SPLITS) == fgvc.sizes else \
        f" (VPT's: {', '.join(f'{split} {n}' for split, n in zip(SPLITS, fgvc.sizes, strict=True))})"
    print(f"{fgvc.name}: {sizes}, {done.num_classes} classes{vpt} -> {done.folder}")


if __name__ == "__main__":
    guard(main)
