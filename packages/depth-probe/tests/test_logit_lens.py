import pytest
import torch
from torch.nn import functional as F

from depth_probe import capture_depth, logit_lens
from layerwise_core import tiny_bidirectional, tiny_llama


def _manual(model, hidden, final_logits, targets, valid):
    """Plain per-layer, per-token logit lens, written from the definitions."""
    kl, agree, ranks = [], [], []
    q = final_logits.log_softmax(-1)
    for h in hidden:
        p = model.lm_head(model.model.norm(h)).log_softmax(-1)
        kl.append((q.exp() * (q - p)).sum(-1).mean().item())
        agree.append((p.argmax(-1) == q.argmax(-1)).float().mean().item())
        layer_ranks = []
        for b in range(h.shape[0]):
            for t in range(h.shape[1]):
                if valid[b, t]:
                    order = torch.argsort(p[b, t], descending=True)
                    layer_ranks.append(1 + (order == targets[b, t]).nonzero().item())
        ranks.append(torch.tensor(layer_ranks, dtype=torch.float).median().item())
    return kl, agree, ranks


def test_matches_a_plain_computation_and_ends_at_the_models_own_output():
    model = tiny_llama(num_hidden_layers=3)
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.5, 2.0)
    ids = torch.randint(0, 128, (2, 7))
    lens = logit_lens(model, ids, chunk_size=5)  # chunks cut across rows
    capture = capture_depth(model, ids)
    targets = torch.zeros_like(ids)
    targets[:, :-1] = ids[:, 1:]
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[:, -1] = False
    with torch.no_grad():
        kl, agree, ranks = _manual(
            model, capture.hidden_states, capture.stream.logits, targets, valid
        )
    torch.testing.assert_close(lens.kl, torch.tensor(kl), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lens.top1_agreement, torch.tensor(agree))
    torch.testing.assert_close(lens.target_rank, torch.tensor(ranks))
    assert lens.kl[-1].item() == pytest.approx(0.0, abs=1e-6)
    assert lens.top1_agreement[-1].item() == 1.0
    assert lens.kl.shape == (4,)


def test_masked_diffusion_targets_are_the_tokens_themselves_and_padding_is_skipped():
    model = tiny_bidirectional(num_hidden_layers=2)
    ids = torch.randint(0, 120, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    lens = logit_lens(model, ids, mask)
    capture = capture_depth(model, ids, mask)
    with torch.no_grad():
        final = capture.stream.logits[mask.bool()]
        last = model.lm_head(model.model.norm(capture.hidden_states[-1][mask.bool()]))
    torch.testing.assert_close(last, final, atol=1e-5, rtol=1e-5)
    accuracy = (final.argmax(-1) == ids[mask.bool()]).float().mean()
    assert lens.target_accuracy[-1].item() == pytest.approx(accuracy.item())
    kl0 = F.kl_div(
        model.lm_head(model.model.norm(capture.hidden_states[0][mask.bool()])).log_softmax(-1),
        final.log_softmax(-1),
        log_target=True,
        reduction="batchmean",
    )
    assert lens.kl[0].item() == pytest.approx(kl0.item(), rel=1e-5)


def test_needs_the_model_not_just_a_stream(stream_from_hidden):
    with pytest.raises(ValueError, match="final norm and head"):
        logit_lens(stream_from_hidden([torch.zeros(1, 2, 4)] * 3))


def test_max_tokens_decodes_an_evenly_spaced_subset():
    model = tiny_llama(num_hidden_layers=2)
    ids = torch.randint(0, 128, (1, 9))
    capture = capture_depth(model, ids)
    sub = logit_lens(capture, max_tokens=3)  # tokens 0, 4, 8
    with torch.no_grad():
        q = capture.stream.logits[0, [0, 4, 8]].log_softmax(-1)
        for layer, h in enumerate(capture.hidden_states):
            p = model.lm_head(model.model.norm(h[0, [0, 4, 8]])).log_softmax(-1)
            kl = (q.exp() * (q - p)).sum(-1).mean()
            assert sub.kl[layer].item() == pytest.approx(kl.item(), abs=1e-5)
    full = logit_lens(capture, max_tokens=9)
    torch.testing.assert_close(full.kl, logit_lens(capture).kl)
