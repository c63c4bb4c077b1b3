"""`layerwise finetune` with `objective: mdm`: LLaDA's SFT loss on the collated batch (prompt never
masked, EOS padding trained), end to end on NAP data with a tiny bidirectional model."""

from __future__ import annotations

import pytest
import torch

from layerwise.finetune import FinetuneConfig, collate, finetune, format_prompt, write_jsonl
from layerwise.finetune.nap_data import arithmetic_nap_records, structure_tokens
from layerwise.finetune.pipeline import mdm_sft_loss
from layerwise.train.mdm import masked_diffusion_loss
from layerwise_core import load_pretrained
from layerwise_core.tiny_models import tiny_bidirectional


class _Recorder(torch.nn.Module):
    """Uniform logits; keeps every noisy input it was given."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.seen = vocab, []
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids=None, **_):
        self.seen.append(input_ids.clone())
        logits = self.anchor + torch.zeros(*input_ids.shape, self.vocab)
        return type("Out", (), {"logits": logits})()


def test_prompt_is_never_masked_and_eos_padding_is_trained():
    eos, mask = 8, 9
    # prompt 3 + answer 2 (+ EOS), and prompt 2 + answer 4 (+ EOS): the first row is padded by 2
    examples = [([1, 2, 3, 4, 5, eos], [-100] * 3 + [4, 5, eos]),
                ([1, 2, 6, 6, 6, 6, eos], [-100] * 2 + [6, 6, 6, 6, eos])]  # fmt: skip
    batch = collate(examples, pad_id=eos)
    assert batch["input_ids"][0].tolist() == [1, 2, 3, 4, 5, eos, eos]
    model = _Recorder(10)
    for seed in range(60):
        mdm_sft_loss(model, batch, mask, generator=torch.Generator().manual_seed(seed))
    masked = torch.stack([x == mask for x in model.seen])  # (60, 2, 7)
    assert not masked[:, 0, :3].any() and not masked[:, 1, :2].any()  # the prompts
    assert masked[:, 0, 6].any()  # the padding EOS is masked (trained) sometimes
    # the same draws as the objective with the prompt lengths written by hand
    ours = mdm_sft_loss(model, batch, mask, generator=torch.Generator().manual_seed(7))
    ref = masked_diffusion_loss(model, batch["input_ids"], mask, prompt_lengths=torch.tensor([3, 2]),
                                generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert torch.equal(ours, ref)


@pytest.fixture(scope="module")
def nap_run_files(tmp_path_factory):
    from layerwise.data import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("finetune-mdm")
    pairs = [(a, b) for a in range(10, 90, 7) for b in range(11, 90, 13)][:32]
    records = arithmetic_nap_records(pairs, trajectories=2, seed=0)
    write_jsonl(records, root / "train.jsonl")
    texts = [format_prompt(r["instruction"]) + r["answer"] for r in records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=320, min_frequency=1, quiet=True)
    tokenizer.add_special_tokens({"additional_special_tokens": structure_tokens()})
    model = tiny_bidirectional(
        seed=0, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
        max_position_embeddings=512,
    )  # fmt: skip
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def _config(root, **extra):
    return FinetuneConfig.from_dict(
        {
            "model": {"path": str(root / "model")},
            "data": {"train": str(root / "train.jsonl"), "max_length": 128},
            "method": "full",
            "objective": "mdm",
            "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
            "schedule": {"warmup_ratio": 0.1},
            "train": {"steps": 16, "batch_size": 4, "log_every": 4, "out_dir": str(root / "run")},
            **extra,
        }
    )


def test_mdm_finetune_end_to_end_on_nap_data(nap_run_files):
    result = finetune(_config(nap_run_files))
    losses = result.train_losses
    assert len(losses) == 16 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4  # the diffusion loss goes down
    # the saved model loads back through its Auto class and scores like the trained one
    saved = load_pretrained(nap_run_files / "run" / "final").eval()
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trained = result.model.eval()(input_ids=ids).logits
        assert torch.allclose(saved(input_ids=ids).logits, trained, atol=1e-5)
    assert saved.config.mask_token_id is not None


def test_mdm_refuses_the_left_to_right_evaluation(nap_run_files):
    with pytest.raises(ValueError, match="layerwise eval decode"):
        _config(nap_run_files, data={"train": "x.jsonl", "eval": "y.jsonl"})
