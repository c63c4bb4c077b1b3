"""Export of a static LIFT delta to PEFT's SHiRA adapter: same outputs; refusals name the fix."""

import pytest
import torch

from layerwise_core import tiny_llama
from sparse_ft import LiftConfig, get_sparse_model, to_shira

pytest.importorskip("peft.tuners.shira", reason="SHiRA needs peft >= 0.17 (the [peft] extra)")


def test_static_lift_delta_exports_to_shira():
    sparse = get_sparse_model(
        tiny_llama(seed=1), LiftConfig(lora_rank=1, filter_rank=2, update_interval=None)
    )
    with torch.no_grad():
        for module in sparse.trainable_parameters():
            module.copy_(
                torch.randn(module.shape, generator=torch.Generator().manual_seed(0)) * 0.1
            )
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    want = sparse(input_ids=ids).logits
    peft_model = to_shira(sparse)
    torch.testing.assert_close(peft_model(input_ids=ids).logits, want, rtol=1e-5, atol=1e-6)


def test_refreshed_delta_is_refused():
    sparse = get_sparse_model(tiny_llama(seed=1), LiftConfig(lora_rank=1, filter_rank=2))
    opt = torch.optim.AdamW(sparse.trainable_parameters(), lr=0.1)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    sparse(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sparse.refresh_masks(opt)
    with pytest.raises(ValueError, match="save_pretrained"):
        to_shira(sparse)
