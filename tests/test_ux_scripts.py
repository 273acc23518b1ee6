"""plot.py and make_table.py on a tiny run's folder, run from an empty folder: outputs where told, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.errors import UserError
from scripts.plot import main as plot_main
from tests.conftest import run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The runs folder of one tiny training run, as train.py writes it."""
    runs = tmp_path_factory.mktemp("made") / "runs"
    out = run_cli("train.py", "dataset=digits", "backbone=vit_test", "logger=none", "epochs=1",
                  "scheduler.warmup_epochs=0", f"paths.runs={runs}", cwd=runs.parent)
    assert out.returncode == 0, out.stderr
    return runs


@pytest.fixture
def empty_cwd(tmp_path) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


def test_plot_goes_beside_the_runs_by_default(runs, empty_cwd):
    out = run_cli("scripts/plot.py", str(runs), cwd=empty_cwd)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"wrote {runs / 'plot.png'}"
    assert (runs / "plot.png").read_bytes()[:8] == PNG
    assert list(empty_cwd.iterdir()) == []


def test_plot_goes_to_out(runs, empty_cwd, tmp_path):
    target = tmp_path / "figures" / "peft.png"
    out = run_cli("scripts/plot.py", str(runs), "--out", str(target), cwd=empty_cwd)
    assert out.returncode == 0, out.stderr
    assert target.read_bytes()[:8] == PNG
    assert list(empty_cwd.iterdir()) == []


@pytest.mark.parametrize(("given", "written"), [("figures", "figures/plot.png"), ("new/", "new/plot.png"),
                                                 ("peft", "peft.png"), ("peft.pdf", "peft.pdf")])
def test_plot_out_is_the_file_it_says(runs, tmp_path, capsys, given, written):
    (tmp_path / "figures").mkdir()
    plot_main([str(runs), "--out", str(tmp_path / given) + ("/" if given.endswith("/") else "")])
    assert capsys.readouterr().out.splitlines()[0] == f"wrote {tmp_path / written}"
    assert (tmp_path / written).stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"figures", Path(written).parts[0]})


def test_plot_out_of_an_unknown_format_is_a_user_error(runs, tmp_path):
    with pytest.raises(UserError, match=r"--out .*peft\.fig.*\.png"):
        plot_main([str(runs), "--out", str(tmp_path / "peft.fig")])
    assert list(tmp_path.iterdir()) == []


def test_make_table_prints_and_writes_nothing(runs, empty_cwd):
    before = sorted(runs.rglob("*"))
    out = run_cli("scripts/make_table.py", str(runs), cwd=empty_cwd)
    assert out.returncode == 0, out.stderr
    assert "ssf" in out.stdout
    assert list(empty_cwd.iterdir()) == [] and sorted(runs.rglob("*")) == before
