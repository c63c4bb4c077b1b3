"""Training loops: pre-training (next-token prediction) on accelerate, checkpoints, metrics."""

from layerwise.models import build_model, load_saved_model, load_trained_model
from layerwise.train.checkpoint import (
    LoadedCheckpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from layerwise.train.config import (
    DataConfig,
    ModelConfig,
    PretrainConfig,
    ScheduleConfig,
    TrainConfig,
)
from layerwise.train.metrics import MetricsLog, read_metrics
from layerwise.train.pretrain import PretrainResult, pretrain
from layerwise.train.schedule import warmup_cosine, warmup_cosine_scheduler

__all__ = [
    "DataConfig",
    "LoadedCheckpoint",
    "MetricsLog",
    "ModelConfig",
    "PretrainConfig",
    "PretrainResult",
    "ScheduleConfig",
    "TrainConfig",
    "build_model",
    "latest_checkpoint",
    "load_checkpoint",
    "load_saved_model",
    "load_trained_model",
    "pretrain",
    "read_metrics",
    "save_checkpoint",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
