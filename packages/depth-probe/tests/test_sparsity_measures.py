"""Sparsity measures of the sparsity-vs-depth study (spec studies.md A.3.8) against numbers worked
out by hand: attention entropy on fixed probabilities, weight sparsity of planted matrices, expert
load and balance of given selections, and the model paths against HF's own outputs."""

import math

import pytest
import torch
from transformers import LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

import depth_probe as dp
from layerwise_core import llama_config

pytestmark = pytest.mark.usefixtures("one_thread")


def causal_probs(rows: list[list[float]]) -> torch.Tensor:
    """[T, T] causal attention probabilities from the visible part of each query row."""
    t = len(rows)
    out = torch.zeros(t, t, dtype=torch.float64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return out


def test_attention_entropy_by_hand_on_fixed_probabilities():
    uniform = causal_probs([[1.0], [0.5, 0.5], [1 / 3] * 3, [0.25] * 4])
    onehot = causal_probs([[1.0], [1.0, 0.0], [1.0, 0, 0], [1.0, 0, 0, 0]])
    mixed = causal_probs([[1.0], [1.0, 0.0], [0.5, 0.25, 0.25], [0.25] * 4])
    probs = torch.stack([uniform, onehot, mixed]).unsqueeze(0)  # [1, 3 heads, 4, 4]
    stats = dp.attention_entropy_stats(probs, min_query=1)
    assert int(stats["queries"]) == 3  # t = 1, 2, 3
    logs = math.log(2) + math.log(3) + math.log(4)
    h_mixed = 1.5 * math.log(2)
    torch.testing.assert_close(
        stats["entropy"], torch.tensor([logs, 0.0, h_mixed + math.log(4)], dtype=torch.float64)
    )
    torch.testing.assert_close(
        stats["normalized_entropy"],
        torch.tensor([3.0, 0.0, h_mixed / math.log(3) + 1.0], dtype=torch.float64),
    )
    torch.testing.assert_close(
        stats["effective_keys"],
        torch.tensor([9.0, 3.0, 1.0 + math.exp(h_mixed) + 4.0], dtype=torch.float64),
    )
    torch.testing.assert_close(
        stats["density"],
        torch.tensor(
            [3.0, 1 / 2 + 1 / 3 + 1 / 4, 1 / 2 + math.exp(h_mixed) / 3 + 1.0], dtype=torch.float64
        ),
    )
    # top ceil(10%) of t+1 <= 10 keys = the single largest key
    torch.testing.assert_close(
        stats["top_mass"],
        torch.tensor([1 / 2 + 1 / 3 + 1 / 4, 3.0, 1.0 + 0.5 + 0.25], dtype=torch.float64),
    )
    # left padding: the first position is not a token, so query t counts among real tokens
    padded = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    padded[0, 0, 1:, 1:] = uniform
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    left = dp.attention_entropy_stats(padded, mask, min_query=1)
    assert float(left["entropy"][0]) == pytest.approx(logs) and int(left["queries"]) == 3
    with pytest.raises(ValueError, match="min_query"):
        dp.attention_entropy_stats(probs, min_query=4)


def test_attention_sparsity_of_a_model_equals_its_eager_probabilities():
    torch.manual_seed(0)
    config = llama_config("llama-tiny", vocab_size=128, num_hidden_layers=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.model.layers.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3)
    ids = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, -3:] = 0
    before = model.config._attn_implementation
    stats = dp.attention_sparsity(model, ids, mask, min_query=4, batch_size=2)
    assert model.config._attn_implementation == before  # restored
    eager = LlamaForCausalLM(
        llama_config("llama-tiny", vocab_size=128, num_hidden_layers=2, attn_implementation="eager")
    ).eval()
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        attentions = eager(ids, attention_mask=mask, output_attentions=True).attentions
    for layer, probs in enumerate(attentions):
        real = mask.bool()
        entropies, tops = [], []
        for b in range(3):
            for t in range(int(real[b].sum())):
                if t < 4:
                    continue
                row = probs[b, :, t, : t + 1].double()  # [heads, t+1]
                h = -(row * row.log()).sum(-1)
                entropies.append(h / math.log(t + 1))
                k = math.ceil(0.1 * (t + 1))
                tops.append(row.sort(-1, descending=True).values[:, :k].sum(-1))
        expected = torch.stack(entropies).mean()
        assert float(stats.normalized_entropy[layer]) == pytest.approx(float(expected), rel=1e-5)
        assert float(stats.top_mass[layer]) == pytest.approx(
            float(torch.stack(tops).mean()), rel=1e-5
        )
    assert stats.queries == 8 + 8 + 5
    assert (stats.normalized_entropy < 1).all() and (stats.normalized_entropy > 0).all()


def test_weight_sparsity_by_hand():
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("llama-tiny", vocab_size=128, num_hidden_layers=2))
    with torch.no_grad():
        weight = model.model.layers[1].self_attn.o_proj.weight  # [64, 64]
        weight.fill_(1.0)
        weight[:16] = 0.02  # 25% small entries; RMS = sqrt(0.75 + 0.25 * 4e-4)
    stats = dp.weight_sparsity(model, thresholds=(0.01, 0.05, 0.1))
    row = stats.names.index("1.self_attn.o_proj.weight")
    rms = math.sqrt(0.75 + 0.25 * 0.02**2)
    assert 0.05 * rms > 0.02  # so: 0 below 0.01 RMS, 25% below 0.05 and 0.1 RMS
    torch.testing.assert_close(
        stats.values[row], torch.tensor([0.0, 0.25, 0.25], dtype=torch.float64)
    )
    assert stats.layer[row] == 1 and len(stats.names) == 2 * 7  # q k v o gate up down per block
    # every other matrix: a plain loop over its entries
    for name, values in zip(stats.names, stats.values):
        layer, rest = name.split(".", 1)
        w = model.model.layers[int(layer)].get_parameter(rest).detach().flatten().tolist()
        r = math.sqrt(sum(x * x for x in w) / len(w))
        by_hand = [sum(abs(x) < t * r for x in w) / len(w) for t in (0.01, 0.05, 0.1)]
        torch.testing.assert_close(values, torch.tensor(by_hand, dtype=torch.float64))
    torch.testing.assert_close(stats.per_layer[1], stats.values[7:].mean(0))
    torch.testing.assert_close(stats.mean, stats.values.mean(0))


def tiny_mixtral() -> MixtralForCausalLM:
    config = MixtralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config).eval()


def test_expert_load_and_balance_by_hand():
    selections = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 1]])
    counts, load, balance = dp.expert_load_from_selections(selections, 4)
    torch.testing.assert_close(counts, torch.tensor([3.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(load, torch.tensor([3, 3, 1, 1], dtype=torch.float64) / 8)
    assert balance == pytest.approx(0.5)  # std 1/8 over mean 1/4
    assert dp.expert_load_from_selections(torch.tensor([[0, 1], [2, 3]]), 4)[2] == 1.0
    assert dp.expert_load_from_selections(torch.zeros(5, 1, dtype=torch.long), 4)[2] == 0.0
    # fused 3-D expert tensors count as one matrix per expert (each with its own RMS)
    model = tiny_mixtral()
    with torch.no_grad():
        experts = model.model.layers[0].mlp.experts.down_proj  # [E, hidden, inner]
        experts.fill_(1.0)
        experts[1].view(-1)[: experts[1].numel() // 2] = 1e-4
    sparsity = dp.weight_sparsity(model, thresholds=(0.01,))
    row = sparsity.names.index("0.mlp.experts.down_proj")
    assert float(sparsity.values[row, 0]) == pytest.approx(0.5 / 4)


def test_expert_load_of_a_moe_model_equals_its_router_logits():
    model = tiny_mixtral()
    routers = dp.find_routers(model)
    assert sorted(routers) == [0, 1] and all(len(r) == 1 for r in routers.values())
    ids = torch.randint(0, 128, (3, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    stats = dp.expert_load(model, ids, mask, batch_size=2)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_router_logits=True)
    real = mask.bool().reshape(-1)
    for i, logits in enumerate(out.router_logits):
        chosen = logits[real].topk(2, dim=-1).indices
        counts = torch.bincount(chosen.reshape(-1), minlength=4).double()
        torch.testing.assert_close(stats.counts[i], counts)
        f = counts / counts.sum()
        expected = max(0.0, 1 - float(f.std(correction=0) / f.mean()))
        assert float(stats.balance[i]) == pytest.approx(expected)
    assert float(stats.counts.sum()) == 2 * 2 * int(mask.sum())  # layers x top-k x real tokens
    dense = LlamaForCausalLM(llama_config("llama-tiny", vocab_size=128, num_hidden_layers=1))
    with pytest.raises(ValueError, match="no expert router"):
        dp.expert_load(dense, ids)
