"""Controlled studies: named runs x seeds of one base pre-training config, from one YAML.

    study = load_study("dlm-vs-ar", ["base.train.steps=8", "seeds=[0]"])
    outcome = run_study(study, "runs/dlm-vs-ar", jobs=2)      # resumable; skips finished runs
    write_report(json.loads(Path("runs/dlm-vs-ar/results.json").read_text()), "runs/dlm-vs-ar")

    layerwise study dlm-vs-ar --out runs/dlm-vs-ar --jobs 2 [base.train.steps=8 ...]
    layerwise study dlm-vs-ar --out runs/dlm-vs-ar --report

`config` (StudyConfig: the YAML), `analyses` (the stages measured at each checkpoint), `runner`
(folders, processes, resume, refusal of a changed run, aggregation), `worker` (one run's process),
`report` (markdown + PNGs from results.json). Built-in studies: `recipes/studies/*.yaml`
(`list_studies()`); docs/studies.md.
"""

from layerwise.studies.analyses import AnalysisContext, StageUnavailableError
from layerwise.studies.config import ProbeDataConfig, ReportConfig, RunSpec, StudyConfig
from layerwise.studies.report import write_report
from layerwise.studies.runner import (
    Job,
    StudyMismatchError,
    StudyOutcome,
    aggregate,
    list_studies,
    load_study,
    plan_jobs,
    resolve_study,
    run_study,
)
from layerwise.studies.stages import ANALYSES

__all__ = [
    "ANALYSES",
    "AnalysisContext",
    "Job",
    "ProbeDataConfig",
    "ReportConfig",
    "RunSpec",
    "StageUnavailableError",
    "StudyConfig",
    "StudyMismatchError",
    "StudyOutcome",
    "aggregate",
    "list_studies",
    "load_study",
    "plan_jobs",
    "resolve_study",
    "run_study",
    "write_report",
]
