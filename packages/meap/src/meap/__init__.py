"""meap: Mask-Enhanced Autoregressive Prediction (Zhuang et al., arXiv 2502.07490, ICML 2025).

Next-token prediction on inputs with a fraction of the positions replaced by [MASK], targets clean:

    x~_t = [MASK] if t in M else x_t,   L = -(1/T) sum_t log p(x_{t+1} | x~_{<=t})

    mask_token_id = meap.add_mask_token(tokenizer, model)
    collator = meap.MEAPCollator(mask_token_id, mask_ratio=0.15)        # pre-training batches
    inputs = meap.mask_inputs(blocks[:, :-1], 0.15, mask_token_id, step)  # or in your own loop
    inputs = meap.MEAPConfig(mask_ratio=0.15).masked_inputs(blocks[:, :-1], mask_token_id, step)
"""

from meap.__about__ import __version__
from meap.attention_entropy import attention_entropy
from meap.collators import IGNORE_INDEX, MEAPCollator, MEAPSFTCollator, pad_batch
from meap.config import MEAPConfig
from meap.input_masking import MaskMode, mask_inputs, masked_positions, reference_mask_positions
from meap.mask_token import add_mask_token
from meap.sft import sft_examples


def __getattr__(name: str):
    # the Trainer callback imports transformers' Trainer machinery: load it on first use
    if name == "MEAPTrainerCallback":
        from meap.trainer_callback import MEAPTrainerCallback

        return MEAPTrainerCallback
    raise AttributeError(f"module 'meap' has no attribute {name!r}")


__all__ = [
    "IGNORE_INDEX",
    "MEAPCollator",
    "MEAPConfig",
    "MEAPSFTCollator",
    "MEAPTrainerCallback",
    "MaskMode",
    "__version__",
    "add_mask_token",
    "attention_entropy",
    "mask_inputs",
    "masked_positions",
    "pad_batch",
    "reference_mask_positions",
    "sft_examples",
]
