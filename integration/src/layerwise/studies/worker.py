"""One study job in its own process: train (or resume) a run, then its missing analyses.

    python -m layerwise.studies.worker RUN_FOLDER [--stop-at STEP]

Reads `RUN_FOLDER/job.json` (written by `layerwise.studies.runner`), trains with one torch thread
through `layerwise.train.pretrain` (always with `train.resume=true`: a fresh folder starts, an
interrupted one continues from its latest checkpoint exactly), writes `trained.json` once the run
reached `train.steps`, then runs every analysis stage missing at every checkpoint step.
`--stop-at STEP` ends training after that step with a checkpoint, as a pre-empted job would (the
tests interrupt a run with it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from layerwise._progress import silenced
from layerwise.data.prepare import prepare_data
from layerwise.models import build_model
from layerwise.studies.analyses import AnalysisContext, StageUnavailableError
from layerwise.studies.config import ProbeDataConfig
from layerwise.studies.runner import JOB, TRAINED, _write_json, analysis_path, is_done
from layerwise.studies.stages import ANALYSES
from layerwise.train import PretrainConfig, pretrain, read_model_state

__all__ = ["analyse", "main", "train"]


def train(folder: Path, job: dict, stop_at: int | None = None) -> bool:
    """Train the job's run to its end (or to `stop_at`); True once it is finished."""
    cfg = PretrainConfig.from_dict(job["pretrain"])
    if (folder / TRAINED).is_file():
        return True
    with silenced():  # no progress bars in the worker's log
        result = pretrain(cfg.with_overrides(["train.resume=true"]), stop_at=stop_at)
    if result.step < cfg.train.steps:
        return False
    final = None
    if result.final_eval is not None:
        final = {"step": result.step, "validation_loss": result.final_eval.loss}
    _write_json(
        folder / TRAINED,
        {
            "pretrain": cfg.to_dict(),
            "final": final,
            "num_parameters": result.num_parameters,
            "wall_s": round(result.wall_s, 3),
        },
    )
    return True


def _stage(config: dict):
    return ANALYSES[config["name"]].model_validate({k: v for k, v in config.items() if k != "name"})


def analyse(folder: Path, job: dict) -> list[str]:
    """Run every analysis not done yet at every checkpoint; returns the failures (one line each).
    A stage that fails, or is unavailable here, writes its error into its JSON, so that the next
    invocation tries it again; an unavailable stage is not a failure."""
    cfg = PretrainConfig.from_dict(job["pretrain"])
    probe = ProbeDataConfig.from_dict(job["probe"]).to_dict()  # defaults of fields added since
    data = prepare_data(cfg.data, probe["window_tokens"] or cfg.train.block_size)
    tokenizer = data.tokenizer
    if not hasattr(data.train, "gather"):
        raise SystemExit(
            f"{folder}: the analyses read calibration windows from a train split held in "
            "memory; data.streaming=true streams it: use data.streaming=false in the study"
        )
    calibration = data.train.gather(range(min(probe["calibration_windows"], len(data.train))))
    evaluation = data.validation.gather(range(min(probe["eval_windows"], len(data.validation))))
    family = "dlm" if cfg.objective.name == "mdm" else "ar"
    errors = []
    for fraction, step in job["checkpoints"].items():
        todo = []
        for label, config in job["analyses"].items():
            if float(fraction) not in job["analyses_at"][label]:
                continue
            path = analysis_path(folder, label, step)
            if path.is_file() and is_done(json.loads(path.read_text()), config, probe):
                continue
            todo.append((label, config, path))
        if not todo:
            continue
        state = read_model_state(folder / "checkpoints" / f"step_{step}")

        def load_model(state=state):
            model = build_model(
                cfg.model,
                len(tokenizer),
                cfg.train.block_size,
                tokenizer.eos_token_id,
                objective=cfg.objective.name,
                mask_token_id=tokenizer.get_vocab().get("[MASK]"),
                seed=cfg.train.seed,
                device="cpu",
            )
            model.load_state_dict(state)
            return model.eval()

        mask_id = load_model().config.mask_token_id if family == "dlm" else None
        ctx = AnalysisContext(
            run_dir=folder,
            step=step,
            fraction=float(fraction),
            family=family,
            calibration=calibration[:, :-1],
            evaluation=evaluation,
            load_model=load_model,
            mask_token_id=mask_id,
            mdm_t=probe["mdm_t"],
            mdm_copies=probe["mdm_copies"],
            mask_seed=probe["mask_seed"],
            batch_size=probe["batch_size"],
            tokenizer=tokenizer,
        )
        for label, config, path in todo:
            started = time.perf_counter()
            record = {"stage": config, "probe": probe, "step": step, "fraction": float(fraction)}
            try:
                with torch.no_grad():
                    record |= _stage(config).run(ctx)
            except StageUnavailableError as err:  # not an error of the run: retried next time
                record["error"] = str(err)
            except Exception as err:  # recorded, and retried next time; the traceback in the log
                traceback.print_exc()
                record["error"] = f"{type(err).__name__}: {err}"
                errors.append(f"{label}@{fraction}: {record['error']}")
            record["wall_s"] = round(time.perf_counter() - started, 3)
            _write_json(path, record)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m layerwise.studies.worker")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--stop-at", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    job = json.loads((args.folder / JOB).read_text())
    if not train(args.folder, job, args.stop_at):
        return 0
    errors = analyse(args.folder, job)
    for line in errors:
        print(f"analysis failed: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
