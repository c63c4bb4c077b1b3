"""The masked-diffusion objective: noise statistics, unbiasedness of the 1/t-weighted loss (its
expectation over the noise is the plain cross-entropy for a model that ignores its input), SFT
prompt handling and normalisation, Dream's shift, and that a tiny model learns with it."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layerwise.train.mdm import forward_process, masked_diffusion_loss, mdm_loss

V, MASK = 11, 10


class InputBlind(nn.Module):
    """Fixed logits per position, whatever the input: E_noise[loss] is then computable by hand."""

    def __init__(self, length: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(length, V, generator=gen) * 2)
        self.config = SimpleNamespace(mask_token_id=MASK, logit_shift=0)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[None].expand(input_ids.shape[0], -1, -1))


def test_forward_process_masks_at_rate_p():
    ids = torch.zeros(4000, 64, dtype=torch.long)
    noisy, masked, p = forward_process(
        ids, MASK, eps=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(noisy == MASK, masked)
    assert float(p.min()) >= 0.1 and float(p.max()) <= 1.0
    assert torch.all(p == p[:, :1])  # one noise level per sequence
    # fraction masked in a row vs its p: unbiased, and on average p = (1 + eps) / 2
    assert abs(float((masked.float().mean(1) - p[:, 0]).mean())) < 0.005
    assert abs(float(masked.float().mean()) - 0.55) < 0.01


def test_loss_is_an_unbiased_estimate_of_cross_entropy():
    # E[1{masked} / p] = 1 per token, so E[loss] = mean over positions of CE(table_l, x_l).
    length = 8
    model = InputBlind(length)
    ids = torch.randint(0, MASK, (1, length), generator=torch.Generator().manual_seed(1))
    batch = ids.expand(20000, -1)
    loss = masked_diffusion_loss(
        model, batch, MASK, eps=0.2, generator=torch.Generator().manual_seed(2)
    )
    want = F.cross_entropy(model.table, ids[0])
    assert abs(loss.item() - want.item()) < 0.02 * want.item()
    loss.backward()
    assert model.table.grad is not None and model.table.grad.abs().sum() > 0


def test_sft_never_masks_the_prompt_and_averages_each_answer():
    length = 6
    model = InputBlind(length, seed=3)
    ids = torch.randint(0, MASK, (2, length), generator=torch.Generator().manual_seed(4))
    prompts = torch.tensor([2, 4])
    rows = torch.cat([ids[:1].expand(10000, -1), ids[1:].expand(10000, -1)])
    loss = masked_diffusion_loss(model, rows, MASK, eps=0.2, prompt_lengths=prompts.repeat_interleave(10000),
                                 generator=torch.Generator().manual_seed(5))  # fmt: skip
    ce = F.cross_entropy(model.table[None].expand(2, -1, -1).reshape(-1, V), ids.reshape(-1),
                         reduction="none").reshape(2, length)  # fmt: skip
    # (1/B) sum_b mean over the answer of b
    want = (ce[0, 2:].mean() + ce[1, 4:].mean()) / 2
    assert abs(loss.item() - want.item()) < 0.02 * want.item()
    seen = []

    class Spy(InputBlind):
        def forward(self, input_ids, attention_mask=None):
            seen.append(input_ids)
            return super().forward(input_ids)

    masked_diffusion_loss(Spy(length), ids, MASK, prompt_lengths=prompts)
    assert not (seen[0][0, :2] == MASK).any() and not (seen[0][1, :4] == MASK).any()


def test_dream_shift_scores_token_l_with_output_l_minus_1():
    # a model whose output at l predicts token l + 1 perfectly: ~0 loss with shift 1, large without
    ids = torch.randint(0, MASK, (64, 10), generator=torch.Generator().manual_seed(6))

    class NextToken(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            logits = torch.full((*ids.shape, V), -30.0)
            logits[:, :-1].scatter_(-1, ids[:, 1:, None], 30.0)
            return SimpleNamespace(logits=logits)

    seen = []

    class Spy(NextToken):
        def forward(self, input_ids, attention_mask=None):
            seen.append(input_ids)
            return super().forward(input_ids)

    assert float(masked_diffusion_loss(Spy(), ids, MASK, logit_shift=1)) < 1e-6
    assert not (seen[0][:, 0] == MASK).any()  # position 0 has no output to score it
    assert float(masked_diffusion_loss(NextToken(), ids, MASK, logit_shift=0)) > 1.0


def test_mdm_loss_reads_the_config_and_errors_name_the_fix():
    model = InputBlind(5)
    ids = torch.randint(0, MASK, (3, 5))
    torch.manual_seed(0)
    a = mdm_loss(model, ids)
    torch.manual_seed(0)
    assert torch.equal(a, masked_diffusion_loss(model, ids, MASK))
    model.config = SimpleNamespace()
    with pytest.raises(ValueError, match="mask_token_id"):
        mdm_loss(model, ids)
    with pytest.raises(ValueError, match="mask id"):
        masked_diffusion_loss(InputBlind(5), torch.full((1, 5), MASK), MASK)


def test_a_tiny_bidirectional_model_learns_to_unmask():
    from layerwise_core import set_seed
    from layerwise_core.tiny_models import tiny_bidirectional

    set_seed(0)
    model = tiny_bidirectional(seed=0, vocab_size=16).train()
    # one sequence repeated: the loss on the same noise draws must fall as the model learns it
    ids = torch.randint(0, 15, (1, 12)).expand(16, -1)

    def held_out():
        with torch.no_grad():
            return mdm_loss_with(model, ids, torch.Generator().manual_seed(123)).item()

    before = held_out()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        loss = mdm_loss(model, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_out() < 0.75 * before


def mdm_loss_with(model, ids, generator):
    return masked_diffusion_loss(model, ids, int(model.config.mask_token_id), generator=generator)


class _Blocks:
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def gather(self, index):
        return self.data[list(index)]


def test_validation_uses_fixed_noise_and_the_loss():
    from layerwise.train.mdm import mdm_validation

    model = InputBlind(6)
    data = torch.randint(0, MASK, (5, 6), generator=torch.Generator().manual_seed(7))
    first = mdm_validation(model, _Blocks(data), batch_size=5)
    assert first == mdm_validation(model, _Blocks(data), batch_size=5)  # same masks every time
    want = masked_diffusion_loss(model, data, MASK, generator=torch.Generator().manual_seed(0))
    assert abs(first.loss - want.item()) < 1e-6 and first.tokens == 30
