"""`MEAPTrainerCallback`: keeps a `MEAPCollator` in step with a Hugging Face `Trainer`.

The Trainer collates the micro-batches of an optimizer step before it runs them (and
`accelerate` prefetches one batch ahead), so the collator cannot read the step from the trainer
state at collation time; it counts its training batches instead, and this callback keeps the count
right: on train begin (fresh or resumed) and at every epoch start it sets the collator to
`state.global_step` with `args.gradient_accumulation_steps` micro-batches per step; it switches
masking off for the evaluations the Trainer runs during training (which reuse the same collator)
and for anything after training.
"""

from __future__ import annotations

from transformers import TrainerCallback

from meap.collators import MEAPCollator

__all__ = ["MEAPTrainerCallback"]


class MEAPTrainerCallback(TrainerCallback):
    """`Trainer(..., data_collator=collator, callbacks=[MEAPTrainerCallback(collator)])`."""

    def __init__(self, collator: MEAPCollator):
        if not isinstance(collator, MEAPCollator):
            raise TypeError(
                f"MEAPTrainerCallback needs a MEAPCollator, got {type(collator).__name__}"
            )
        self.collator = collator
        self._training = False
        collator.eval()  # evaluate()/predict() before train() see unmasked inputs

    def _sync(self, args, state) -> None:
        if args.dataloader_num_workers:
            raise ValueError(
                "MEAPCollator counts optimizer steps in the training process: set "
                "TrainingArguments(dataloader_num_workers=0)"
            )
        self.collator.micro_batches_per_step = args.gradient_accumulation_steps
        self.collator.set_step(state.global_step)

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        self._sync(args, state)
        self.collator.train(not args.eval_on_start)  # eval_on_start evaluates right after this

    def on_epoch_begin(self, args, state, control, **kwargs):
        # an epoch whose batch count is not a multiple of the accumulation ends on a short step
        self._sync(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            self.collator.eval()

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_evaluate:
            self.collator.eval()

    def on_evaluate(self, args, state, control, **kwargs):
        self.collator.train(self._training)

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        self.collator.eval()
