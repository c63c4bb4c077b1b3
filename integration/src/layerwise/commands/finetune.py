"""`layerwise finetune --config FILE.yaml [KEY=VALUE ...]`: fine-tune a HF causal LM on
instruction JSON lines (full | lora | lift | seft; objective ntp | mdm | kd | grpo), or run a
stage pipeline when the file has `stages:` (each stage starts from the previous one's merged
model; finished stages are skipped, the running one resumes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from layerwise.commands import config_file_arguments
from layerwise.finetune import FinetuneConfig, PipelineConfig, finetune, run_pipeline

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = FinetuneConfig
EXAMPLE = "method=seft optimizer.lr=1e-4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and overrides."""
    config_file_arguments(parser, f"{CONFIG.__name__} (or PipelineConfig, with stages:)")


def _has_stages(path: str) -> bool:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # from_yaml reports a missing or broken file in its own words
    return isinstance(data, dict) and "stages" in data


def _summary(result) -> str:
    line = (
        f"{result.method}: {result.steps} steps, {result.trainable_parameters:,} trainable "
        f"parameters, final loss {result.train_losses[-1]:.4f}"
    )
    if result.eval is not None:
        line += (
            f", math accuracy {result.eval.accuracy:.1%} "
            f"({result.eval.correct}/{result.eval.total})"
        )
    return f"{line} ({result.out_dir})"


def run(args: argparse.Namespace) -> int:
    """Fine-tune (or run the pipeline); prints steps, trainable parameters, final loss and the
    math accuracy of each run."""
    if _has_stages(args.config):
        pipeline = PipelineConfig.from_yaml(args.config, overrides=args.overrides)
        outcome = run_pipeline(pipeline)
        for name in outcome.skipped:
            print(f"stage {name}: finished earlier, skipped")
        for name, result in outcome.results.items():
            print(f"stage {name}: {_summary(result)}")
        print(f"final model: {outcome.final}")
        return 0
    cfg = FinetuneConfig.from_yaml(args.config, overrides=args.overrides)
    print(_summary(finetune(cfg)))
    return 0
