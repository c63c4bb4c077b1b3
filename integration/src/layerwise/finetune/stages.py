"""Stage pipelines: fine-tuning runs in sequence, each starting from the previous one's model.

    model: {path: models/smollm2-135m-instruct}
    train: {out_dir: runs/sft-rl, save_every: 20, batch_size: 8}     # shared defaults
    data: {train: data/train.jsonl, eval: data/val.jsonl}
    stages:
      - {name: sft, objective: ntp, method: full, optimizer: {lr: 4.0e-5}, train: {epochs: 2}}
      - name: rl
        objective: {name: grpo, num_generations: 8, max_completion_length: 96}
        method: {name: lora, r: 16}
        optimizer: {lr: 1.0e-6}
        train: {steps: 150, batch_size: 32}

Every key of `FinetuneConfig` outside `stages` is a shared default; a stage's own keys are merged
over them (mappings key by key; a tagged choice given another `name` replaces the default's
whole section). Stage i (1-based) runs in `<train.out_dir>/<i>-<name>/`; stage 1 loads
`model.path`, stage i > 1 loads `<i-1>-<name>/final`: the previous stage's full model with its
LoRA adapter or LIFT / SEFT delta merged in. A stage's `final/` is the last thing it writes, so a
stage that has one is finished and is skipped on a re-run (after checking that its configuration
did not change); the running stage resumes from its latest checkpoint (`train.save_every`), and
restarts when it has none. `train.overwrite=true` deletes every stage folder first.

`layerwise finetune --config FILE.yaml` runs a pipeline when the file has `stages:`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from layerwise.finetune.config import FinetuneConfig
from layerwise.finetune.pipeline import FinetuneResult, config_changes, finetune
from layerwise_core import (
    ConfigError,
    LayerwiseConfig,
    UsageError,
    lock_run_folder,
    remove_temp_leftovers,
)

__all__ = ["PipelineConfig", "PipelineResult", "StageConfig", "merge_stage", "run_pipeline"]

_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PIPELINE_FILE = "pipeline.yaml"  # the configuration of the latest invocation, for the record


class StageConfig(LayerwiseConfig):
    """One stage: its name and the `FinetuneConfig` sections it sets over the shared defaults
    (each as in a single run's file: `objective: grpo` or `{name: grpo, ...}`, `train: {...}`)."""

    name: str  # the stage's folder is <out_dir>/<i>-<name>
    objective: Any = None
    method: Any = None
    prune: dict[str, Any] | None = None
    optimizer: Any = None
    data: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            raise ValueError(
                "a stage cannot set `model`: stage 1 loads the top-level model.path and every "
                "later stage the previous stage's final model; set model.path at the top level"
            )
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown stage key(s) {unknown}: a stage takes {list(cls.model_fields)}"
                )
        return data

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not _STAGE_NAME.fullmatch(name):
            raise ValueError(
                f"stage name {name!r} must be letters, digits, '_', '.' or '-' (it names the "
                "stage's folder), starting with a letter or digit"
            )
        return name

    @field_validator("train")
    @classmethod
    def _own_folder(cls, train: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in ("out_dir", "resume", "overwrite"):
            if train and key in train:
                raise ValueError(
                    f"a stage cannot set train.{key}: stages run in <train.out_dir>/<i>-<name>, "
                    "continue automatically, and train.overwrite at the top level restarts them all"
                )
        return train


def merge_stage(shared: Any, own: Any) -> Any:
    """`own` over `shared`: mappings merge key by key; a bare choice name `lora` is `{name: lora}`;
    a mapping whose `name` differs from the shared one's replaces it whole (other fields belong to
    another choice); anything else (values, lists) replaces."""
    if isinstance(own, str) and isinstance(shared, dict) and "name" in shared:
        own = {"name": own}
    if not (isinstance(shared, dict) and isinstance(own, dict)):
        return own
    if "name" in own and "name" in shared and own["name"] != shared["name"]:
        return dict(own)
    merged = dict(shared)
    for key, value in own.items():
        merged[key] = merge_stage(shared[key], value) if key in shared else value
    return merged


class PipelineConfig(FinetuneConfig):
    """Shared `FinetuneConfig` defaults plus `stages:` (module docstring)."""

    stages: list[StageConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_stages(self) -> PipelineConfig:
        if not self.stages:
            raise ValueError(
                "stages is empty: list at least one stage, e.g. stages: [{name: sft}], or drop "
                "`stages:` for a single fine-tuning run"
            )
        names = [stage.name for stage in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage names {repeated} repeat: give every stage its own name")
        self.stage_configs()  # every stage's configuration is checked now, before anything runs
        return self

    def stage_dirs(self) -> list[Path]:
        """`<train.out_dir>/<i>-<name>` of every stage, i from 1."""
        root = Path(self.train.out_dir)
        return [root / f"{i}-{stage.name}" for i, stage in enumerate(self.stages, 1)]

    def stage_configs(self) -> list[FinetuneConfig]:
        """The `FinetuneConfig` of every stage: the shared defaults, the stage's own keys over
        them, its folder, `train.resume=true`, and the previous stage's final model."""
        shared = self.model_dump(mode="json", exclude={"stages"})
        shared["train"].update(resume=False, overwrite=False)
        configs = []
        folders = self.stage_dirs()
        for i, stage in enumerate(self.stages):
            own = stage.model_dump(mode="json", exclude={"name"}, exclude_none=True)
            merged = merge_stage(shared, own)
            merged["train"] = {**merged["train"], "out_dir": str(folders[i]), "resume": True}
            if i > 0:
                merged["model"] = {**merged["model"], "path": str(folders[i - 1] / "final")}
            try:
                configs.append(FinetuneConfig.from_dict(merged))
            except ConfigError as err:
                raise ConfigError(f"stage {i + 1} ({stage.name}): {err}") from None
        return configs


@dataclass
class PipelineResult:
    out_dir: Path
    final: Path | None  # the last stage's final model (None when stopped before it)
    results: dict[str, FinetuneResult] = field(default_factory=dict)  # stages run now
    skipped: list[str] = field(default_factory=list)  # stages finished by an earlier invocation
    stopped: bool = False  # `stop_at` ended this invocation mid-stage


def _finished(folder: Path, cfg: FinetuneConfig, number: int, name: str) -> bool:
    """Whether the stage in `folder` is finished (its final/ exists) with this configuration."""
    if not (folder / "final").is_dir():
        return False
    stored_path = folder / "config.yaml"
    stored = yaml.safe_load(stored_path.read_text()) if stored_path.is_file() else None
    changes = config_changes(stored or {}, cfg.to_dict())
    if changes:
        listed = ", ".join(f"{k} ({v[0]!r} -> {v[1]!r})" for k, v in changes.items())
        raise UsageError(
            f"stage {number} ({name}) finished in {folder} with another configuration: {listed}; "
            "set train.overwrite=true to rerun every stage, or use another train.out_dir"
        )
    return True


def run_pipeline(cfg: PipelineConfig, *, stop_at: tuple[int, int] | None = None) -> PipelineResult:
    """Run the stages in order, skipping finished ones and resuming the running one.

    `stop_at=(stage, step)` (stage counted from 1) ends the invocation after that optimizer step
    of that stage with a checkpoint, as a pre-empted job would; calling again continues it."""
    if stop_at is not None and not 1 <= stop_at[0] <= len(cfg.stages):
        raise ValueError(f"stop_at stage {stop_at[0]} is not one of 1..{len(cfg.stages)}")
    configs = cfg.stage_configs()
    folders = cfg.stage_dirs()
    with lock_run_folder(cfg.train.out_dir) as root:
        remove_temp_leftovers(root)
        if cfg.train.overwrite:
            doomed = [p for p in root.iterdir() if p.name == PIPELINE_FILE or _stage_folder(p)]
            trash = root / ".replaced-pipeline.tmp"
            trash.mkdir()
            for path in doomed:
                os.rename(path, trash / path.name)
            shutil.rmtree(trash)
        cfg.to_yaml(root / PIPELINE_FILE)
        result = PipelineResult(out_dir=root, final=None)
        for number, (stage, stage_cfg, folder) in enumerate(
            zip(cfg.stages, configs, folders, strict=True), 1
        ):
            if _finished(folder, stage_cfg, number, stage.name):
                result.skipped.append(stage.name)
                continue
            stop = stop_at[1] if stop_at is not None and stop_at[0] == number else None
            outcome = finetune(stage_cfg, stop_at=stop, merged_final=True)
            result.results[stage.name] = outcome
            if outcome.stopped:
                result.stopped = True
                return result
        result.final = folders[-1] / "final"
        return result


def _stage_folder(path: Path) -> bool:
    return path.is_dir() and re.fullmatch(r"\d+-" + _STAGE_NAME.pattern, path.name) is not None
