"""The PEFT figure: mean Top-1 against trainable parameters (log scale), one marker per method.

    python scripts/plot.py runs/vtab [--out FILE.png] [--published] [--benchmark vtab|fgvc|fewshot]

The figure goes to `--out` (a folder: `plot.png` inside it; no suffix: `.png` added, as matplotlib would), by
default `<folder>/plot.png` (never the current directory).

Ours are filled, published rows hollow in the same colour; VTAB-1k uses the flat 19-task mean. A row is plotted
only when its mean is complete (every task has a run) and its parameter count is above zero (a log axis).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from runners.errors import UserError, guard  # noqa: E402
from runners.results import build_results, load_runs, select_benchmark  # noqa: E402

PARAMS = {"with_head": "ours with head (mean over tasks)", "without_head": "ours without head"}


def points(folder: str, benchmark: str | None, published: bool, params: str
           ) -> tuple[str, str, list[tuple[str, str, float, float, bool]], list[str]]:
    """(title, y label, [(method, label, params M, mean Top-1, ours)], skipped labels) for the figure."""
    bench, runs = select_benchmark(load_runs(folder), benchmark)
    results = build_results(runs, bench, published)
    out, skipped, seen = [], [], set()
    for line in results.lines:
        mean = line.values[bench.headline].mean
        if line.kind == "ours":
            x, label = line.params[0 if params == "without_head" else 1], line.label
        elif line.kind == "published" and line.published.method not in seen:
            seen.add(line.published.method)
            x, label = next((p for p in line.params if p is not None), None), f"{line.published.method} (published)"
        else:
            continue
        if mean is None or x is None or x <= 0:
            skipped.append(label)
        else:
            out.append((line.row.method, label, x, mean, line.kind == "ours"))
    return bench.title, f"Top-1 (%), {bench.mean_label(bench.headline)}", out, skipped


def plot(folder: str, out: Path, benchmark: str | None = None, published: bool = False,
         params: str = "with_head") -> list[str]:
    """Write the figure to `out`; returns the rows left out (incomplete mean, or no parameter count above 0)."""
    title, ylabel, pts, skipped = points(folder, benchmark, published, params)
    if not pts:
        raise UserError(f"nothing to plot under {folder}: no row has a run for every task of its mean")
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(p[0] for p in pts))}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=150)
    for method, label, x, y, ours in pts:
        colour = colours[method]
        ax.scatter([x], [y], s=55, marker="o", facecolors=colour if ours else "none", edgecolors=colour,
                   linewidths=1.5, zorder=3)
        ax.annotate(label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)
    ax.set_title(title)
    ax.set_xlabel(f"Trainable parameters (M, log scale; {PARAMS[params]}"
                  + ("; published as reported)" if published else ")"))
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color="0.3", label="ours")]
    if published:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.3",
                              label="published"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return skipped


def output_path(out: str | None, folder: str) -> Path:
    """The file the figure goes to, and that `wrote` names: `plot.png` inside `--out` if a folder (existing, or
    ending in /), `--out` with .png if it has no suffix (where matplotlib would write it), else `--out` itself;
    by default `<folder>/plot.png`. Checked before the work: matplotlib's error for a suffix is a traceback."""
    if out is None:
        return Path(folder).expanduser() / "plot.png"
    path = Path(out).expanduser()
    if path.is_dir() or out.endswith(("/", os.sep)):
        return path / "plot.png"
    if not path.suffix:
        return path.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise UserError(f"--out {out}: matplotlib writes no {path.suffix} files; end it in one of "
                        f"{', '.join('.' + f for f in sorted(formats))}")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a folder searched recursively for metrics.json files")
    parser.add_argument("--out", help="the figure to write, e.g. fig.png or fig.pdf, or a folder for plot.png "
                                      "(default: <folder>/plot.png)")
    parser.add_argument("--published", action="store_true", help="add the published rows (hollow markers)")
    parser.add_argument("--benchmark", help="vtab, fgvc or fewshot (default: the one benchmark the runs hold)")
    parser.add_argument("--params", choices=tuple(PARAMS), default="with_head",
                        help="our parameter count on the x axis (default with_head: linear probing has 0 without)")
    args = parser.parse_args(argv)
    out = output_path(args.out, args.folder)
    skipped = plot(args.folder, out, args.benchmark, args.published, args.params)
    print(f"wrote {out}")
    if skipped:
        print(f"left out (incomplete mean or no parameter count above 0): {', '.join(skipped)}")


if __name__ == "__main__":
    guard(main)
