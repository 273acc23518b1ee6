"""Results tables: every run's `metrics.json` under a folder as a paper's table, beside the published numbers.

    python scripts/make_table.py runs/vtab [--published] [--format markdown|csv|latex] [--benchmark vtab|fgvc|fewshot]

One row per run_name (and backbone, and protocol, when the runs hold several); the benchmark's task columns in
the papers' order; VTAB-1k adds the three group means, the group mean ((N+S+St)/3) and the flat 19-task mean
(`shared/reference` caveat 1: papers print one or the other); FGVC the flat mean of the 5 sets. A cell with
several seeds shows mean ± sample std. A missing run is `–` (an empty cell in CSV) and so is every mean that
needs it. `--published` adds each method's published row(s) from `data/published/` and a difference row
(ours − published), and flags protocol differences (backbone weights, checkpoint selection, normalisation,
per-task tuning) read from the CSV's `backbone_weights` and `note` columns, `methods.csv` and the runs'
provenance. A second table gives each row's throughput, peak memory, GMACs per image and stored bytes.

`data/published/methods.csv` maps vpeft method names to published rows, per benchmark; its `normalisation`
column says what the published row's code normalised inputs with (`imagenet`, `0.5/0.5`, `none`; empty where
not recorded).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from data.fewshot import FEWSHOT_SETS
from data.fgvc import FGVC_SETS
from data.vtab import ALIASES, GROUPS, VTAB_TASKS
from runners.config import PROJECT_ROOT
from runners.errors import UserError, guard

PUBLISHED_DIR = PROJECT_ROOT / "data" / "published"
PUBLISHED_FILES = {"vtab": "vtab1k.csv", "fgvc": "fgvc.csv"}
MISSING = "–"
FORMATS = ("markdown", "csv", "latex")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALISATION_LABELS = {"imagenet": "ImageNet mean/std", "0.5/0.5": "0.5/0.5", "none": "none ([0, 1] inputs)"}


# ---------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One `metrics.json`, reduced to what the tables use."""

    path: Path
    benchmark: str
    column: str  # the task column: the task name (few-shot: "<set> <k>-shot")
    replicate: str  # what distinguishes repeats of one cell: the seed (few-shot: and the list seed)
    method: str
    run_name: str
    backbone: str
    protocol: str
    top1: float
    params_without_head: int
    params_with_head: int
    stored_bytes: int
    gmacs_per_image: float
    peak_memory_mib: float
    peak_memory_kind: str
    train_images_per_s: float
    weights: str  # the weights tag compared with the published `backbone_weights` (e.g. orig_in21k)
    weights_label: str  # how the run's weights are shown
    normalisation: str  # imagenet | 0.5/0.5 | none | "mean … std …"
    selection: str
    data_format: str


def weights_tag(weights: str, timm_model: str = "") -> tuple[str, str]:
    """(tag, label) of a run's `provenance.weights`: `timm:<model>.<tag>` → tag; a local file → its model's tag."""
    if weights.startswith("timm:"):
        name = weights.removeprefix("timm:")
        tag = name.split(".", 1)[1] if "." in name else name
        return tag, tag
    if weights.startswith("file:"):
        file = Path(weights.removeprefix("file:")).name
        tag = timm_model.split(".", 1)[1] if "." in timm_model else f"file {file}"
        return tag, f"{tag} (from file {file})" if "." in timm_model else tag
    return weights, weights


def normalisation_kind(normalisation: Mapping) -> str:
    """`imagenet`, `0.5/0.5` or `none` when the mean/std are one of those, else the numbers."""
    mean, std = tuple(normalisation.get("mean", ())), tuple(normalisation.get("std", ()))

    def near(a: Sequence[float], b: Sequence[float]) -> bool:
        return len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b, strict=True))

    for kind, (m, s) in {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "0.5/0.5": ((0.5,) * 3, (0.5,) * 3),
                         "none": ((0.0,) * 3, (1.0,) * 3)}.items():
        if near(mean, m) and near(std, s):
            return kind
    return f"mean {list(mean)} std {list(std)}"


def read_run(path: Path) -> Run:
    """Parse one `metrics.json`; a file that is not one is a `UserError` naming it."""
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); delete it or re-run that run") from e
    try:
        prov, params, dataset = m["provenance"], m["params"], m.get("config", {}).get("dataset", {})
        benchmark, task, seed = m["benchmark"], m["task"], m["seed"]
        column, replicate = task, f"seed {seed}"
        if benchmark == "vtab":
            column = ALIASES.get(task, task)
        elif benchmark == "fewshot":
            column = f"{task} {dataset['shots']}-shot"
            replicate = f"seed {seed}, list {dataset.get('fewshot_seed', 0)}"
        tag, label = weights_tag(prov["weights"], prov.get("timm_model", ""))
        return Run(
            path=path, benchmark=benchmark, column=column, replicate=replicate,
            method=m.get("method_label", m["method"]),
            run_name=m.get("run_name") or m["method"], backbone=m["backbone"], protocol=m.get("protocol", "final"),
            top1=float(m["top1"]), params_without_head=int(params["trainable_without_head"]),
            params_with_head=int(params["trainable_with_head"]), stored_bytes=int(m["stored_bytes"]),
            gmacs_per_image=float(m["gmacs_per_image"]), peak_memory_mib=float(m["peak_memory_mib"]),
            peak_memory_kind=m["peak_memory_kind"], train_images_per_s=float(m["train_images_per_s"]),
            weights=tag, weights_label=label, normalisation=normalisation_kind(prov.get("normalisation", {})),
            selection=prov.get("selection", "final epoch"), data_format=prov.get("data_format", "not recorded"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} lacks field {e} or has a wrong type there; is it a vpeft metrics.json?") from e


def load_runs(folder: str | Path) -> list[Run]:
    """Every `metrics.json` under `folder`, recursively."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass the folder that holds the runs (train.py's paths.runs)")
    paths = sorted(folder.rglob("metrics.json"))
    if not paths:
        raise UserError(f"no metrics.json under {folder}; pass a folder that finished runs were written to")
    return [read_run(p) for p in paths]


# ---------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class MeanColumn:
    """A mean over task columns, or (`of_means`) over other mean columns."""

    key: str
    label: str
    parts: tuple[str, ...]
    of_means: bool = False


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    tasks: tuple[str, ...]
    means: tuple[MeanColumn, ...]
    headline: str  # the mean the plot uses

    def mean_label(self, key: str) -> str:
        return next(m.label for m in self.means if m.key == key)


def benchmark_spec(name: str, runs: Sequence[Run] = ()) -> Benchmark:
    """Columns and means of `name`; few-shot columns and other benchmarks' tasks come from the runs."""
    if name == "vtab":
        groups = tuple(MeanColumn(g.lower(), f"{g} ({sum(t.group == g for t in VTAB_TASKS)})",
                                  tuple(t.name for t in VTAB_TASKS if t.group == g)) for g in GROUPS)
        return Benchmark("vtab", "VTAB-1k", tuple(t.name for t in VTAB_TASKS), (
            *groups,
            MeanColumn("mean_group", "Mean, group (N+S+St)/3", tuple(g.key for g in groups), of_means=True),
            MeanColumn("mean_flat", "Mean, flat (19 tasks)", tuple(t.name for t in VTAB_TASKS)),
        ), headline="mean_flat")
    if name == "fgvc":
        tasks = tuple(s.name for s in FGVC_SETS)
        return Benchmark("fgvc", "FGVC", tasks, (MeanColumn("mean_flat", "Mean, flat (5 sets)", tasks),),
                         headline="mean_flat")
    if name == "fewshot":
        shots = sorted({int(r.column.rsplit(" ", 1)[1].removesuffix("-shot")) for r in runs}) or [16]
        tasks = tuple(f"{s} {k}-shot" for k in shots for s in FEWSHOT_SETS)
        means = tuple(MeanColumn(f"mean_{k}shot", f"Mean {k}-shot ({len(FEWSHOT_SETS)} sets)",
                                 tuple(f"{s} {k}-shot" for s in FEWSHOT_SETS)) for k in shots)
        return Benchmark("fewshot", "Few-shot FGVC", tasks, means, headline=means[-1].key)
    tasks = tuple(sorted({r.column for r in runs}))
    label = f"Mean, flat ({len(tasks)} task{'s' * (len(tasks) > 1)})"
    return Benchmark(name, name, tasks, (MeanColumn("mean_flat", label, tasks),), headline="mean_flat")


def select_benchmark(runs: Sequence[Run], name: str | None) -> tuple[Benchmark, list[Run]]:
    """The benchmark to tabulate (`name`, or the only one the runs hold) and its runs."""
    found = sorted({r.benchmark for r in runs})
    if name is None:
        if len(found) > 1:
            raise UserError(f"the runs hold several benchmarks ({', '.join(found)}); choose one with --benchmark")
        name = found[0]
    chosen = [r for r in runs if r.benchmark == name]
    if not chosen:
        raise UserError(f"no {name} runs here (the runs hold {', '.join(found)}); pass --benchmark with one of those")
    return benchmark_spec(name, chosen), chosen


def compute_means(values: Mapping[str, float | None], bench: Benchmark) -> dict[str, float | None]:
    """Each mean of `bench` over `values` (task → Top-1); None when any part is missing."""
    out: dict[str, float | None] = {}
    for m in bench.means:
        parts = [(out if m.of_means else values).get(p) for p in m.parts]
        out[m.key] = None if any(v is None for v in parts) else sum(parts) / len(parts)
    return out


# ---------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Stat:
    """A mean over repeats; `std` is the sample std (n − 1), None below two repeats."""

    mean: float | None
    std: float | None = None
    n: int = 0


def stat(values: Sequence[float]) -> Stat:
    if not values:
        return Stat(None)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass
class Row:
    """Our runs that share run_name, backbone and protocol."""

    run_name: str
    backbone: str
    protocol: str
    runs: list[Run] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.runs[0].method

    def values(self, column: str) -> dict[str, float]:
        """replicate → Top-1 of one task column."""
        return {r.replicate: r.top1 for r in self.runs if r.column == column}

    def cells(self, bench: Benchmark) -> dict[str, Stat]:
        """Task column → mean ± std over repeats."""
        return {t: stat(list(self.values(t).values())) for t in bench.tasks}

    def means(self, bench: Benchmark) -> dict[str, Stat]:
        """Mean column → its value from the per-task means; ± over repeats when every task has the same ones."""
        task_means = {t: s.mean for t, s in self.cells(bench).items()}
        means = compute_means(task_means, bench)
        replicate_sets = {frozenset(self.values(t)) for t in bench.tasks if self.values(t)}
        per_replicate: list[dict[str, float | None]] = []
        if len(replicate_sets) == 1 and len(reps := next(iter(replicate_sets))) > 1:
            per_replicate = [compute_means({t: self.values(t).get(r) for t in bench.tasks}, bench)
                             for r in sorted(reps)]
        out = {}
        for key, value in means.items():
            spread = [m[key] for m in per_replicate if m[key] is not None]
            out[key] = Stat(value, statistics.stdev(spread) if value is not None and len(spread) > 1 else None,
                            len(spread) or (1 if value is not None else 0))
        return out

    def seed_counts(self, bench: Benchmark) -> tuple[int, int]:
        counts = [n for t in bench.tasks if (n := len(self.values(t)))]
        return (min(counts), max(counts)) if counts else (0, 0)

    def params_m(self) -> tuple[float, float]:
        """Mean trainable parameters (M) without and with the head over the row's runs."""
        return (statistics.fmean(r.params_without_head for r in self.runs) / 1e6,
                statistics.fmean(r.params_with_head for r in self.runs) / 1e6)

    def tags(self, attribute: str) -> str:
        return ", ".join(sorted({getattr(r, attribute) for r in self.runs}))


def method_order() -> list[str]:
    """vpeft methods in the order `methods.csv` lists them (the published tables' order)."""
    seen: dict[str, None] = {}
    for entry in read_method_map():
        seen.setdefault(entry["method"], None)
    return list(seen)


def aggregate(runs: Sequence[Run], bench: Benchmark) -> tuple[list[Row], list[Run]]:
    """Rows of `bench` (known methods in the published order, then by name) and the runs of columns it lacks."""
    rows: dict[tuple[str, str, str], Row] = {}
    seen: dict[tuple, Path] = {}
    ignored = []
    for run in runs:
        if run.column not in bench.tasks:
            ignored.append(run)
            continue
        key = (run.run_name, run.backbone, run.protocol)
        repeat = (*key, run.column, run.replicate)
        if repeat in seen:
            raise UserError(f"two runs of {run.run_name} on {run.column} ({run.replicate}): {seen[repeat]} and "
                            f"{run.path}; give one another run_name or move it out of the folder")
        seen[repeat] = run.path
        rows.setdefault(key, Row(*key)).runs.append(run)
    order = {m: i for i, m in enumerate(method_order())}
    ranked = sorted(rows.values(), key=lambda r: (order.get(r.method, len(order)), r.run_name, r.backbone,
                                                 r.protocol))
    return ranked, ignored


# ---------------------------------------------------------------- published


@dataclass(frozen=True)
class Published:
    """One row of a published CSV."""

    method: str
    source: str
    backbone_weights: str
    cells: dict[str, float]
    printed: dict[str, float]  # means as the source printed them, keyed like the benchmark's mean columns
    params_m: float | None
    head_counted: str | None  # "with" | "without" | None (the note does not say)
    note: str
    normalisation: str  # from methods.csv; "" when not recorded

    @property
    def weights_tag(self) -> str:
        return self.backbone_weights.split(" ", 1)[0]

    def means(self, bench: Benchmark) -> dict[str, tuple[float | None, bool]]:
        """Mean column → (value, printed): as printed where the source printed it, else computed from the cells."""
        computed = compute_means({t: self.cells.get(t) for t in bench.tasks}, bench)
        return {k: (self.printed[k], True) if k in self.printed else (computed[k], False) for k in computed}


def read_method_map() -> list[dict[str, str]]:
    with open(PUBLISHED_DIR / "methods.csv", newline="") as f:
        return list(csv.DictReader(f))


def head_counting(note: str) -> str | None:
    """Whether a published `params_m` counts the head, as its note says ("with", "without"), else None."""
    text = note.lower()
    if any(s in text for s in ("exclude head", "head excluded", "without head", "head only")):
        return "without"
    if any(s in text for s in ("include head", "mean head", "fgvc head")):
        return "with"
    return None


def _float(text: str) -> float | None:
    return float(text) if text.strip() else None


def load_published(bench: Benchmark) -> dict[str, list[Published]]:
    """vpeft method → its published rows for `bench` (empty for a benchmark without a per-method table)."""
    file = PUBLISHED_FILES.get(bench.name)
    if file is None:
        return {}
    with open(PUBLISHED_DIR / file, newline="") as f:
        table = {row["method"]: row for row in csv.DictReader(f)}
    out: dict[str, list[Published]] = {}
    for entry in read_method_map():
        if entry["benchmark"] != bench.name:
            continue
        row = table[entry["published_method"]]
        printed = {g.lower(): v for g in GROUPS if (v := _float(row.get(g.lower(), ""))) is not None}
        headline = _float(row["mean_published"])
        if headline is not None:
            printed["mean_group" if row["mean_convention"] == "group" else "mean_flat"] = headline
        out.setdefault(entry["method"], []).append(Published(
            method=row["method"], source=row["source"], backbone_weights=row["backbone_weights"],
            cells={t: v for t in bench.tasks if (v := _float(row.get(t, ""))) is not None}, printed=printed,
            params_m=_float(row["params_m"]), head_counted=head_counting(row["note"]), note=row["note"],
            normalisation=entry["normalisation"]))
    return out


def note_clauses(note: str) -> list[str]:
    return [c.strip() for c in note.split(";") if c.strip()]


def protocol_flags(row: Row, pub: Published) -> list[str]:
    """Factual differences between our runs' protocol and the published row's, from the CSV and provenance."""
    flags = []
    ours = {r.weights for r in row.runs}
    if ours != {pub.weights_tag}:
        flags.append(f"backbone weights: ours {', '.join(sorted(ours))}, published {pub.backbone_weights}")
    for clause in note_clauses(pub.note):
        text = clause.lower()
        if "best" in text and "test" in text:
            flags.append(f"checkpoint selection: ours {row.tags('selection')}, published \"{clause}\"")
        elif "per task" in text or "per-task" in text or "protocol" in text or "normalised" in text:
            flags.append(f"published note: \"{clause}\"")
    ours_norm = {r.normalisation for r in row.runs}
    if pub.normalisation and ours_norm != {pub.normalisation}:
        shown = ", ".join(NORMALISATION_LABELS.get(n, n) for n in sorted(ours_norm))
        flags.append(f"normalisation: ours {shown}, published {NORMALISATION_LABELS[pub.normalisation]}")
    if any(r.protocol != "final" for r in row.runs):
        flags.append(f"evaluation: ours protocol {row.protocol} (validation split), published test")
    return flags


# ---------------------------------------------------------------- the table


@dataclass
class Line:
    """One table line: ours, a published row or a difference row, as numbers."""

    kind: str  # ours | published | difference
    label: str
    values: dict[str, Stat]  # task and mean columns
    params: tuple[float | None, float | None, float | None] = (None, None, None)  # w/o head, with head, unstated
    seeds: str = ""
    computed: frozenset[str] = frozenset()  # published means computed here from the cells
    row: Row | None = None
    published: Published | None = None
    ref: int = 0
    flags: list[str] = field(default_factory=list)


@dataclass
class Results:
    bench: Benchmark
    lines: list[Line]
    notes: list[str]
    rows: list[Row]


def row_label(row: Row, rows: Sequence[Row]) -> str:
    label = row.run_name
    if len({r.backbone for r in rows}) > 1:
        label += f" · {row.backbone}"
    if len({r.protocol for r in rows}) > 1:
        label += f" · {row.protocol}"
    return label


def build_results(runs: Sequence[Run], bench: Benchmark, published: bool = False) -> Results:
    """The table of `runs` on `bench`, with published and difference lines when `published`."""
    rows, ignored = aggregate(runs, bench)
    catalogue = load_published(bench) if published else {}
    lines: list[Line] = []
    notes = [f"{bench.title} Top-1 (%). ± is the sample std (n − 1) over seeds; {MISSING} is a missing run, and "
             "a mean is shown only when every task it averages has a run."]
    if bench.name == "vtab":
        notes.append("Mean, group = (Natural + Specialized + Structured)/3 (VPT, NOAH, SPT, E2VPT, DyT print this); "
                     "Mean, flat = mean of the 19 tasks (SSF, HST, V-PETL print this).")
    notes.append("Params (M): trainable parameters without the head, and with it (mean over the row's tasks).")
    refs: dict[str, int] = {}
    for row in rows:
        cells = row.cells(bench)
        means = row.means(bench)
        low, high = row.seed_counts(bench)
        ours = Line("ours", row_label(row, rows), {**cells, **means}, (*row.params_m(), None),
                    str(high) if low == high else f"{low}–{high}", row=row)
        lines.append(ours)
        missing = [t for t in bench.tasks if cells[t].mean is None]
        if missing:
            lost = [bench.mean_label(k) for k, s in means.items() if s.mean is None]
            notes.append(f"{ours.label}: no run for {', '.join(missing)}; so {MISSING} for: {'; '.join(lost)}.")
        notes.append(f"{ours.label}: method {row.method}, backbone {row.backbone}, "
                     f"weights {row.tags('weights_label')}, normalisation {row.tags('normalisation')}, "
                     f"selection {row.tags('selection')}, "
                     f"data {row.tags('data_format')}, protocol {row.protocol}.")
        for pub in catalogue.get(row.method, []):
            ref = refs.setdefault(pub.method, len(refs) + 1)
            pub_means = pub.means(bench)
            values = {t: Stat(pub.cells.get(t)) for t in bench.tasks}
            values.update({k: Stat(v) for k, (v, _) in pub_means.items()})
            params = (pub.params_m if pub.head_counted == "without" else None,
                      pub.params_m if pub.head_counted == "with" else None,
                      pub.params_m if pub.head_counted is None else None)
            lines.append(Line("published", f"↳ {pub.method} [{ref}]", values, params, row=row, ref=ref, published=pub,
                              computed=frozenset(k for k, (v, printed) in pub_means.items()
                                                 if v is not None and not printed),
                              flags=protocol_flags(row, pub)))
            diff = {k: Stat(ours.values[k].mean - v.mean)
                    if ours.values[k].mean is not None and v.mean is not None else Stat(None)
                    for k, v in values.items()}
            lines.append(Line("difference", f"↳ ours − [{ref}]", diff, ref=ref, row=row, published=pub))
    if published:
        if not catalogue:
            notes.append(f"No published per-method Top-1 for {bench.title} in data/published/"
                         + (" (fewshot.csv holds only PVP's average gains, not accuracies)." if bench.name == "fewshot"
                            else "."))
        else:
            notes.append("Published means are as the source printed them; * marks means computed here from the "
                         "published cells. Published params are as reported: in the column the note names "
                         "(with or without head), marked ? where the source does not say.")
        for pub_line in [line for line in lines if line.kind == "published"]:
            pub = pub_line.published
            if not any(n.startswith(f"[{pub_line.ref}] ") for n in notes):
                notes.append(f"[{pub_line.ref}] {pub.method}: {pub.source}; weights {pub.backbone_weights}; "
                             f"note: {pub.note or 'none'}.")
        for pub_line in [line for line in lines if line.kind == "published" and line.flags]:
            notes.append(f"Protocol differs, {row_label(pub_line.row, rows)} vs [{pub_line.ref}]: "
                         f"{'; '.join(pub_line.flags)}.")
    if ignored:
        notes.append(f"Left out {len(ignored)} run(s) of tasks outside {bench.title}: "
                     f"{', '.join(sorted({r.column for r in ignored}))}.")
    return Results(bench, lines, notes, rows)


# ---------------------------------------------------------------- rendering


def format_stat(s: Stat, decimals: int, sign: bool = False) -> str:
    if s.mean is None:
        return MISSING
    value = s.mean if round(s.mean, decimals) != 0 else 0.0  # no "-0.00"
    text = f"{value:+.{decimals}f}" if sign and value != 0 else f"{value:.{decimals}f}"
    return text + (f" ± {s.std:.{decimals}f}" if s.std is not None else "")


def format_params(value: float | None) -> str:
    if value is None:
        return MISSING
    return "0" if value == 0 else f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def format_bytes(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main_header(bench: Benchmark) -> list[str]:
    return ["Method", "Seeds", *bench.tasks, *(m.label for m in bench.means),
            "Params (M) w/o head", "Params (M) w/ head, task mean"]


def main_cells(results: Results, decimals: int) -> list[list[str]]:
    """The main table as text cells, one list per line."""
    bench, out = results.bench, []
    for line in results.lines:
        varying = line.kind == "ours" and "–" in line.seeds
        cells = []
        for key in (*bench.tasks, *(m.key for m in bench.means)):
            s = line.values[key]
            text = format_stat(s, decimals, sign=line.kind == "difference")
            if varying and s.mean is not None and key in bench.tasks:
                text += f" (n={s.n})"
            cells.append(text + ("*" if key in line.computed else ""))
        without, with_head, unstated = line.params
        if line.kind == "difference":
            params = ["", ""]
        elif unstated is not None:
            params = [f"{format_params(unstated)}?", MISSING]
        else:
            params = [format_params(without), format_params(with_head)]
        out.append([line.label, line.seeds, *cells, *params])
    return out


EFFICIENCY_HEADER = ["Method", "Runs", "Train img/s", "Peak memory (MiB)", "GMACs/image", "Stored (mean per run)"]


def efficiency_cells(results: Results) -> list[list[str]]:
    """Per row: mean training throughput, peak memory (with its kind), GMACs per image, stored bytes."""
    out = []
    for row in results.rows:
        runs = row.runs
        out.append([
            row_label(row, results.rows), str(len(runs)),
            f"{statistics.fmean(r.train_images_per_s for r in runs):,.1f}",
            f"{statistics.fmean(r.peak_memory_mib for r in runs):,.0f} ({row.tags('peak_memory_kind')})",
            f"{statistics.fmean(r.gmacs_per_image for r in runs):.3g}",
            format_bytes(statistics.fmean(r.stored_bytes for r in runs)),
        ])
    return out


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(results: Results, decimals: int = 2) -> str:
    return "\n\n".join([
        markdown_table(main_header(results.bench), main_cells(results, decimals)),
        "\n".join(f"- {n}" for n in results.notes),
        "Efficiency (mean over each row's runs):",
        markdown_table(EFFICIENCY_HEADER, efficiency_cells(results)),
    ]) + "\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "–": "--", "−": "$-$", "↳": r"$\hookrightarrow$", "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(c, c) for c in text)


def latex_table(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str, notes: Sequence[str] = (),
                rules_before: Sequence[int] = ()) -> str:
    body = [r"\begin{table*}[t]", r"\centering", rf"\caption{{{latex_escape(caption)}}}",
            r"\resizebox{\textwidth}{!}{%", rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", r"\toprule",
            " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for i, row in enumerate(rows):
        if i in rules_before:
            body.append(r"\midrule")
        body.append(" & ".join(latex_escape(c) for c in row) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}}"]
    if notes:
        body += [r"\par\smallskip\footnotesize", *(latex_escape(n) + r"\par" for n in notes)]
    body.append(r"\end{table*}")
    return "\n".join(body)


def to_latex(results: Results, decimals: int = 2) -> str:
    """Two booktabs tables (results, efficiency); needs \\usepackage{booktabs,graphicx}."""
    groups = [i for i, line in enumerate(results.lines) if line.kind == "ours" and i > 0]
    return "\n\n".join([
        latex_table(main_header(results.bench), main_cells(results, decimals), f"{results.bench.title} Top-1 (%)",
                    results.notes, groups if any(line.kind != "ours" for line in results.lines) else ()),
        latex_table(EFFICIENCY_HEADER, efficiency_cells(results), "Efficiency (mean over each row's runs)"),
    ]) + "\n"


def to_csv(results: Results) -> str:
    """One CSV line per table line, numbers unformatted; a missing value is an empty cell (as in published/)."""
    bench = results.bench
    keys = [*bench.tasks, *(m.key for m in bench.means)]
    header = ["label", "kind", "method", "run_name", "backbone", "protocol", "weights", "source", "seeds", *keys,
              "params_m_without_head", "params_m_with_head", "params_m_head_unstated", *(f"{k}_std" for k in keys),
              "train_images_per_s", "peak_memory_mib", "peak_memory_kind", "gmacs_per_image", "stored_bytes", "notes"]

    def num(value: float | None, digits: int = 4) -> str:
        return "" if value is None else str(round(value, digits))

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for line in results.lines:
        row, pub = line.row, line.published
        ident = {"ours": [row.method, row.run_name, row.backbone, row.protocol, row.tags("weights"), "vpeft"],
                 "published": [pub.method, "", "", "", pub.backbone_weights, pub.source] if pub else [],
                 "difference": [row.method, row.run_name, row.backbone, row.protocol, "", f"ours - [{line.ref}]"]}
        effort = ["", "", "", "", ""]
        if line.kind == "ours":
            runs = row.runs
            effort = [num(statistics.fmean(r.train_images_per_s for r in runs)),
                      num(statistics.fmean(r.peak_memory_mib for r in runs)), row.tags("peak_memory_kind"),
                      num(statistics.fmean(r.gmacs_per_image for r in runs), 6),
                      num(statistics.fmean(r.stored_bytes for r in runs), 1)]
        writer.writerow([line.label, line.kind, *ident[line.kind], line.seeds,
                         *(num(line.values[k].mean) for k in keys), *(num(p, 6) for p in line.params),
                         *(num(line.values[k].std) for k in keys), *effort, "; ".join(line.flags)])
    return buffer.getvalue()


def render(results: Results, fmt: str, decimals: int = 2) -> str:
    if fmt == "csv":
        return to_csv(results)
    return to_latex(results, decimals) if fmt == "latex" else to_markdown(results, decimals)


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
