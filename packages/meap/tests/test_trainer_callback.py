"""MEAPTrainerCallback with a real Hugging Face Trainer: masks follow the optimizer step."""

from __future__ import annotations

import torch

from layerwise_core import tiny_llama
from meap import MEAPCollator, MEAPTrainerCallback

MASK = 127  # last id of the tiny models' vocabulary of 128


def test_hf_trainer_masks_by_optimizer_step_and_never_at_evaluation(tmp_path, official_inputs):
    """A real Trainer: accumulation 2, an epoch of 5 micro-batches (uneven), eval every 2 steps."""
    from transformers import Trainer, TrainingArguments

    seen = []

    class RecordingTrainer(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append(
                (
                    model.training,
                    self.state.global_step,
                    inputs["input_ids"].clone(),
                    inputs["labels"].clone(),
                )
            )
            return super().compute_loss(model, inputs, *args, **kwargs)

    data = torch.randint(0, MASK, (10, 17), generator=torch.Generator().manual_seed(4))
    train = [{"input_ids": row.tolist()} for row in data]
    collator = MEAPCollator(MASK, mask_ratio=0.2)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=2,
        gradient_accumulation_steps=2, max_steps=6, eval_strategy="steps", eval_steps=2,
        logging_steps=100, save_strategy="no", report_to=[], use_cpu=True, learning_rate=1e-3,
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = RecordingTrainer(
        model=tiny_llama(seed=0), args=args, train_dataset=train, eval_dataset=train[:4],
        data_collator=collator, callbacks=[MEAPTrainerCallback(collator)],
    )  # fmt: skip
    trainer.train()
    training = [s for s in seen if s[0]]
    evaluation = [s for s in seen if not s[0]]
    assert {step for _, step, _, _ in training} == set(range(6))
    assert len(training) == 10 and len(evaluation) == 3 * 2
    for _, step, ids, labels in training:
        expected = official_inputs(labels, 0.2, step)  # labels are the clean rows
        assert torch.equal(ids[:, :16], expected), f"step {step}"
    for _, _, ids, labels in evaluation:
        assert torch.equal(ids, labels)  # validation is unmasked
    assert not collator.training  # nothing after training is masked
