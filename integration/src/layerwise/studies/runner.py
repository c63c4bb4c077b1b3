"""The study runner: every (run, seed) of a `StudyConfig` in its own folder and process, resumable.

    <study>/study.yaml                      the resolved study (YAML + command-line overrides)
    <study>/runs/<run>-s<seed>/             a `layerwise pretrain` run folder (checkpoints/, final/,
                                            metrics.jsonl, config.yaml, history.jsonl), plus
        job.json                            what the worker runs (written before each launch)
        trained.json                        written once training finished: the config trained
        analyses/<label>/step_<N>.json      one analysis stage at one checkpoint
        worker.log                          the worker's output
    <study>/results.json                    every run's results (`aggregate`)
    <study>/report.md, <study>/*.png        the report (`layerwise.studies.report`)

A job is one process (`python -m layerwise.studies.worker <run folder>`, one torch thread);
`jobs` of them run at once. Before anything is launched, every run folder is checked: a finished
run (trained.json) whose recorded config differs from the study's in what it trains is refused,
as is an interrupted run whose config the pipeline's resume would refuse. Then a finished run
with every analysis done is skipped (no process), a finished run with analyses missing runs only
those, and an interrupted run resumes from its latest checkpoint (`train.resume`: the pipeline's
exact resume). Results are aggregated and the report written even when some jobs failed.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.studies.config import StudyConfig
from layerwise.train.config import RESUME_SAFE_CHANGES, PretrainConfig, resume_changes
from layerwise_core import ConfigError, MissingPathError, UsageError, atomic_write, lock_run_folder

__all__ = [
    "STUDY_DIR",
    "Job",
    "StudyOutcome",
    "aggregate",
    "list_studies",
    "load_study",
    "plan_jobs",
    "resolve_study",
    "run_study",
]

STUDY_DIR = Path(__file__).resolve().parents[1] / "recipes" / "studies"
JOB, TRAINED, ANALYSES_DIR, LOG = "job.json", "trained.json", "analyses", "worker.log"
RESULTS, REPORT = "results.json", "report.md"


class StudyMismatchError(UsageError):
    """A run folder holds a run trained with another configuration than the study's."""


def list_studies() -> list[str]:
    """Names of the built-in studies (`layerwise study NAME`)."""
    return sorted(path.stem for path in STUDY_DIR.glob("*.yaml"))


def resolve_study(spec: str) -> Path:
    """A study YAML file, or the name of a built-in study."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if (STUDY_DIR / f"{spec}.yaml").is_file():
        return STUDY_DIR / f"{spec}.yaml"
    close = difflib.get_close_matches(spec, list_studies(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise MissingPathError(
        f"study '{spec}' is neither a YAML file nor a built-in study{hint}: pass a file or one "
        f"of {list_studies()}"
    )


def load_study(spec: str, overrides: Sequence[str] = ()) -> StudyConfig:
    """The validated study of a file or built-in name, with dotted overrides
    (`base.train.steps=8`, `seeds=[0]`)."""
    return StudyConfig.from_yaml(resolve_study(spec), overrides=list(overrides))


@dataclass
class Job:
    """One (run, seed) of a study: its folder and the config it trains."""

    run: str
    seed: int
    folder: Path
    config: PretrainConfig
    checkpoint_steps: list[int]

    @property
    def name(self) -> str:
        return f"{self.run}-s{self.seed}"

    def spec(self, study: StudyConfig) -> dict[str, Any]:
        """What the worker reads from job.json."""
        return {
            "study": study.name,
            "run": self.run,
            "seed": self.seed,
            "pretrain": self.config.to_dict(),
            "checkpoints": dict(zip(map(str, study.checkpoints), self.checkpoint_steps)),
            "analyses": {label: stage.to_dict() for label, stage in study.analyses.items()},
            "analyses_at": {label: study.fractions_of(label) for label in study.analyses},
            "probe": study.probe.to_dict(),
        }


def plan_jobs(study: StudyConfig, out: str | os.PathLike) -> list[Job]:
    """Every (run, seed) of the study, run by run, seed by seed, with folders under `out`."""
    root = Path(out).resolve()
    jobs = []
    for run in study.runs:
        for seed in study.seeds_of(run):
            folder = root / "runs" / f"{run}-s{seed}"
            cfg = study.pretrain_config(run, seed, str(folder))
            jobs.append(Job(run, seed, folder, cfg, study.checkpoint_steps(cfg.train.steps)))
    return jobs


def _drift(stored: PretrainConfig, new: PretrainConfig, finished: bool) -> dict[str, tuple]:
    """The differences of what a run trains: those a resume refuses; for a finished run also
    the ones a resume may make (train.steps)."""
    allowed, refused = resume_changes(stored, new)
    if finished:
        refused |= {k: v for k, v in allowed.items() if RESUME_SAFE_CHANGES.get(k) == "increase"}
    return refused


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} is unreadable ({err}): delete it and rerun the study") from None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(data, indent=1, sort_keys=True) + "\n")


def analysis_path(folder: Path, label: str, step: int) -> Path:
    return folder / ANALYSES_DIR / label / f"step_{step}.json"


def missing_analyses(job: Job, study: StudyConfig) -> list[tuple[str, int]]:
    """(label, step) of every analysis not done, done with another stage or probe config, or
    failed."""
    missing = []
    for label, stage in study.analyses.items():
        for fraction, step in zip(study.checkpoints, job.checkpoint_steps):
            if fraction not in study.fractions_of(label):
                continue
            path = analysis_path(job.folder, label, step)
            if path.is_file() and is_done(_read_json(path), stage.to_dict(), study.probe.to_dict()):
                continue
            missing.append((label, step))
    return missing


def is_done(record: dict, stage: dict, probe: dict) -> bool:
    """Whether an analysis record holds the result of `stage` on the windows of `probe`."""
    return record.get("stage") == stage and record.get("probe") == probe and "error" not in record


def job_state(job: Job, study: StudyConfig) -> str:
    """ "done" (nothing to do), "analyses" (trained, analyses missing), "resume" (interrupted),
    or "fresh"; a folder trained with another config is a `StudyMismatchError`."""
    folder = job.folder
    trained = folder / TRAINED
    if trained.is_file():
        stored = PretrainConfig.from_dict(_read_json(trained)["pretrain"])
        refused = _drift(stored, job.config, finished=True)
        if refused:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise StudyMismatchError(
                f"run {job.name} in {folder} was trained with another configuration ({listed}): "
                "restore the study's values, or delete that run folder (or use another --out) "
                "to train it anew"
            )
        return "analyses" if missing_analyses(job, study) else "done"
    if (folder / "config.yaml").is_file():
        stored = PretrainConfig.from_yaml(folder / "config.yaml")
        refused = _drift(stored, job.config, finished=False)
        if refused:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise StudyMismatchError(
                f"run {job.name} in {folder} was started with another configuration ({listed}) "
                "and cannot resume under the study's: restore its values, or delete that run "
                "folder to start it anew"
            )
        return "resume"
    return "fresh"


@dataclass
class StudyOutcome:
    """What one invocation did: job name -> state before ("done" jobs were skipped) and the
    failures (job name -> the tail of its log)."""

    out: Path
    states: dict[str, str]
    failed: dict[str, str]
    unavailable: dict[str, str]  # analysis label -> why it cannot run here
    results: dict[str, Any]


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # one thread per run: N runs share N cores without oversubscription, and results do not
    # depend on how many run at once
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["TQDM_DISABLE"] = "1"
    return env


def _launch(job: Job, python: str) -> tuple[int, str]:
    """Run the job's worker to its end; (exit status, the tail of its log)."""
    log = job.folder / LOG
    with log.open("a") as handle:
        handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} worker start\n")
        handle.flush()
        status = subprocess.call(
            [python, "-m", "layerwise.studies.worker", str(job.folder)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=_worker_env(),
        )
    tail = "\n".join(log.read_text().splitlines()[-6:])
    return status, tail


def run_study(
    study: StudyConfig,
    out: str | os.PathLike,
    *,
    jobs: int = 1,
    python: str = sys.executable,
    echo=print,
) -> StudyOutcome:
    """Train and analyse every (run, seed) not done yet, `jobs` processes at once, then
    aggregate `results.json` and write the report. See the module docstring."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out).resolve()
    with lock_run_folder(out):
        plan = plan_jobs(study, out)
        states = {job.name: job_state(job, study) for job in plan}  # refusals before any write
        unavailable = {
            label: reason
            for label, stage in study.analyses.items()
            if (reason := stage.unavailable()) is not None
        }
        for label, reason in unavailable.items():
            echo(f"analysis '{label}' will be skipped: {reason}")
        study.to_yaml(out / "study.yaml")
        pending = [job for job in plan if states[job.name] != "done"]
        echo(
            f"study {study.name}: {len(plan)} runs, {len(plan) - len(pending)} done, "
            f"{len(pending)} to run, {jobs} at once ({out})"
        )
        if pending:
            _prepare_data(
                {(j.config.data.to_yaml(), j.config.train.block_size): j for j in pending}
            )
        for job in pending:
            job.folder.mkdir(parents=True, exist_ok=True)
            _write_json(job.folder / JOB, job.spec(study))
        failed = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            started = time.perf_counter()
            futures = {pool.submit(_launch, job, python): job for job in pending}
            for future in concurrent.futures.as_completed(futures):
                job = futures[future]
                status, tail = future.result()
                took = time.perf_counter() - started
                if status != 0:
                    failed[job.name] = tail
                    echo(f"  {job.name}: FAILED (exit {status}, {job.folder / LOG}):\n{tail}")
                else:
                    echo(f"  {job.name}: {states[job.name]} -> done ({took:.0f} s since start)")
        results = aggregate(study, out)
        _write_json(out / RESULTS, results)
        from layerwise.studies.report import write_report

        write_report(results, out)
        return StudyOutcome(out, states, failed, unavailable, results)


def _prepare_data(configs: dict[tuple[str, int], Job]) -> None:
    """Tokenize each distinct corpus once here, so that parallel workers only read the cache."""
    from layerwise.data.prepare import prepare_data

    for (_, block_size), job in configs.items():
        prepare_data(job.config.data, block_size)


def _curves(folder: Path, keys: Sequence[str]) -> dict[str, list[list[float]]]:
    """{"train": [[step, loss], ...], "validation": [...], key: [[step, value], ...] for the
    train-record `keys`} from a run's metrics.jsonl."""
    curves: dict[str, list[list[float]]] = {"train": [], "validation": []}
    curves |= {key: [] for key in keys}
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return curves
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("split") == "train":
            curves["train"].append([record["step"], record["loss"]])
            for key in keys:
                if key in record:
                    curves[key].append([record["step"], record[key]])
        elif record.get("split") == "validation":
            curves["validation"].append([record["step"], record["loss"]])
    return curves


def aggregate(study: StudyConfig, out: str | os.PathLike) -> dict[str, Any]:
    """The study's results from its run folders (reads files only; nothing is trained):
    `{"study", "description", "config", "runs": {run: {"tags", "seeds": {seed: {...}}}}}`;
    a run's `timing` holds its wall times (which differ between invocations), kept apart from
    what it measured."""
    out = Path(out).resolve()
    runs: dict[str, Any] = {}
    for job in plan_jobs(study, out):
        entry: dict[str, Any] = {"status": "not trained", "analyses": {}, "timing": {}}
        trained = job.folder / TRAINED
        if trained.is_file():
            record = _read_json(trained)
            entry["status"] = "trained"
            entry["final"] = record["final"]
            entry["num_parameters"] = record["num_parameters"]
            entry["timing"]["train_wall_s"] = record["wall_s"]
        elif (job.folder / "config.yaml").is_file():
            entry["status"] = "interrupted"
        curves = _curves(job.folder, study.report.curves)
        entry["train_curve"], entry["validation_curve"] = (
            curves.pop("train"),
            curves.pop("validation"),
        )
        entry["curves"] = curves
        for label in study.analyses:
            per_fraction = {}
            for fraction, step in zip(study.checkpoints, job.checkpoint_steps):
                path = analysis_path(job.folder, label, step)
                if path.is_file():
                    done = _read_json(path)
                    entry["timing"][f"{label}@{fraction:g}"] = done.pop("wall_s", None)
                    done.pop("stage", None), done.pop("probe", None)
                    per_fraction[f"{fraction:g}"] = done
            entry["analyses"][label] = per_fraction
        run = runs.setdefault(job.run, {"tags": study.runs[job.run].tags, "seeds": {}})
        run["seeds"][str(job.seed)] = entry
    return {
        "study": study.name,
        "description": study.description,
        "config": study.to_dict(),
        "runs": runs,
    }
