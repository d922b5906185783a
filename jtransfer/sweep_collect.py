"""A sweep's results: a row per run, a row per setting (mean ± std over seeds), plots, findings.

What a run contributes, all read from files it left:
- every number of its `final_eval.json`, flattened (`eval/accuracy`, `eval_ema/accuracy`,
  `wise_ft_0.5/accuracy`, `fewshot/5shot`, `train_seconds`, `step`);
- `img_per_sec`: the median training throughput of its `metrics.jsonl` progress rows after the
  first (which includes compiling the step), the step cost without compilation or evaluation;
- `compile_seconds` and `cache_hits` over its processes (`logs/<name>.jsonl` of
  `jtransfer.sweep_run`): what getting its compiled executables cost, compiled or loaded.

A setting is a run's overrides without the seed (`SEED_KEYS`); its row holds the number
of runs found (`n`), and per metric the mean and the sample standard deviation (ddof=1; none for
a single run). Runs without a `final_eval.json` are left out and listed.

Files written to the sweep's workdir: `runs.csv`, `results.csv` (every metric), `results.md`
(the accuracies, throughput and time, as `mean ± std`, the findings and the plots), and the PNG
plots that the config's `get_plots(arg)` asks for. A plot spec is a dict:

    {"file": "accuracy.png", "x": "percent", "y": "eval/accuracy", "series": "strategy",
     "panels": "data", "where": {"shots": 0}, "xlog": True, "title": ..., "xlabel": ...}

one line (or, for a categorical x, points) per `series` value, one panel per `panels` value,
error bars of ± std, restricted to settings matching `where`. `x_numbers` maps categorical x
values to numbers (a model to its ImageNet accuracy); a `y` with '{x}' reads one metric per x
of `x_values` from each setting (`wise_ft_{x}/accuracy` against alpha).
Plots are drawn with matplotlib (Agg backend, no display needed).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import statistics
from typing import Any

from jtransfer import metrics

SEED_KEYS = ("seed",)  # override keys averaged over; the others name a setting


@dataclasses.dataclass
class Table:
    """The settings of a sweep: `rows` of {setting key: value, 'n': runs, metric: (mean, std)}."""

    keys: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]]

    def select(self, **where) -> list[dict[str, Any]]:
        """The rows whose settings equal `where` (values compared as written in the runs)."""
        return [r for r in self.rows if all(r.get(k) == v for k, v in where.items())]

    def mean(self, metric: str, **where) -> float:
        """The mean of `metric` in the one setting matching `where`; NaN when there is none."""
        rows = self.select(**where)
        if len(rows) > 1:
            raise ValueError(f"{len(rows)} settings match {where}; name one")
        return rows[0][metric][0] if rows and metric in rows[0] else math.nan


@dataclasses.dataclass
class Report:
    table: Table
    missing: list[str]  # runs without final_eval.json
    plots: list[str]  # PNG files written, relative to the sweep's workdir
    findings: list[str]


def _flatten(result: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def run_metrics(sweep, run) -> dict[str, float] | None:
    """The numbers of one run (see the module docstring); None if it has not finished."""
    workdir = sweep.run_dir(run)
    path = os.path.join(workdir, "final_eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        out = _flatten(json.load(f))
    rates = [r["train/img_per_sec"] for r in metrics.read_rows(workdir) if "train/img_per_sec" in r]
    if rates:  # the first rate includes compiling the step
        out["img_per_sec"] = statistics.median(rates[1:] or rates)
    record = sweep.log(run, ".jsonl")
    if os.path.exists(record):
        with open(record) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        out["compile_seconds"] = sum(r.get("compile_seconds", 0.0) for r in lines)
        out["cache_hits"] = float(sum(r.get("cache_hits", 0) for r in lines))
    return out


def _setting(overrides: dict) -> tuple:
    return tuple((k, _hashable(v)) for k, v in overrides.items() if k not in SEED_KEYS)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def table(sweep) -> tuple[Table, list[dict], list[str]]:
    """(the settings' table, one row per finished run, the names of runs not finished)."""
    per_run, missing, groups = [], [], {}
    for run in sweep.runs:
        values = run_metrics(sweep, run)
        if values is None:
            missing.append(run.name)
            continue
        per_run.append({"name": run.name, **run.overrides, **values})
        groups.setdefault(_setting(run.overrides), []).append(values)
    keys = list(dict.fromkeys(k for r in sweep.runs for k in r.overrides if k not in SEED_KEYS))
    names = list(dict.fromkeys(m for g in groups.values() for v in g for m in v))
    rows = []
    for setting, runs in groups.items():
        row: dict[str, Any] = dict(setting)
        row["n"] = len(runs)
        for m in names:
            values = [v[m] for v in runs if m in v]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else None
                row[m] = (statistics.fmean(values), std)
        rows.append(row)
    return Table(keys, names, rows), per_run, missing


def _fmt(mean: float, std: float | None) -> str:
    digits = 3 if abs(mean) < 10 else 1
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _shown(table: Table) -> list[str]:
    accuracy = [m for m in table.metrics if m.endswith("accuracy") and "_seed" not in m]
    accuracy.sort(key=lambda m: (not m.startswith("eval/"), _natural(m)))
    shots = [m for m in table.metrics if m.endswith("shot")]
    rest = [m for m in ("img_per_sec", "train_seconds", "compile_seconds") if m in table.metrics]
    return accuracy + shots + rest


def _natural(name: str) -> list:
    """'wise_ft_0.25/accuracy' after 'wise_ft_0/accuracy' and before 'wise_ft_1/accuracy'."""
    return [
        (0, float(p), "") if i % 2 else (1, 0.0, p)
        for i, p in enumerate(re.split(r"(\d+(?:\.\d+)?)", name))
    ]


def markdown_table(table: Table) -> str:
    columns = _shown(table)
    lines = [
        "| " + " | ".join([*table.keys, "n", *columns]) + " |",
        "|" + "---|" * (len(table.keys) + 1 + len(columns)),
    ]
    for row in table.rows:
        cells = [str(row.get(k, "")) for k in table.keys] + [str(row["n"])]
        cells += [_fmt(*row[m]) if m in row else "" for m in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _points(table: Table, spec: dict) -> dict[Any, dict[Any, list[tuple]]]:
    """{panel: {series: [(x, mean, std), ...]}} for one plot spec."""
    out: dict = {}
    for row in table.select(**spec.get("where", {})):
        panel = row.get(spec["panels"]) if spec.get("panels") else None
        series = row.get(spec["series"]) if spec.get("series") else None
        if "{x}" in spec["y"]:
            xs = [(x, spec["y"].format(x=f"{x:g}")) for x in spec["x_values"]]
        else:
            xs = [(row.get(spec["x"]), spec["y"])]
        for x, metric in xs:
            if metric in row:
                x = spec.get("x_numbers", {}).get(x, x)
                mean, std = row[metric]
                out.setdefault(panel, {}).setdefault(series, []).append((x, mean, std or 0.0))
    return out


def plot(table: Table, spec: dict, path: str) -> bool:
    """Draws one plot spec to `path`; False (nothing drawn) when no setting has its numbers."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = _points(table, spec)
    if not points:
        return False
    fig, axes = plt.subplots(
        1, len(points), figsize=(4.5 * len(points), 3.6), squeeze=False, sharey=True
    )
    for ax, (panel, series) in zip(axes[0], points.items(), strict=True):
        xs = [x for pts in series.values() for x, _, _ in pts]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        categories = list(dict.fromkeys(map(str, xs)))
        for k, (name, pts) in enumerate(series.items()):
            pts = sorted(pts, key=lambda p: p[0]) if numeric else pts
            if numeric:
                x = [p[0] for p in pts]
            else:  # categories side by side, each series slightly offset
                x = [categories.index(str(p[0])) + 0.08 * (k - (len(series) - 1) / 2) for p in pts]
            ax.errorbar(
                x,
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                linestyle="-" if numeric else "none",
                label=None if name is None else str(name),
            )
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        if spec.get("xlog"):
            ax.set_xscale("log")
        ax.set_xlabel(spec.get("xlabel", spec.get("x", "")))
        ax.set_title(str(panel) if panel is not None else spec.get("title", ""))
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(spec.get("ylabel", spec["y"]))
    if spec.get("title") and len(points) > 1:
        fig.suptitle(spec["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def collect(sweep) -> Report:
    """Writes runs.csv, results.csv, results.md and the plots; prints where they are."""
    arg = sweep.arg
    result, per_run, missing = table(sweep)
    names = result.metrics
    _write_csv(
        os.path.join(sweep.workdir, "runs.csv"),
        ["name", *result.keys, *SEED_KEYS, *names],
        [
            [r["name"], *(r.get(k, "") for k in (*result.keys, *SEED_KEYS))]
            + [r.get(m, "") for m in names]
            for r in per_run
        ],
    )
    _write_csv(
        os.path.join(sweep.workdir, "results.csv"),
        [*result.keys, "n", *(f"{m}_{s}" for m in names for s in ("mean", "std"))],
        [
            [row.get(k, "") for k in result.keys]
            + [row["n"]]
            + [
                "" if m not in row or v is None else v
                for m in names
                for v in (row[m] if m in row else (None, None))
            ]
            for row in result.rows
        ],
    )
    plots = []
    for spec in getattr(sweep.module, "get_plots", lambda a: [])(arg):
        if plot(result, spec, os.path.join(sweep.workdir, spec["file"])):
            plots.append(spec["file"])
    findings = []
    if result.rows and hasattr(sweep.module, "get_findings"):
        findings = list(sweep.module.get_findings(arg, result))
    report = Report(result, missing, plots, findings)
    with open(os.path.join(sweep.workdir, "results.md"), "w") as f:
        f.write(markdown(sweep, report) + "\n")
    print(
        f"results of {len(per_run)} of {len(sweep.runs)} runs: {sweep.workdir}/results.md, "
        f"results.csv, runs.csv" + "".join(f", {p}" for p in plots)
    )
    if missing:
        print(f"not finished ({len(missing)}): {', '.join(missing)}")
    return report


def markdown(sweep, report: Report, image_dir: str = "") -> str:
    """The report as markdown: title, command, table, findings, plots (under `image_dir`)."""
    doc = (sweep.module.__doc__ or "").strip().splitlines()
    lines = [f"## {doc[0] if doc else os.path.basename(sweep.path)}", ""]
    manifest_path = os.path.join(sweep.workdir, "sweep.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        quick = " (the quick variant: it checks the pipeline, not the figures)"
        lines += [f"`{manifest['command']}`" + (quick if manifest.get("quick") else ""), ""]
    if report.table.rows:
        n = sorted({r["n"] for r in report.table.rows})
        lines += [
            f"Mean ± std over {'/'.join(map(str, n))} seed(s) per setting.",
            "",
            markdown_table(report.table),
            "",
        ]
    if report.missing:
        lines += [f"Not finished: {', '.join(report.missing)}.", ""]
    lines += [f"- {finding}" for finding in report.findings]
    if report.findings:
        lines.append("")
    lines += [f"![{p}]({os.path.join(image_dir, p) if image_dir else p})" for p in report.plots]
    return "\n".join(lines).rstrip()
