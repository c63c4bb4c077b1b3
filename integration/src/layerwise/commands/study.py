"""`layerwise study NAME|FILE [--out DIR] [--jobs N] [--report] [KEY=VALUE ...]`: a controlled
study (docs/studies.md): every (run, seed) of the YAML trained and analysed in its own process,
resumable, aggregated into DIR/results.json and DIR/report.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layerwise.studies import StudyConfig, list_studies, load_study, run_study, write_report
from layerwise.studies.runner import RESULTS
from layerwise_core import MissingPathError, UsageError

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = StudyConfig
EXAMPLE = "base.train.steps=40 seeds=[0]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The study, its folder, the parallelism, --report, overrides."""
    parser.add_argument(
        "study", help=f"a study YAML file or a built-in study: {', '.join(list_studies())}"
    )
    parser.add_argument(
        "--out", default=None, help="the study folder (default: runs/studies/<study name>)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs trained at once, one process and thread each"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only rebuild report.md and its figures from the folder's results.json",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study overrides")


def run(args: argparse.Namespace) -> int:
    """Run the study (or rebuild its report); 1 if a run failed."""
    study = load_study(args.study, args.overrides)
    out = Path(args.out or Path("runs") / "studies" / study.name)
    if args.report:
        results = out / RESULTS
        if not results.is_file():
            raise MissingPathError(
                f"{results} does not exist: run the study first (without --report), or pass its "
                "folder with --out"
            )
        try:
            data = json.loads(results.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"{results} is not valid JSON ({err}): rerun the study") from None
        print(f"report: {write_report(data, out)}")
        return 0
    outcome = run_study(study, out, jobs=args.jobs)
    print(f"results: {out / RESULTS}; report: {out / 'report.md'}")
    if outcome.failed:
        print(f"{len(outcome.failed)} run(s) failed: {', '.join(outcome.failed)} (see worker.log)")
        return 1
    return 0
