"""Training loops: pre-training (next-token prediction) on DDP / FSDP2, checkpoints, metrics."""

from layerwise.models import build_model, load_saved_model, load_trained_model
from layerwise.train.checkpoint import (
    LoadedCheckpoint,
    export_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_training_state,
    read_model_state,
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
    "export_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_saved_model",
    "load_trained_model",
    "load_training_state",
    "pretrain",
    "read_metrics",
    "read_model_state",
    "save_checkpoint",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
