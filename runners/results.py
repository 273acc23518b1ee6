"""Results as a library: every run's `metrics.json` in a pandas DataFrame, the papers' tables beside the published.

    runs = load_runs("runs/vtab")                      # one row per metrics.json, structured provenance columns
    bench, runs = select_benchmark(runs, None)         # the benchmark's task order and groups come from data/
    results = build_results(runs, bench, published=True)
    print(render(results, "markdown"))                 # or "csv", "latex"

One table row per run_name (and backbone, and protocol, when the runs hold several); the tasks in the papers'
order; VTAB-1k adds the three group means, the group mean ((N+S+St)/3) and the flat 19-task mean (papers print
one or the other); FGVC the flat mean of the 5 sets. A cell with several seeds is mean ± sample std. A missing
run is `–` (an empty cell in CSV), and so is every mean that needs it. With `published`, each method's
published rows (`data/published/`, one per paper row, with explicit columns for what the paper counted and how
it selected) and a difference row, plus the protocol differences, each from a column: backbone weights,
checkpoint selection, normalisation, per-task tuning. A second table gives throughput, peak memory, GMACs per
image and stored bytes.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data.fewshot import FEWSHOT_SETS
from data.fgvc import FGVC_SETS
from data.task import NORMALISATIONS
from data.vtab import ALIASES, GROUPS, VTAB_TASKS
from runners.config import PROJECT_ROOT
from runners.errors import UserError

PUBLISHED_DIR = PROJECT_ROOT / "data" / "published"
PUBLISHED_FILES = {"vtab": "vtab1k.csv", "fgvc": "fgvc.csv"}
MISSING = "–"
FORMATS = ("markdown", "csv", "latex")
NORMALISATION_LABELS = {"imagenet": "ImageNet mean/std", "inception": "0.5/0.5", "none": "none ([0, 1] inputs)"}
PUBLISHED_NORMALISATION = {"imagenet": "imagenet", "0.5/0.5": "inception", "none": "none"}  # the CSVs' words


# ---------------------------------------------------------------- runs


def _weights(prov: Mapping) -> tuple[str, str]:
    """(tag, label) of a run's weights: the timm pretrained tag (orig_in21k), from a local file or the hub."""
    model = prov.get("timm_model", "")
    tag = model.split(".", 1)[1] if "." in model else model
    source = prov.get("weights", "")
    if source.startswith("file:"):
        return tag, f"{tag} (from file {Path(source.removeprefix('file:')).name})"
    if source == "random-init":
        return "random-init", "random-init"
    return tag, tag


def _normalisation(prov: Mapping) -> str:
    """The run's normalisation by name; runs written before names were recorded are matched by their numbers."""
    norm = prov.get("normalisation", {})
    if norm.get("name"):
        return norm["name"]
    for n in NORMALISATIONS.values():
        if all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip((*n.mean, *n.std), (*norm.get("mean", ()),
                                                                                 *norm.get("std", ())), strict=False)):
            return n.name
    return f"mean {norm.get('mean')} std {norm.get('std')}"


def read_run(path: Path) -> dict:
    """One `metrics.json` as a table row; a file that is not one is a `UserError` naming it."""
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
        elif dataset.get("shots") is not None:  # few-shot tasks: one column per number of shots
            column = f"{task} {dataset['shots']}-shot"
            replicate = f"seed {seed}, list {dataset.get('fewshot_seed', 0)}"
        weights, weights_label = _weights(prov)
        return {
            "path": path, "benchmark": benchmark, "column": column, "replicate": replicate,
            "method": m.get("method_label", m["method"]), "run_name": m.get("run_name") or m["method"],
            "hparams": m.get("hparams") or "",
            "backbone": m["backbone"], "protocol": m.get("protocol", "final"), "top1": float(m["top1"]),
            "params_without_head": int(params["trainable_without_head"]),
            "params_with_head": int(params["trainable_with_head"]), "stored_bytes": int(m["stored_bytes"]),
            "gmacs_per_image": float(m["gmacs_per_image"]), "peak_memory_mib": float(m["peak_memory_mib"]),
            "peak_memory_kind": m["peak_memory_kind"], "train_images_per_s": float(m["train_images_per_s"]),
            "weights": weights, "weights_label": weights_label, "normalisation": _normalisation(prov),
            "selection": prov.get("selection", "final epoch"), "data_format": prov.get("data_format", "not recorded"),
            "technique_notes": "; ".join(f"{t['label']}: {t['note']}" for t in prov.get("techniques", {}).values()
                                         if t.get("note")),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} lacks field {e} or has a wrong type there; is it a vpeft metrics.json?") from e


def load_runs(folder: str | Path) -> pd.DataFrame:
    """Every `metrics.json` under `folder`, recursively, one row each."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass the folder that holds the runs (train.py's paths.runs)")
    paths = sorted(folder.rglob("metrics.json"))
    if not paths:
        raise UserError(f"no metrics.json under {folder}; pass a folder that finished runs were written to")
    return pd.DataFrame([read_run(p) for p in paths])


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


def benchmark_spec(name: str, runs: pd.DataFrame | None = None) -> Benchmark:
    """Columns and means of `name`; few-shot columns and other benchmarks' tasks come from the runs."""
    columns = sorted(set(runs["column"])) if runs is not None and len(runs) else []
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
        shots = sorted({int(c.rsplit(" ", 1)[1].removesuffix("-shot")) for c in columns}) or [16]
        tasks = tuple(f"{s} {k}-shot" for k in shots for s in FEWSHOT_SETS)
        means = tuple(MeanColumn(f"mean_{k}shot", f"Mean {k}-shot ({len(FEWSHOT_SETS)} sets)",
                                 tuple(f"{s} {k}-shot" for s in FEWSHOT_SETS)) for k in shots)
        return Benchmark("fewshot", "Few-shot FGVC", tasks, means, headline=means[-1].key)
    label = f"Mean, flat ({len(columns)} task{'s' * (len(columns) > 1)})"
    return Benchmark(name, name, tuple(columns), (MeanColumn("mean_flat", label, tuple(columns)),),
                     headline="mean_flat")


def select_benchmark(runs: pd.DataFrame, name: str | None) -> tuple[Benchmark, pd.DataFrame]:
    """The benchmark to tabulate (`name`, or the only one the runs hold) and its runs."""
    found = sorted(set(runs["benchmark"]))
    if name is None:
        if len(found) > 1:
            raise UserError(f"the runs hold several benchmarks ({', '.join(found)}); choose one with --benchmark")
        name = found[0]
    chosen = runs[runs["benchmark"] == name]
    if chosen.empty:
        raise UserError(f"no {name} runs here (the runs hold {', '.join(found)}); pass --benchmark with one of those")
    return benchmark_spec(name, chosen), chosen


def with_means(values: pd.DataFrame, bench: Benchmark) -> pd.DataFrame:
    """`values` (one row per line or replicate, task columns) with each mean column of `bench` added; a mean is
    NaN when any part is."""
    out = values.reindex(columns=list(bench.tasks))
    for m in bench.means:
        out[m.key] = out[list(m.parts)].mean(axis=1, skipna=False)
    return out


# ---------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Stat:
    """A mean over repeats; `std` is the sample std (n − 1), None below two repeats."""

    mean: float | None
    std: float | None = None
    n: int = 0


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


@dataclass
class Row:
    """Our runs that share run_name, hyper-parameter overrides, backbone and protocol."""

    run_name: str
    hparams: str
    backbone: str
    protocol: str
    runs: pd.DataFrame

    @property
    def method(self) -> str:
        return self.runs["method"].iloc[0]

    def table(self) -> pd.DataFrame:
        """replicate × task Top-1."""
        return self.runs.pivot_table(index="replicate", columns="column", values="top1", aggfunc="first")

    def stats(self, bench: Benchmark) -> dict[str, Stat]:
        """Task and mean columns → mean ± std over repeats. A mean is taken of the per-task means; its ± is over
        the replicates' own means when every task has the same replicates."""
        table = self.table().reindex(columns=list(bench.tasks))
        means = with_means(table.mean().to_frame().T, bench).iloc[0]
        counts, stds = table.count(), table.std(ddof=1)
        out = {t: Stat(_num(means[t]), _num(stds[t]) if counts[t] > 1 else None, int(counts[t])) for t in bench.tasks}
        present = table.dropna(axis=1, how="all")
        same = not present.empty and present.notna().all().all() and len(present) > 1
        per_replicate = with_means(table, bench) if same else None
        for m in bench.means:
            value = _num(means[m.key])
            spread = None
            if per_replicate is not None and value is not None:
                spread = _num(per_replicate[m.key].std(ddof=1))
            out[m.key] = Stat(value, spread, len(table) if same else (1 if value is not None else 0))
        return out

    def seed_counts(self, bench: Benchmark) -> tuple[int, int]:
        counts = [n for n in self.table().reindex(columns=list(bench.tasks)).count() if n]
        return (min(counts), max(counts)) if counts else (0, 0)

    def params_m(self) -> tuple[float, float]:
        """Mean trainable parameters (M) without and with the head over the row's runs."""
        return self.runs["params_without_head"].mean() / 1e6, self.runs["params_with_head"].mean() / 1e6

    def tags(self, column: str) -> str:
        return ", ".join(sorted(set(self.runs[column])))


def method_order() -> list[str]:
    """vpeft method labels and recipe run names in the order `methods.csv` lists them (the published order)."""
    return list(dict.fromkeys(read_method_map()["method"]))


def aggregate(runs: pd.DataFrame, bench: Benchmark) -> tuple[list[Row], pd.DataFrame]:
    """Rows of `bench` (known methods in the published order, then by name) and the runs of columns it lacks."""
    inside = runs["column"].isin(bench.tasks)
    ignored, runs = runs[~inside], runs[inside]
    keys = ["run_name", "hparams", "backbone", "protocol"]
    repeats = runs[runs.duplicated([*keys, "column", "replicate"], keep=False)]
    if not repeats.empty:
        a, b = repeats["path"].iloc[0], repeats["path"].iloc[1]
        first = repeats.iloc[0]
        raise UserError(f"two runs of {first.run_name} on {first.column} ({first.replicate}): {a} and {b}; give one "
                        f"another run_name or move it out of the folder")
    order = {m: i for i, m in enumerate(method_order())}
    rows = [Row(*key, group) for key, group in runs.groupby(keys, sort=False)]
    rows.sort(key=lambda r: (order.get(r.run_name, order.get(r.method, len(order))), r.run_name, r.hparams,
                             r.backbone, r.protocol))
    return rows, ignored


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
    params_head: str  # "with" | "without" | "" (the source does not say)
    selection: str  # how the source picked the reported epoch ("" where not recorded)
    normalisation: str  # imagenet | 0.5/0.5 | none | ""
    tuned_per_task: str  # what the source tuned per task ("" where nothing or not recorded)
    note: str

    @property
    def weights_tag(self) -> str:
        return self.backbone_weights.split(" ", 1)[0]

    def means(self, bench: Benchmark) -> dict[str, tuple[float | None, bool]]:
        """Mean column → (value, printed): as printed where the source printed it, else computed from the cells."""
        computed = with_means(pd.DataFrame([self.cells]), bench).iloc[0]
        return {m.key: (self.printed[m.key], True) if m.key in self.printed else (_num(computed[m.key]), False)
                for m in bench.means}


def read_method_map() -> pd.DataFrame:
    return pd.read_csv(PUBLISHED_DIR / "methods.csv", dtype=str)


def load_published(bench: Benchmark) -> dict[str, list[Published]]:
    """vpeft method → its published rows for `bench` (empty for a benchmark without a per-method table)."""
    file = PUBLISHED_FILES.get(bench.name)
    if file is None:
        return {}
    table = pd.read_csv(PUBLISHED_DIR / file, keep_default_na=False, dtype=str).set_index("method", drop=False)
    out: dict[str, list[Published]] = {}
    mapping = read_method_map()
    for entry in mapping[mapping["benchmark"] == bench.name].itertuples():
        row = table.loc[entry.published_method]
        printed = {g.lower(): float(row[g.lower()]) for g in GROUPS if row.get(g.lower(), "")}
        if row["mean_published"]:
            printed["mean_group" if row["mean_convention"] == "group" else "mean_flat"] = float(row["mean_published"])
        out.setdefault(entry.method, []).append(Published(
            method=row["method"], source=row["source"], backbone_weights=row["backbone_weights"],
            cells={t: float(row[t]) for t in bench.tasks if row.get(t, "")}, printed=printed,
            params_m=float(row["params_m"]) if row["params_m"] else None, params_head=row["params_head"],
            selection=row["selection"], normalisation=row["normalisation"], tuned_per_task=row["tuned_per_task"],
            note=row["note"]))
    return out


def protocol_flags(row: Row, pub: Published) -> list[str]:
    """Differences between our runs' protocol and the published row's, each from a column of both."""
    flags = []
    ours = set(row.runs["weights"])
    if ours != {pub.weights_tag}:
        flags.append(f"backbone weights: ours {', '.join(sorted(ours))}, published {pub.backbone_weights}")
    if pub.selection and pub.selection != row.tags("selection"):
        flags.append(f"checkpoint selection: ours {row.tags('selection')}, published {pub.selection}")
    ours_norm = set(row.runs["normalisation"])
    theirs = PUBLISHED_NORMALISATION.get(pub.normalisation)
    if theirs and ours_norm != {theirs}:
        shown = ", ".join(NORMALISATION_LABELS.get(n, n) for n in sorted(ours_norm))
        flags.append(f"normalisation: ours {shown}, published {NORMALISATION_LABELS[theirs]}")
    if pub.tuned_per_task:
        flags.append(f"published tunes per task: {pub.tuned_per_task}")
    if (row.runs["protocol"] != "final").any():
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
    if len({r.hparams for r in rows}) > 1:
        label += f" · {row.hparams.rsplit('-', 1)[0] if row.hparams else 'defaults'}"
    if len({r.backbone for r in rows}) > 1:
        label += f" · {row.backbone}"
    if len({r.protocol for r in rows}) > 1:
        label += f" · {row.protocol}"
    return label


def build_results(runs: pd.DataFrame, bench: Benchmark, published: bool = False) -> Results:
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
        values = row.stats(bench)
        low, high = row.seed_counts(bench)
        ours = Line("ours", row_label(row, rows), values, (*row.params_m(), None),
                    str(high) if low == high else f"{low}–{high}", row=row)
        lines.append(ours)
        missing = [t for t in bench.tasks if values[t].mean is None]
        if missing:
            lost = [m.label for m in bench.means if values[m.key].mean is None]
            notes.append(f"{ours.label}: no run for {', '.join(missing)}; so {MISSING} for: {'; '.join(lost)}.")
        notes.append(f"{ours.label}: method {row.method}, backbone {row.backbone}, "
                     f"weights {row.tags('weights_label')}, normalisation {row.tags('normalisation')}, "
                     f"selection {row.tags('selection')}, data {row.tags('data_format')}, protocol {row.protocol}.")
        if row.tags("technique_notes"):
            notes.append(f"{ours.label}: {row.tags('technique_notes')}.")
        for pub in catalogue.get(row.run_name) or catalogue.get(row.method, []):  # a recipe's run name, or the label
            ref = refs.setdefault(pub.method, len(refs) + 1)
            pub_means = pub.means(bench)
            pub_values = {t: Stat(pub.cells.get(t)) for t in bench.tasks}
            pub_values.update({k: Stat(v) for k, (v, _) in pub_means.items()})
            params = (pub.params_m if pub.params_head == "without" else None,
                      pub.params_m if pub.params_head == "with" else None,
                      pub.params_m if not pub.params_head else None)
            lines.append(Line("published", f"↳ {pub.method} [{ref}]", pub_values, params, row=row, ref=ref,
                              published=pub, flags=protocol_flags(row, pub),
                              computed=frozenset(k for k, (v, printed) in pub_means.items()
                                                 if v is not None and not printed)))
            diff = {k: Stat(ours.values[k].mean - v.mean)
                    if ours.values[k].mean is not None and v.mean is not None else Stat(None)
                    for k, v in pub_values.items()}
            lines.append(Line("difference", f"↳ ours − [{ref}]", diff, ref=ref, row=row, published=pub))
    if published:
        if not catalogue:
            notes.append(f"No published per-method Top-1 for {bench.title} in data/published/"
                         + (" (fewshot.csv holds only PVP's average gains, not accuracies)." if bench.name == "fewshot"
                            else "."))
        else:
            notes.append("Published means are as the source printed them; * marks means computed here from the "
                         "published cells. Published params are as reported: in the column the source counts (with "
                         "or without head), marked ? where it does not say.")
        for pub_line in [line for line in lines if line.kind == "published"]:
            pub = pub_line.published
            if not any(n.startswith(f"[{pub_line.ref}] ") for n in notes):
                notes.append(f"[{pub_line.ref}] {pub.method}: {pub.source}; weights {pub.backbone_weights}; "
                             f"note: {pub.note or 'none'}.")
        for pub_line in [line for line in lines if line.kind == "published" and line.flags]:
            notes.append(f"Protocol differs, {row_label(pub_line.row, rows)} vs [{pub_line.ref}]: "
                         f"{'; '.join(pub_line.flags)}.")
    if not ignored.empty:
        notes.append(f"Left out {len(ignored)} run(s) of tasks outside {bench.title}: "
                     f"{', '.join(sorted(set(ignored['column'])))}.")
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


def main_frame(results: Results, decimals: int) -> pd.DataFrame:
    """The main table as text cells, one row per line."""
    bench = results.bench
    keys = (*bench.tasks, *(m.key for m in bench.means))
    records = []
    for line in results.lines:
        varying = line.kind == "ours" and "–" in line.seeds
        cells = []
        for key in keys:
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
        records.append([line.label, line.seeds, *cells, *params])
    header = ["Method", "Seeds", *bench.tasks, *(m.label for m in bench.means), "Params (M) w/o head",
              "Params (M) w/ head, task mean"]
    return pd.DataFrame(records, columns=header)


def main_cells(results: Results, decimals: int) -> list[list[str]]:
    return main_frame(results, decimals).values.tolist()


def efficiency_frame(results: Results) -> pd.DataFrame:
    """Per row: mean training throughput, peak memory (with its kind), GMACs per image, stored bytes."""
    records = []
    for row in results.rows:
        runs = row.runs
        records.append([
            row_label(row, results.rows), str(len(runs)), f"{runs['train_images_per_s'].mean():,.1f}",
            f"{runs['peak_memory_mib'].mean():,.0f} ({row.tags('peak_memory_kind')})",
            f"{runs['gmacs_per_image'].mean():.3g}", format_bytes(runs["stored_bytes"].mean()),
        ])
    return pd.DataFrame(records, columns=["Method", "Runs", "Train img/s", "Peak memory (MiB)", "GMACs/image",
                                          "Stored (mean per run)"])


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, colalign=("left", *["right"] * (frame.shape[1] - 1)), disable_numparse=True)


def to_markdown(results: Results, decimals: int = 2) -> str:
    return "\n\n".join([
        _markdown(main_frame(results, decimals)),
        "\n".join(f"- {n}" for n in results.notes),
        "Efficiency (mean over each row's runs):",
        _markdown(efficiency_frame(results)),
    ]) + "\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "±": r"$\pm$", "–": "--", "−": "$-$", "↳": r"$\hookrightarrow$", "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(c, c) for c in str(text))


def _latex(frame: pd.DataFrame, caption: str, notes: Sequence[str] = ()) -> str:
    escaped = frame.map(latex_escape).rename(columns=latex_escape)
    table = escaped.style.hide(axis="index").to_latex(
        column_format="l" + "r" * (frame.shape[1] - 1), hrules=True, caption=latex_escape(caption),
        environment="table*", position="t", position_float="centering")
    if notes:
        table = table.replace(r"\end{table*}", "\\par\\smallskip\\footnotesize\n"
                              + "\n".join(latex_escape(n) + r"\par" for n in notes) + "\n\\end{table*}")
    return table


def to_latex(results: Results, decimals: int = 2) -> str:
    """Two booktabs tables (results, efficiency); needs \\usepackage{booktabs}."""
    return "\n".join([
        _latex(main_frame(results, decimals), f"{results.bench.title} Top-1 (%)", results.notes),
        _latex(efficiency_frame(results), "Efficiency (mean over each row's runs)"),
    ])


def to_csv(results: Results) -> str:
    """One CSV line per table line, numbers unformatted; a missing value is an empty cell (as in published/)."""
    bench = results.bench
    keys = [*bench.tasks, *(m.key for m in bench.means)]
    records = []
    for line in results.lines:
        row, pub = line.row, line.published
        record = {"label": line.label, "kind": line.kind}
        if line.kind == "published":
            record.update(method=pub.method, weights=pub.backbone_weights, source=pub.source)
        else:
            record.update(method=row.method, run_name=row.run_name, hparams=row.hparams, backbone=row.backbone,
                          protocol=row.protocol,
                          weights=row.tags("weights") if line.kind == "ours" else "",
                          source="vpeft" if line.kind == "ours" else f"ours - [{line.ref}]")
        record["seeds"] = line.seeds
        record.update({k: line.values[k].mean for k in keys})
        record.update(zip(("params_m_without_head", "params_m_with_head", "params_m_head_unstated"), line.params,
                          strict=True))
        record.update({f"{k}_std": line.values[k].std for k in keys})
        if line.kind == "ours":
            runs = row.runs
            record.update(train_images_per_s=runs["train_images_per_s"].mean(),
                          peak_memory_mib=runs["peak_memory_mib"].mean(), peak_memory_kind=row.tags("peak_memory_kind"),
                          gmacs_per_image=runs["gmacs_per_image"].mean(), stored_bytes=runs["stored_bytes"].mean())
        record["notes"] = "; ".join(line.flags)
        records.append(record)
    columns = ["label", "kind", "method", "run_name", "hparams", "backbone", "protocol", "weights", "source", "seeds",
               *keys, "params_m_without_head", "params_m_with_head", "params_m_head_unstated",
               *(f"{k}_std" for k in keys),
               "train_images_per_s", "peak_memory_mib", "peak_memory_kind", "gmacs_per_image", "stored_bytes", "notes"]
    buffer = io.StringIO()
    pd.DataFrame(records, columns=columns).round(6).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def render(results: Results, fmt: str, decimals: int = 2) -> str:
    if fmt == "csv":
        return to_csv(results)
    return to_latex(results, decimals) if fmt == "latex" else to_markdown(results, decimals)
