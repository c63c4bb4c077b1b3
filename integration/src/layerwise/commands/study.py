"""`layerwise study NAME|FILE [--out DIR] [--jobs N] [--report | --snapshot TO] [KEY=VALUE ...]`: a
controlled study (docs/studies.md): every (run, seed) of the YAML trained and analysed in its own
process, resumable, aggregated into DIR/results.json and DIR/report.md. `--snapshot TO` writes the
results and report of what is finished so far into TO, without training (also while the study
runs: a long sweep's partial results, to commit as they arrive)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layerwise.commands import config_help
from layerwise.studies import StudyConfig, list_studies, load_study, run_study, write_report
from layerwise.studies.runner import RESULTS, _write_json, aggregate
from layerwise_core import MissingPathError, UsageError

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = None  # no --config: the study YAML is the positional argument (its keys: the epilog)
EXAMPLE = "base.train.steps=40 seeds=[0]"


class _IntermixedParser(argparse.ArgumentParser):
    """Options and KEY=VALUE overrides in any order after the study (`study NAME --jobs 2 a=b`):
    argparse alone gives every positional to the first run of them (NAME), leaving `a=b`
    unrecognised."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._parsing:  # parse_known_intermixed_args calls back here
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The study, its folder, the parallelism, --report, overrides."""
    parser.__class__ = _IntermixedParser
    # StudyConfig has required keys (name, runs): the built-in studies are the examples
    lines = config_help(StudyConfig, EXAMPLE).replace("config file", "study YAML", 1).splitlines()
    parser.epilog = "\n".join(
        [*lines[:-1], "the built-in studies: layerwise/recipes/studies/*.yaml (docs/studies.md)"]
    )
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
    parser.add_argument(
        "--snapshot",
        metavar="TO",
        default=None,
        help="write results.json and the report of the runs finished so far into TO (nothing "
        "is trained; works while the study runs)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study overrides")


def run(args: argparse.Namespace) -> int:
    """Run the study (or rebuild its report); 1 if a run failed."""
    study = load_study(args.study, args.overrides)
    out = Path(args.out or Path("runs") / "studies" / study.name)
    if args.report and args.snapshot:
        raise UsageError("--report and --snapshot exclude each other: choose one")
    if args.snapshot:
        if not (out / "runs").is_dir():
            raise MissingPathError(f"{out} holds no study runs: pass the study's folder with --out")
        to = Path(args.snapshot)
        if to.resolve() == out.resolve():
            raise UsageError("--snapshot TO must be another folder than the study's (--out)")
        to.mkdir(parents=True, exist_ok=True)
        results = aggregate(study, out)  # reads finished files only
        _write_json(to / RESULTS, results)
        print(f"snapshot: {to / RESULTS}; report: {write_report(results, to)}")
        return 0
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
