"""`SparseFTCallback`: the HF Trainer hook, loaded lazily so `import sparse_ft` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import TrainerCallback, TrainerControl, TrainerState

import sparse_ft


class _Recorder:
    """Stands in for a SparseFTModel: records the optimizer each hook call passes."""

    def __init__(self):
        self.calls = []

    def after_optimizer_step(self, optimizer):
        self.calls.append(optimizer)


def test_step_end_calls_after_optimizer_step_with_the_trainers_optimizer():
    model, optimizer, control = _Recorder(), object(), TrainerControl()
    callback = sparse_ft.SparseFTCallback(model)
    assert isinstance(callback, TrainerCallback)
    for _ in range(3):
        assert callback.on_step_end(None, TrainerState(), control, optimizer=optimizer) is control
    assert model.calls == [optimizer] * 3


def test_import_sparse_ft_does_not_load_the_trainer_machinery():
    code = (
        "import sys, sparse_ft\n"
        "before = 'transformers.trainer_callback' in sys.modules\n"
        "sparse_ft.SparseFTCallback\n"
        "print(before, 'transformers.trainer_callback' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_unknown_attribute_still_raises():
    with pytest.raises(AttributeError, match="SparseFTCallbak"):
        sparse_ft.SparseFTCallbak  # noqa: B018
