"""`objective: mdm` trains a bidirectional masked-diffusion Llama with the tokenizer's [MASK] id,
validates with the masked-diffusion bound, and saves a model that reloads (AutoModelForMaskedLM)."""

import torch

from layerwise.train import pretrain, read_metrics


def test_mdm_objective_trains_a_bidirectional_model(small_data, tmp_path, tiny_run):
    cfg = tiny_run(
        tmp_path / "run",
        "objective=mdm",
        "train.steps=30",
        "train.eval_every=15",
        "schedule.warmup_steps=3",
    )
    pretrain(cfg, data=small_data)
    from transformers import AutoModelForMaskedLM

    import layerwise_core.tiny_models as tiny

    tiny.BidirectionalLlamaConfig  # noqa: B018 - registers the model type with the Auto classes
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "final").eval()
    assert model.config.mask_token_id == small_data.tokenizer.get_vocab()["[MASK]"]
    assert model.config.logit_shift == 0
    ids = small_data.validation[0][None, :16]
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 100
    with torch.no_grad():  # bidirectional: the first position sees the last token
        assert not torch.allclose(model(ids).logits[0, 0], model(changed).logits[0, 0])
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if r["split"] == "validation"]
    assert len(losses) == 2 and losses[-1] < losses[0]
