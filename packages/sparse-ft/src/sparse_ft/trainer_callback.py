"""`SparseFTCallback`: a Hugging Face `Trainer` calls `after_optimizer_step` after each step.

Loaded on first use (`sparse_ft.SparseFTCallback` goes through the package's `__getattr__`):
subclassing `transformers.TrainerCallback` imports the Trainer machinery (and peft and accelerate
when they are installed), seconds that `import sparse_ft` should not cost.
"""

from __future__ import annotations

from transformers import TrainerCallback

from sparse_ft.sparse_model import SparseFTModel

__all__ = ["SparseFTCallback"]


class SparseFTCallback(TrainerCallback):
    """HF `Trainer` callback: calls `model.after_optimizer_step(optimizer)` after each step.

    trainer = Trainer(model=sparse_model, ..., callbacks=[SparseFTCallback(sparse_model)])
    """

    def __init__(self, model: SparseFTModel):
        self.model = model

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.model.after_optimizer_step(optimizer)
        return control
