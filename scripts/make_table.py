"""Results tables: every run's `metrics.json` under a folder as a paper's table, beside the published numbers.

    python scripts/make_table.py runs/vtab [--published] [--format markdown|csv|latex] [--benchmark vtab|fgvc|fewshot]

The tables are built by `runners.results` (see there for the layout, the means and the protocol flags).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from runners.errors import guard
from runners.results import FORMATS, build_results, load_runs, render, select_benchmark


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a folder searched recursively for metrics.json files")
    parser.add_argument("--published", action="store_true", help="add the published rows and ours − published")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--benchmark", help="vtab, fgvc or fewshot (default: the one benchmark the runs hold)")
    parser.add_argument("--decimals", type=int, default=2, help="decimals of Top-1 cells (markdown, latex)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    bench, runs = select_benchmark(load_runs(args.folder), args.benchmark)
    print(render(build_results(runs, bench, args.published), args.format, args.decimals), end="")


if __name__ == "__main__":
    guard(main)
