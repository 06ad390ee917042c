"""Turn sweeps and runs into a results table.

    python -m lenet5.report outputs/multirun/2026-11-22/10-00-00-000000 [more sweeps or runs] [--csv out.csv] [--per-epoch]

Every directory below the given paths that holds a Hydra run (.hydra/config.yaml) is a run. Runs
whose overrides differ only by seed are one configuration: its row gives the final test error as
mean +- standard deviation over the seeds, the validation error after the last epoch (with
data.val=test, the default, that is the test error of the final weights, not of the best epoch's),
the number of seeds, the best epoch (by val/error),
the epochs trained, the trainable parameters and the training seconds per epoch. The table is
printed as Markdown and written as CSV. A run without results.json (failed, or still running) is
listed below the table, never counted, with how far its TensorBoard events say it got (epochs
logged, best and last val/error). `--per-epoch` adds tables of every run's val/error after each
epoch and of each epoch's training seconds (from its events), for following a sweep that is still
running or was stopped, and for timing one whose load changed as it ran.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Overrides that say where things go, not what is trained: they do not tell configurations apart.
IGNORED = re.compile(r"^(seed|paths\.|data\.data_dir|hydra\.|threads|callbacks\.progress_bar)")


COLUMNS = ["configuration", "test_error_mean", "test_error_std", "val_error_last_mean", "seeds", "best_epoch", "epochs", "parameters",
           "seconds_per_epoch"]


@dataclass
class Run:
    path: Path
    configuration: str
    results: dict | None
    status: str = "done"


@dataclass
class Row:
    configuration: str
    runs: list[Run] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [run.results[key] for run in self.runs if run.results.get(key) is not None]

    def cells(self) -> dict[str, str | float | int]:
        errors = self.values("test_error")
        seconds = self.values("seconds_per_epoch")
        best = self.values("best_epoch")
        last = self.values("val_error_last")
        return {
            "configuration": self.configuration,
            "test_error_mean": round(statistics.mean(errors), 3),
            "test_error_std": round(statistics.stdev(errors), 3) if len(errors) > 1 else "",
            "val_error_last_mean": round(statistics.mean(last), 3) if last else "",
            "seeds": len(errors),
            "best_epoch": round(statistics.fmean(best) + 1, 1) if best else "",  # 1-based, like the paper's passes
            "epochs": max(self.values("epochs")),
            "parameters": self.runs[0].results["parameters"],
            "seconds_per_epoch": round(statistics.mean(seconds), 1) if seconds else "",
        }


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def logged(run_dir: Path, tag: str) -> tuple[float, ...]:
    """A scalar's values in a run's TensorBoard events, in step order; where a resumed run wrote a
    step twice, the later write counts."""
    return scalars(run_dir).get(tag, ())


@functools.cache  # the progress lines and both --per-epoch tables read the same runs' events once
def scalars(run_dir: Path) -> dict[str, tuple[float, ...]]:
    """Every scalar in a run's TensorBoard events (all its event files, a resumed run's too)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_tag: dict[str, dict[int, tuple[float, float]]] = {}
    for events in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            by_step = by_tag.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                if event.step not in by_step or event.wall_time >= by_step[event.step][0]:
                    by_step[event.step] = (event.wall_time, event.value)
    return {tag: tuple(value for _, (_, value) in sorted(by_step.items())) for tag, by_step in by_tag.items()}


def last_logged(run_dir: Path, tag: str) -> float | None:
    """The last value of a scalar in a run's events (for runs whose results.json predates a field)."""
    values = logged(run_dir, tag)
    return values[-1] if values else None


def progress(run: Run) -> str:
    """How far an unfinished or failed run got, by its val/error events (epochs 1-based)."""
    errors = logged(run.path, "val/error")
    if not errors:
        return "no epoch logged"
    best = min(range(len(errors)), key=errors.__getitem__)
    return (f"{len(errors)} epochs logged, val/error best {errors[best]:.2f} (epoch {best + 1}), "
            f"last {errors[-1]:.2f}")


PER_EPOCH = [("val/error", "val/error (%) after each epoch", "{:.2f}"),
             ("time/epoch_seconds", "training seconds of each epoch (without validation)", "{:.0f}")]


def per_epoch(runs: list[Run]) -> str:
    """Every run's val/error after each epoch and the seconds each epoch trained, a row per run."""
    tables = []
    for tag, title, form in PER_EPOCH:
        series = [(run, logged(run.path, tag)) for run in runs]
        width = max((len(values) for _, values in series), default=0)
        if not width:
            continue
        lines = ["| run | " + " | ".join(str(epoch) for epoch in range(1, width + 1)) + " |", "|---|" + "---|" * width]
        for run, values in series:
            cells = " | ".join(form.format(value) for value in values)
            lines.append(f"| {run.path.name} | {cells} |" + " |" * (width - len(values)))
        tables.append("\n".join([f"{title}:", "", *lines]))
    return "\n\n".join(tables)


def find_runs(paths: list[Path]) -> list[Run]:
    runs = []
    for root in paths:
        configs = [root / ".hydra/config.yaml"] if (root / ".hydra/config.yaml").exists() else \
            sorted(root.rglob(".hydra/config.yaml"), key=natural_key)
        for config in configs:
            run_dir = config.parent.parent
            overrides = yaml.safe_load((run_dir / ".hydra/overrides.yaml").read_text()) or []
            key = " ".join(sorted(o for o in overrides if not IGNORED.match(o.lstrip("+~")))) or "defaults"
            results_file = run_dir / "results.json"
            if results_file.exists():
                results = json.loads(results_file.read_text())
                if "val_error_last" not in results:  # read the events only for runs that predate the field
                    results["val_error_last"] = last_logged(run_dir, "val/error")
                runs.append(Run(run_dir, key, results))
            else:
                log = "\n".join(p.read_text(errors="replace") for p in run_dir.glob("*.log"))
                failed = "Traceback" in log or "Error" in log or "error:" in log
                runs.append(Run(run_dir, key, None, "failed" if failed else "unfinished"))
    return runs


def tabulate(runs: list[Run]) -> list[Row]:
    rows: dict[str, Row] = {}
    for run in runs:
        if run.results is not None:
            rows.setdefault(run.configuration, Row(run.configuration)).runs.append(run)
    return list(rows.values())


def markdown(rows: list[Row], runs: list[Run]) -> str:
    lines = ["| configuration | test error (%) | last epoch (%) | seeds | best epoch | epochs | parameters | s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        c = row.cells()
        error = f"{c['test_error_mean']:.2f} ± {c['test_error_std']:.2f}" if c["test_error_std"] != "" \
            else f"{c['test_error_mean']:.2f}"
        last = f"{c['val_error_last_mean']:.2f}" if c["val_error_last_mean"] != "" else ""
        lines.append(f"| {c['configuration']} | {error} | {last} | {c['seeds']} | {c['best_epoch']} | {c['epochs']} | "
                     f"{c['parameters']:,} | {c['seconds_per_epoch']} |")
    incomplete = [run for run in runs if run.results is None]
    if incomplete:
        lines += ["", "Not counted (no results.json):"]
        lines += [f"- {run.status}: {run.path} ({run.configuration}): {progress(run)}" for run in incomplete]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lenet5.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep directories, run directories, or folders of them")
    parser.add_argument("--csv", type=Path, help="where to write the CSV (default: report.csv in the first path)")
    parser.add_argument("--per-epoch", action="store_true", help="also every run's val/error and training seconds, epoch by epoch")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.is_dir()]
    if missing:
        print(f"error: not a directory: {', '.join(missing)}; give sweep or run directories under outputs/",
              file=sys.stderr)
        return 2
    runs = find_runs(args.paths)
    if not runs:
        print(f"error: no Hydra runs (.hydra/config.yaml) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    rows = tabulate(runs)
    print(markdown(rows, runs))
    if args.per_epoch:
        print("\n" + per_epoch(runs))
    out = args.csv or args.paths[0] / "report.csv"
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.cells())
    print(f"\nCSV: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
