"""`objective: meap` in the pre-training loop: the inputs the model sees are masked exactly as
`meap.mask_inputs` / `meap.masked_positions` say, targets stay clean, and 2 micro-batches see the
same masks as one batch of the same rows."""

import pytest
import torch

import meap
from layerwise.train import pretrain


@pytest.mark.parametrize("mode", ["reference", "per_sequence"])
def test_meap_objective_masks_inputs_as_specified(
    small_data, tmp_path, tiny_run, monkeypatch, mode
):
    seen = []
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.forward

    def spy(self, input_ids=None, **kwargs):
        if self.training:
            seen.append(input_ids.clone())
        return original(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", spy)
    cfg = tiny_run(
        tmp_path / mode,
        "objective=meap",
        f"objective.mask_mode={mode}",
        "objective.mask_ratio=0.25",
        "train.steps=2",
        "train.grad_accum=2",
        "schedule.warmup_steps=1",
    )
    pretrain(cfg, data=small_data)
    mask_id = small_data.tokenizer.convert_tokens_to_ids("[MASK]")
    assert len(seen) == 4  # 2 steps x 2 micro-batches
    for index, inputs in enumerate(seen):
        step, micro = divmod(index, 2)
        masked = inputs == mask_id
        assert masked.shape[1] == 64  # blocks of 65 tokens: 64 inputs, targets the clean shift
        assert not masked[:, -1].any()
        if mode == "reference":
            expected = meap.masked_positions(
                torch.empty(4, 64, dtype=torch.long), 0.25, step, "reference"
            )
        else:
            expected = meap.masked_positions(
                torch.empty(8, 64, dtype=torch.long), 0.25, step, "per_sequence", seed=0
            )[micro * 4 : micro * 4 + 4]
        assert torch.equal(masked, expected.bool()), (step, micro)
