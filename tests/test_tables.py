"""Results tables and the plot from hand-written metrics.json files: means, seeds, missing runs, published rows."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from data.vtab import VTAB_TASKS
from runners.results import (
    benchmark_spec,
    build_results,
    load_published,
    load_runs,
    read_method_map,
    render,
    select_benchmark,
)
from tests.conftest import run_cli

TASKS = [t.name for t in VTAB_TASKS]
AUGREG, ORIG = "augreg_in21k", "orig_in21k"  # timm pretrained tags


def write_run(root: Path, method: str, task: str, seed: int, top1: float, *, benchmark: str = "vtab",
              weights: str = AUGREG, params: tuple[int, int] = (200_000, 240_000)) -> None:
    """A metrics.json with the fields the runner writes (those the tables read)."""
    folder = root / benchmark / task / method / "vit_b16" / f"seed{seed}"
    folder.mkdir(parents=True)
    metrics = {
        "task": task, "benchmark": benchmark, "group": "Natural", "method": method, "run_name": method,
        "backbone": "vit_b16_in21k", "seed": seed, "protocol": "final", "top1": top1,
        "params": {"trainable_without_head": params[0], "trainable_with_head": params[1], "total": 86_000_000},
        "stored_bytes": 800_000, "gmacs_per_image": 17.6, "peak_memory_mib": 9000.0,
        "peak_memory_kind": "cuda_max_allocated", "train_images_per_s": 400.0,
        "provenance": {"data_format": "NOAH vtab-1k list files", "normalisation": {"mean": [0.5] * 3, "std": [0.5] * 3},
                       "interpolation": "bicubic", "selection": "final epoch",
                       "weights": f"timm:vit_base_patch16_224.{weights}",
                       "timm_model": f"vit_base_patch16_224.{weights}"},
        "config": {"seed": seed, "dataset": {"name": task, "benchmark": benchmark}},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def vtab(tmp_path) -> Path:
    """ssf: 2 seeds (50+i and 52+i), orig_in21k weights; linear: 40+i; bitfit: 45+i without dtd."""
    root = tmp_path / "runs"
    for i, task in enumerate(TASKS):
        write_run(root, "ssf", task, 42, 50.0 + i, weights=ORIG)
        write_run(root, "ssf", task, 43, 52.0 + i, weights=ORIG)
        write_run(root, "linear", task, 42, 40.0 + i, params=(0, 38_045))
        if task != "dtd":
            write_run(root, "bitfit", task, 42, 45.0 + i, params=(102_912, 140_957))
    return root


def results_of(folder: Path, published: bool = False):
    bench, runs = select_benchmark(load_runs(folder), None)
    return build_results(runs, bench, published)


def line(results, kind: str, label: str):
    return next(x for x in results.lines if x.kind == kind and label in x.label)


def test_group_and_flat_means(vtab):
    results = results_of(vtab)
    ssf, linear = line(results, "ours", "ssf").values, line(results, "ours", "linear").values
    # ssf per-task means are 51+i: Natural i=0..6, Specialized 7..10, Structured 11..18
    assert ssf["natural"].mean == pytest.approx(54.0)
    assert ssf["specialized"].mean == pytest.approx(59.5)
    assert ssf["structured"].mean == pytest.approx(65.5)
    assert ssf["mean_group"].mean == pytest.approx((54.0 + 59.5 + 65.5) / 3)
    assert ssf["mean_flat"].mean == pytest.approx(60.0)
    assert linear["mean_flat"].mean == pytest.approx(49.0)
    assert linear["mean_group"].mean == pytest.approx((43.0 + 48.5 + 54.5) / 3)
    assert [r.method for r in results.rows] == ["linear", "bitfit", "ssf"]  # the published tables' order


def test_mean_and_std_over_seeds(vtab):
    ours = line(results_of(vtab), "ours", "ssf")
    assert ours.seeds == "2"
    assert ours.values["cifar"].mean == pytest.approx(51.0)
    assert ours.values["cifar"].std == pytest.approx(math.sqrt(2))  # sample std of 50 and 52
    assert ours.values["mean_flat"].std == pytest.approx(math.sqrt(2))  # per-seed flat means 59 and 61
    assert line(results_of(vtab), "ours", "linear").values["cifar"].std is None
    assert "51.00 ± 1.41" in render(results_of(vtab), "markdown")


def markdown_row(text: str, label: str) -> dict[str, str]:
    rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in text.splitlines() if r.startswith("|")]
    header = rows[0]
    return dict(zip(header, next(r for r in rows if r[0] == label), strict=True))


def test_missing_task_is_a_dash_and_its_means_missing(vtab):
    results = results_of(vtab)
    bitfit = line(results, "ours", "bitfit").values
    assert bitfit["dtd"].mean is None
    assert bitfit["natural"].mean is None and bitfit["mean_group"].mean is None and bitfit["mean_flat"].mean is None
    assert bitfit["specialized"].mean == pytest.approx(45.0 + 8.5)
    row = markdown_row(render(results, "markdown"), "bitfit")
    assert row["dtd"] == "–"
    assert row["Natural (7)"] == row["Mean, group (N+S+St)/3"] == row["Mean, flat (19 tasks)"] == "–"
    assert row["Specialized (4)"] == "53.50"
    assert "bitfit: no run for dtd" in render(results, "markdown")


def test_published_rows_and_differences(vtab):
    results = results_of(vtab, published=True)
    pub = line(results, "published", "SSF")
    assert pub.values["cifar"].mean == 69.0 and pub.values["mean_flat"].mean == 73.10  # printed flat mean
    ssf_diff = next(x for x in results.lines if x.kind == "difference" and x.row.method == "ssf")
    assert ssf_diff.values["cifar"].mean == pytest.approx(51.0 - 69.0)
    assert ssf_diff.values["svhn"].mean == pytest.approx(56.0 - 90.2)
    assert ssf_diff.values["mean_flat"].mean == pytest.approx(60.0 - 73.10)
    # SSF prints no group mean: computed from its cells, marked *
    ssf_cells = [69.0, 92.6, 75.1, 99.4, 91.8, 90.2, 52.9, 87.4, 95.9, 87.4, 75.5, 75.9, 62.3, 53.3, 80.6, 77.3, 54.9,
                 29.5, 37.9]
    group = (sum(ssf_cells[:7]) / 7 + sum(ssf_cells[7:11]) / 4 + sum(ssf_cells[11:]) / 8) / 3
    assert pub.values["mean_group"].mean == pytest.approx(group)
    assert "mean_group" in pub.computed and "mean_flat" not in pub.computed
    assert ssf_diff.values["mean_group"].mean == pytest.approx((54.0 + 59.5 + 65.5) / 3 - group)
    linear_diff = next(x for x in results.lines if x.kind == "difference" and x.row.method == "linear")
    assert linear_diff.values["cifar"].mean == pytest.approx(40.0 - 63.4)
    assert linear_diff.values["mean_group"].mean == pytest.approx((43.0 + 48.5 + 54.5) / 3 - 57.6)  # printed
    text = render(results, "markdown")
    assert "-18.00" in text and "↳ SSF [" in text and "augreg_in21k" in text


def test_protocol_flags(vtab):
    results = results_of(vtab, published=True)
    ssf = line(results, "published", "SSF")
    assert "backbone weights: ours orig_in21k, published augreg_in21k" in ssf.flags
    assert any(f.startswith("checkpoint selection: ours final epoch") and "best epoch on test" in f for f in ssf.flags)
    assert not any(f.startswith("normalisation") for f in ssf.flags)  # both 0.5/0.5
    linear = line(results, "published", "Linear probing")
    assert "normalisation: ours 0.5/0.5, published ImageNet mean/std" in linear.flags
    assert "backbone weights: ours augreg_in21k, published orig_in21k" in linear.flags
    text = render(results, "markdown")
    assert any(n.startswith("- Protocol differs, ssf vs [") and "orig_in21k" in n for n in text.splitlines())


def test_csv_and_latex(vtab):
    results = results_of(vtab, published=True)
    rows = list(csv.DictReader(io.StringIO(render(results, "csv"))))
    ours = {r["run_name"]: r for r in rows if r["kind"] == "ours"}
    assert float(ours["ssf"]["natural"]) == pytest.approx(54.0)
    assert float(ours["ssf"]["cifar_std"]) == pytest.approx(math.sqrt(2), abs=1e-4)
    assert float(ours["ssf"]["params_m_without_head"]) == pytest.approx(0.2)
    assert ours["bitfit"]["dtd"] == "" and ours["bitfit"]["mean_flat"] == ""
    pub = next(r for r in rows if r["kind"] == "published" and r["method"] == "SSF")
    assert float(pub["cifar"]) == 69.0 and pub["weights"] == "augreg_in21k"
    assert float(pub["params_m_with_head"]) == 0.24  # the SSF note says params include head
    diff = next(r for r in rows if r["kind"] == "difference" and r["run_name"] == "ssf")
    assert float(diff["cifar"]) == pytest.approx(-18.0)
    latex = render(results, "latex")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"oxford\_iiit\_pet", r"$\pm$",
                  "Mean, flat (19 tasks)", "Train img/s"):
        assert token in latex


def test_fgvc_flat_mean(tmp_path):
    for i, name in enumerate(benchmark_spec("fgvc").tasks):
        write_run(tmp_path, "ssf", name, 42, 80.0 + i, benchmark="fgvc")
    results = results_of(tmp_path, published=True)
    assert line(results, "ours", "ssf").values["mean_flat"].mean == pytest.approx(82.0)
    assert line(results, "published", "SSF").values["mean_flat"].mean == 90.72
    assert not line(results, "published", "SSF").flags[0].startswith("backbone")  # both augreg_in21k


def test_method_map_names_published_rows():
    for bench in ("vtab", "fgvc"):
        published = load_published(benchmark_spec(bench))
        table = read_method_map()
        assert set(published) == set(table[table["benchmark"] == bench]["method"])
        for rows in published.values():
            for pub in rows:  # what the source counted and how it selected are columns, never read from prose
                assert pub.params_head in ("with", "without", "")
                assert pub.normalisation in ("imagenet", "0.5/0.5", "none", "")


def test_plot_writes_png(vtab, tmp_path):
    from scripts.plot import main

    out = tmp_path / "fig" / "plot.png"
    main([str(vtab), "--out", str(out), "--published"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_empty_folder_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("scripts/make_table.py", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: no metrics.json under") and len(result.stderr.strip().splitlines()) == 1
