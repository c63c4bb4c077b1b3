"""`StudyConfig`: one YAML describes a controlled study, named runs x seeds of one base run.

    name: dlm-vs-ar
    base: {data: ..., model: ..., train: {steps: 976, ...}}   # a PretrainConfig mapping
    seeds: [0, 1, 2]                                          # train.seed of every run
    runs:                                                     # name -> what differs from base
      ar-lr1e-3: {overrides: [objective=ntp, optimizer.lr=1e-3], tags: {family: ar, lr: 1e-3}}
      dlm-lr1e-3: {overrides: [objective=mdm, optimizer.lr=1e-3], tags: {family: dlm, lr: 1e-3}}
    checkpoints: [0.25, 0.5, 1.0]                             # fractions of train.steps analysed
    analyses:                                                 # label -> a stage (tagged choice)
      loss: loss
      wanda: {name: wanda, sparsity: 0.5, epsilons: [0.05, 0.1, 0.2]}
    analyses_at: {wanda: [0.5, 1.0]}                          # default: every checkpoint
    probe: {calibration_windows: 64, eval_windows: 64}        # the windows every stage reads
    report: {group_by: family, pair: {tag: family, a: dlm, b: ar}}

Run `r` with seed `s` is `base` + `runs[r].overrides` + `train.seed=s`, trained in its own folder
`<study>/runs/<r>-s<s>` (`layerwise.studies.runner`); the runner sets `train.out_dir`,
`train.save_every` (so that a checkpoint falls on every fraction) and `train.keep_last: null`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, field_validator, model_validator

from layerwise.studies.claims import ClaimConfig
from layerwise.studies.stages import ANALYSES
from layerwise.studies.versus import VersusConfig
from layerwise.train.config import PretrainConfig
from layerwise_core import ConfigError, LayerwiseConfig, tagged_choice

__all__ = ["PairConfig", "ProbeDataConfig", "ReportConfig", "RunSpec", "StudyConfig"]

# what the runner decides for every run (an override of these is refused)
RUNNER_FIELDS = ("train.out_dir", "train.seed", "train.save_every", "train.keep_last")


class RunSpec(LayerwiseConfig):
    """One named run of a study: its overrides of the base config, its seeds, its tags."""

    overrides: list[str] = Field(default_factory=list)  # dotted KEY=VALUE over `base`
    seeds: list[int] | None = None  # None: the study's `seeds`
    # labels the report groups and pairs runs by (e.g. {family: ar, lr: "1e-3"})
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_as_text(cls, value: Any) -> Any:
        # YAML reads `lr: 1e-3` as a string and `lr: 0.001` as a float: tags are labels, as text
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


class ProbeDataConfig(LayerwiseConfig):
    """The windows every analysis stage reads (spec B.7: 64 windows x 256 tokens)."""

    # calibration (pruning, quantisation, activation statistics): the first N training blocks
    calibration_windows: int = Field(64, ge=1)
    eval_windows: int = Field(64, ge=1)  # loss: the first N validation blocks
    # tokens per window; None: the run's train.block_size. Set it where runs differ in context
    # length (spec A.8: 128-token windows for every arm)
    window_tokens: int | None = Field(None, ge=2)
    batch_size: int = Field(8, ge=1)  # windows per forward pass
    # a masked-diffusion model's loss: the fixed-mask ELBO at these masking rates t (the masks
    # drawn once from `mask_seed`, the same before and after an intervention); its `loss` is
    # their mean
    mdm_t: list[float] = Field(default_factory=lambda: [0.15, 0.5, 0.85])
    mdm_copies: int = Field(4, ge=1)  # masked copies per window where a stage probes activations
    mask_seed: int = Field(0, ge=0)

    @field_validator("mdm_t")
    @classmethod
    def _rates(cls, value: list[float]) -> list[float]:
        if not value or not all(0.0 < t <= 1.0 for t in value):
            raise ValueError("needs one or more masking rates t in (0, 1], e.g. [0.15, 0.5, 0.85]")
        return value


class PairConfig(LayerwiseConfig):
    """Paired comparison in the report: for every metric, in how many pairs (runs equal in every
    other tag, same seed) is the value of tag=a below that of tag=b."""

    tag: str  # e.g. family
    a: str  # e.g. dlm
    b: str  # e.g. ar


class ReportConfig(LayerwiseConfig):
    """What the report pools and compares (the per-run tables are always there)."""

    group_by: list[str] = Field(default_factory=list)  # tags: one pooled column per value
    pair: PairConfig | None = None
    # keys of the runs' train records (metrics.jsonl) kept as curves in results.json and
    # plotted over training, mean over seeds per run (e.g. a per-layer variance logged in training)
    curves: list[str] = Field(default_factory=list)
    # summary metrics against a numeric tag (e.g. usefulness by depth): layerwise.studies.versus
    versus: VersusConfig | None = None
    # expected directions, each checked per checkpoint (holds / does not hold / not measurable):
    # layerwise.studies.claims
    claims: list[ClaimConfig] = Field(default_factory=list)

    @field_validator("group_by", mode="before")
    @classmethod
    def _one_tag(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class StudyConfig(LayerwiseConfig):
    """A study: named runs x seeds of one base pre-training config, analysis stages, a report."""

    name: str  # the study's name (its folder's default name)
    description: str = ""  # one paragraph: the claim tested, the spec section
    base: dict[str, Any] = Field(default_factory=dict)  # a PretrainConfig as a mapping
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    runs: dict[str, RunSpec] = Field(min_length=1)
    checkpoints: list[float] = Field(default_factory=lambda: [1.0])  # fractions of train.steps
    analyses: dict[str, tagged_choice(ANALYSES)] = Field(default_factory=dict)
    # label -> the fractions of `checkpoints` a stage runs at (default: all of them)
    analyses_at: dict[str, list[float]] = Field(default_factory=dict)
    probe: ProbeDataConfig = Field(default_factory=ProbeDataConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("runs")
    @classmethod
    def _run_names(cls, runs: dict[str, RunSpec]) -> dict[str, RunSpec]:
        for name in runs:
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(
                    f"run name {name!r} is not a folder name: use letters, digits, '-', '_', '.'"
                )
        return runs

    @field_validator("checkpoints")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not value or not all(0.0 < f <= 1.0 for f in value):
            raise ValueError("fractions of train.steps must lie in (0, 1], e.g. [0.25, 0.5, 1.0]")
        return sorted(set(value))

    @model_validator(mode="after")
    def _analyses_at(self) -> StudyConfig:
        for label, fractions in self.analyses_at.items():
            if label not in self.analyses:
                raise ValueError(
                    f"analyses_at names {label!r}, which is not in analyses {list(self.analyses)}"
                )
            if not fractions or not set(fractions) <= set(self.checkpoints):
                raise ValueError(
                    f"analyses_at.{label} = {fractions}: choose fractions among checkpoints "
                    f"{self.checkpoints}"
                )
        return self

    @model_validator(mode="after")
    def _claims(self) -> StudyConfig:
        pair = self.report.pair
        for claim in self.report.claims:
            label = claim.metric.split("/", 1)[0]
            if "/" not in claim.metric or label not in self.analyses:
                raise ValueError(
                    f"report.claims: metric {claim.metric!r} must read <stage label>/<summary "
                    f"metric> with a label of analyses {list(self.analyses)}"
                )
            comparing = claim.expect in ("lower", "higher")
            if comparing and (pair is None or claim.group not in (pair.a, pair.b)):
                raise ValueError(
                    f"report.claims: {claim.text!r} (expect: {claim.expect}) compares the pairs "
                    "of report.pair: set report.pair and `group` to its a or b"
                )
        return self

    def fractions_of(self, label: str) -> list[float]:
        """The checkpoint fractions analysis `label` runs at."""
        return [f for f in self.checkpoints if f in self.analyses_at.get(label, self.checkpoints)]

    @model_validator(mode="after")
    def _runs_build(self) -> StudyConfig:
        for run in self.runs:
            self.pretrain_config(run, self.seeds_of(run)[0])  # every run is a valid config
        for tag in self.report.group_by:
            if not any(tag in spec.tags for spec in self.runs.values()):
                raise ValueError(f"report.group_by names tag {tag!r}, which no run has: add it")
        return self

    def seeds_of(self, run: str) -> list[int]:
        """The seeds run `run` trains with."""
        return self.runs[run].seeds or self.seeds

    def pretrain_config(self, run: str, seed: int, out_dir: str = "runs/study") -> PretrainConfig:
        """The `PretrainConfig` of run `run` at `seed`, trained in `out_dir`."""
        spec = self.runs[run]
        for text in spec.overrides:
            key = text.split("=", 1)[0].strip()
            if key in RUNNER_FIELDS:
                raise ConfigError(
                    f"runs.{run}.overrides sets {key}, which the study runner sets for every run "
                    "(the run folder, seeds, checkpoint cadence): remove it (seeds: `seeds:`)"
                )
        try:
            cfg = PretrainConfig.from_dict(self.base, [*spec.overrides, f"train.seed={seed}"])
        except ConfigError as err:
            raise ConfigError(f"run {run!r}: {err}") from None
        steps = cfg.train.steps
        at = self.checkpoint_steps(steps, where=f"run {run!r}")
        return cfg.with_overrides(
            [
                f"train.out_dir={out_dir}",
                f"train.save_every={math.gcd(*at)}",
                "train.keep_last=null",
            ]
        )

    def checkpoint_steps(self, steps: int, where: str = "the study") -> list[int]:
        """The optimizer steps of `checkpoints` for a run of `steps`: each must be a whole step."""
        out = []
        for fraction in self.checkpoints:
            step = fraction * steps
            if abs(step - round(step)) > 1e-9 or round(step) == 0:
                raise ConfigError(
                    f"{where}: checkpoint fraction {fraction} of train.steps={steps} is not a "
                    "whole step: choose train.steps divisible by the fractions' denominators "
                    "(e.g. a multiple of 4 for 0.25)"
                )
            out.append(round(step))
        return out
