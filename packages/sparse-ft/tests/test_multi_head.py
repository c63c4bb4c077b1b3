"""The NeuroTrails multi-head Llama (sparse_ft.multi_head) against hand-derived values and against
transformers' own LlamaForCausalLM (spec neurotrails.md section 10, items 6, 7, 8 and 11)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from layerwise_core import UsageError
from sparse_ft.multi_head import (
    HeadsConfig,
    MultiHeadConfig,
    MultiHeadForCausalLM,
    combine_logits,
    default_blocks_in_head,
    head_disagreement,
)

V, D, FF, L = 61, 32, 48, 4


def _llama_config(**overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=L,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return LlamaConfig(**(fields | overrides))


def _model(seed: int = 0, attn: str = "sdpa", **heads) -> MultiHeadForCausalLM:
    torch.manual_seed(seed)
    config = MultiHeadConfig.from_llama(_llama_config(), **heads)
    config._attn_implementation = attn
    return MultiHeadForCausalLM(config).eval()


def _ids(seed: int = 1, batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0 left-padded by 3, row 1 right-padded by 2."""
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    mask[1, -2:] = 0
    return _ids(), mask


def _randomise_norms(model: torch.nn.Module, seed: int = 7) -> None:
    """Norm weights away from 1: with unit weights norm(norm(h)) = norm(h) up to eps."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)


# --- item 6: the head split -------------------------------------------------------------------


def test_forward_gives_one_logit_tensor_per_head():
    model = _model(num_output_heads=3, blocks_in_head=2)
    out = model(_ids())
    assert len(out.head_logits) == 3
    assert all(z.shape == (2, 9, V) for z in out.head_logits)
    assert out.logits.shape == (2, 9, V)
    assert out.loss is None and out.head_losses is None


def test_parameters_backbone_once_each_head_its_blocks_norm_and_lm_head():
    model = _model(num_output_heads=3, blocks_in_head=2)
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == len(set(names))
    layer_params = [n for n, _ in LlamaDecoderLayer(_llama_config(), 0).named_parameters()]
    backbone = ["model.embed_tokens.weight"] + [
        f"model.layers.{i}.{p}" for i in range(2) for p in layer_params
    ]
    heads = [
        name
        for k in range(3)
        for name in [f"heads.{k}.layers.{j}.{p}" for j in range(2) for p in layer_params]
        + [f"heads.{k}.norm.weight", f"heads.{k}.lm_head.weight"]
    ]
    assert sorted(names) == sorted(backbone + heads)
    # counted by hand: a block has 4 d^2 (q, k, v, o) + 3 d f (SwiGLU) + 2 d (norms) weights;
    # V d (embedding) + s blocks + K (b blocks + d + V d)
    block = 4 * D * D + 3 * D * FF + 2 * D
    assert block == 8768
    assert model.num_parameters() == V * D + 2 * block + 3 * (2 * block + D + V * D) == 78048
    # independent initialisations: head 0 and head 1 differ
    assert not torch.equal(model.heads[0].lm_head.weight, model.heads[1].lm_head.weight)
    assert not torch.equal(
        model.heads[0].layers[0].mlp.up_proj.weight, model.heads[1].layers[0].mlp.up_proj.weight
    )


@pytest.mark.parametrize("blocks", [L, 0, L + 1, -1])
def test_split_without_shared_or_head_blocks_raises(blocks):
    with pytest.raises(ValueError, match="blocks_in_head"):
        MultiHeadConfig.from_llama(_llama_config(), blocks_in_head=blocks)


def test_official_default_split():
    assert [default_blocks_in_head(n) for n in (12, 24, 6, 4)] == [8, 16, 4, 3]
    config = MultiHeadConfig.from_llama(_llama_config(num_hidden_layers=12))
    assert (config.head_blocks, config.shared_blocks, config.num_output_heads) == (8, 4, 3)
    with pytest.raises(ValueError, match="blocks_in_head"):  # L = 1: round(2/3) = 1 = L
        MultiHeadConfig.from_llama(_llama_config(num_hidden_layers=1))


def test_decoder_layers_backbone_then_heads():
    model = _model(num_output_heads=3, blocks_in_head=3)
    layers = model.decoder_layers()
    expected = [model.model.layers[0]] + [h.layers[j] for h in model.heads for j in range(3)]
    assert len(layers) == 1 + 3 * 3
    assert all(a is b for a, b in zip(layers, expected, strict=True))
    ensemble = _model(num_output_heads=2, ensemble=True)
    assert len(ensemble.decoder_layers()) == 2 * L
    assert all(isinstance(layer, LlamaDecoderLayer) for layer in ensemble.decoder_layers())


# --- items 6 and 11: the official double norm -------------------------------------------------


def test_reference_quirks_apply_the_final_norm_twice():
    clean = _model(num_output_heads=2, blocks_in_head=2)
    _randomise_norms(clean)
    quirky = _model(num_output_heads=2, blocks_in_head=2, reference_quirks=True)
    quirky.load_state_dict(clean.state_dict())
    ids = _ids()
    captured = []
    hook = quirky.heads[1].norm.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        got = quirky(ids).head_logits[1]
        want_clean = clean(ids).head_logits[1]
    hook.remove()
    head = quirky.heads[1]
    h = captured[0]  # the head's last block output (the first of the two norm calls)
    with torch.no_grad():
        assert torch.allclose(got, head.lm_head(head.norm(head.norm(h))), atol=1e-6, rtol=0)
        assert torch.allclose(want_clean, head.lm_head(head.norm(h)), atol=1e-6, rtol=0)
    assert (got - want_clean).abs().max() > 1e-2  # item 11: the quirk changes the logits


def test_clean_mode_is_the_default():
    assert MultiHeadConfig().reference_quirks is False
    assert HeadsConfig().reference_quirks is False
    assert HeadsConfig(count=3).multi_head_config(_llama_config()).reference_quirks is False


# --- item 7: the loss and the combined prediction ---------------------------------------------


def test_training_loss_is_the_sum_of_head_losses_and_eval_loss_uses_mean_logits():
    model = _model(num_output_heads=2, blocks_in_head=2)
    ids = _ids()
    labels = ids.clone()
    labels[0, 4] = -100  # ignored
    out = model(ids, labels=labels)
    z1, z2 = out.head_logits

    def ce(z):  # next-token CE: position t predicts token t + 1
        return F.cross_entropy(z[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))

    assert torch.allclose(out.head_losses, torch.stack([ce(z1), ce(z2)]), atol=1e-6)
    assert torch.allclose(out.loss, ce(z1) + ce(z2), atol=1e-6)  # the sum, not the mean
    assert torch.allclose(out.logits, (z1 + z2) / 2, atol=1e-7)
    eval_loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert torch.allclose(eval_loss, ce((z1 + z2) / 2), atol=1e-6)
    assert not torch.allclose(eval_loss, out.loss / 2, atol=1e-4)


def test_probability_and_logit_combination_on_a_hand_example():
    # two heads, two classes, target 0: z1 = [2, 0], z2 = [0, 0]
    heads = [torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[0.0, 0.0]]])]
    target = torch.tensor([0])
    nll_logits = F.cross_entropy(combine_logits(heads, "logits")[0], target)
    nll_probs = F.nll_loss(combine_logits(heads, "probs")[0], target)
    # mean logits [1, 0]: -log(e / (e + 1)) = log(1 + e^-1)
    assert nll_logits.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # mean probabilities of class 0: (e^2 / (e^2 + 1) + 1/2) / 2
    p0 = (math.exp(2) / (math.exp(2) + 1) + 0.5) / 2
    assert nll_probs.item() == pytest.approx(-math.log(p0), abs=1e-6)
    assert abs(nll_probs.item() - nll_logits.item()) > 0.05
    with pytest.raises(ValueError, match="combine mode"):
        combine_logits(heads, "votes")


def test_probs_mode_model_output_is_the_log_mean_probability():
    model = _model(num_output_heads=3, blocks_in_head=1, combine="probs")
    out = model(_ids())
    mean_probs = torch.stack([z.softmax(-1) for z in out.head_logits]).mean(0)
    assert torch.allclose(out.logits.exp(), mean_probs, atol=1e-6)


# --- item 8: disagreement ---------------------------------------------------------------------


def _one_hot_logits(predictions):
    return [F.one_hot(torch.tensor(p), 3).float() for p in predictions]


def test_head_disagreement_hand_values():
    assert head_disagreement(_one_hot_logits([[0, 1, 1], [0, 1, 2]])) == pytest.approx(1 / 3)
    # three heads: pairs (0,1) 1/3, (0,2) 0, (1,2) 1/3 -> 2/9 (the official K x K mean: 4/27)
    three = _one_hot_logits([[0, 1, 1], [0, 1, 2], [0, 1, 1]])
    assert head_disagreement(three) == pytest.approx(2 / 9)
    mask = torch.tensor([True, True, False])  # the differing position left out
    assert head_disagreement(three, mask) == 0.0
    with pytest.raises(ValueError, match="2 heads"):
        head_disagreement(three[:1])


# --- export and the ensemble against transformers' LlamaForCausalLM ---------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_export_head_equals_the_head_with_padding(attn):
    model = _model(num_output_heads=3, blocks_in_head=3, attn=attn)
    _randomise_norms(model)
    ids, mask = _padded()
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        unmasked = model(ids).head_logits[2]
        for k in range(3):
            single = model.export_head(k)
            assert type(single) is LlamaForCausalLM and type(single.config) is LlamaConfig
            want = single(ids, attention_mask=mask).logits
            real = mask.bool()
            assert torch.allclose(out.head_logits[k][real], want[real], atol=1e-6, rtol=0)
    # the mask is used: row 0's real tokens see no left padding
    assert not torch.allclose(out.head_logits[2][0, 3:], unmasked[0, 3:], atol=1e-4)


def test_export_head_refuses_the_double_norm_and_unknown_heads():
    model = _model(num_output_heads=2, blocks_in_head=2, reference_quirks=True)
    with pytest.raises(UsageError, match="reference_quirks"):
        model.export_head(0)
    with pytest.raises(UsageError, match="heads 0..1"):
        _model(num_output_heads=2, blocks_in_head=2).export_head(2)


def test_ensemble_equals_independent_llamas():
    model = _model(num_output_heads=3, ensemble=True)
    assert not any(name.startswith("model.") for name, _ in model.named_parameters())
    single_config = model.config.llama_config()
    singles = []
    for head in model.heads:
        single = LlamaForCausalLM(single_config).eval()
        state = {
            (name if name.startswith("lm_head") else f"model.{name}"): value
            for name, value in head.state_dict().items()
        }
        single.load_state_dict(state, strict=True)
        singles.append(single)
    assert model.num_parameters() == 3 * singles[0].num_parameters()
    ids, mask = _padded()
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=ids)
        refs = [single(ids, attention_mask=mask, labels=ids) for single in singles]
    real = mask.bool()
    for got, ref in zip(out.head_logits, refs, strict=True):
        assert torch.allclose(got[real], ref.logits[real], atol=1e-6, rtol=0)
    with torch.no_grad():  # export_head of a member is that member
        exported = model.export_head(1)(ids, attention_mask=mask).logits
    assert torch.allclose(exported[real], refs[1].logits[real], atol=1e-6, rtol=0)
    # transformers' own causal-LM loss, summed over the members
    assert torch.allclose(out.loss, sum(ref.loss for ref in refs), atol=1e-5)
    # the members are independent models: embeddings differ
    assert not torch.equal(model.heads[0].embed_tokens.weight, model.heads[1].embed_tokens.weight)


def test_no_kv_cache():
    with pytest.raises(UsageError, match="use_cache=False"):
        _model(num_output_heads=2, blocks_in_head=2)(_ids(), use_cache=True)


# --- HeadsConfig ------------------------------------------------------------------------------


def test_heads_config_shorthand_and_fields():
    assert HeadsConfig.model_validate(3) == HeadsConfig(count=3)
    assert HeadsConfig.model_validate(3).enabled and not HeadsConfig().enabled
    with pytest.raises(ValueError, match="boolean"):
        HeadsConfig.model_validate(True)
    with pytest.raises(ValueError, match="blocks_in_head"):
        HeadsConfig(count=3, blocks_in_head=0)
    config = HeadsConfig(count=2, blocks_in_head="all", combine="probs").multi_head_config(
        _llama_config()
    )
    assert (config.ensemble, config.num_output_heads, config.combine) == (True, 2, "probs")
    with pytest.raises(ValueError, match="blocks_in_head"):
        HeadsConfig(count=2, blocks_in_head=L).build(_llama_config())
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        HeadsConfig(count=2).build(_llama_config(tie_word_embeddings=True))


@pytest.mark.parametrize(
    "fields",
    [
        {"blocks_in_head": 4},
        {"blocks_in_head": "all"},
        {"combine": "probs"},
        {"reference_quirks": True},
    ],
)
def test_one_head_refuses_the_head_fields_it_would_ignore(fields):
    """count 1 builds a plain model: a head field off its default is refused, naming the fix;
    the defaults, and the same fields with count 2, are accepted."""
    with pytest.raises(ValueError, match=r"ignores (\w+): set model.heads.count > 1, or drop"):
        HeadsConfig(count=1, **fields)
    defaults = {"blocks_in_head": None, "combine": "logits", "reference_quirks": False}
    assert HeadsConfig(count=1, **defaults) == HeadsConfig.model_validate(1)
    assert HeadsConfig(count=2, **fields).count == 2
    # `heads: 1` replaces a mapping whole (the study's single arm over a {count 3, b 4} base)
    assert HeadsConfig.model_validate(1).blocks_in_head is None


def test_heads_config_builds_on_the_meta_device():
    with torch.device("meta"):
        model = HeadsConfig(count=3, blocks_in_head=2).build(_llama_config())
    assert isinstance(model, MultiHeadForCausalLM)
    assert all(param.is_meta for param in model.parameters())
    assert model.config.shared_blocks == 2 and len(model.heads[2].layers) == 2
    # what layerwise's init_model_weights needs to recompute RoPE after a meta build
    rotary = model.rotary_emb
    assert rotary.rope_type == "default" and rotary.config is model.config


# --- save / load in a second process ----------------------------------------------------------

_LOADER = """
import json, sys
import torch
import sparse_ft.multi_head  # registers model type multi_head_llama
from transformers import AutoModelForCausalLM

paths, ids_path, out_path = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
ids, mask = torch.load(ids_path)
out = {}
for name, path in paths.items():
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        result = model(ids, attention_mask=mask)
    out[name] = {
        "class": type(model).__name__,
        "logits": result.logits,
        "head_logits": torch.stack(result.head_logits),
        "fields": [model.config.num_output_heads, model.config.blocks_in_head,
                   model.config.ensemble, model.config.combine, model.config.reference_quirks],
    }
torch.save(out, out_path)
"""


def test_save_pretrained_reloads_in_a_second_process(tmp_path):
    models = {
        "heads": _model(num_output_heads=3, blocks_in_head=2, combine="probs"),
        "quirks": _model(num_output_heads=2, blocks_in_head=3, reference_quirks=True),
        "ensemble": _model(num_output_heads=2, ensemble=True),
    }
    paths = {}
    for name, model in models.items():
        _randomise_norms(model)
        model.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    saved = json.loads((tmp_path / "heads" / "config.json").read_text())
    assert saved["model_type"] == "multi_head_llama"
    ids, mask = _padded()
    torch.save((ids, mask), tmp_path / "ids.pt")
    (tmp_path / "load.py").write_text(_LOADER)
    subprocess.run(
        [
            sys.executable,
            str(tmp_path / "load.py"),
            json.dumps(paths),
            str(tmp_path / "ids.pt"),
            str(tmp_path / "out.pt"),
        ],
        check=True,
        # the child matmuls with this process's thread count (bitwise comparable)
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        timeout=300,
    )
    reloaded = torch.load(tmp_path / "out.pt")
    for name, model in models.items():
        got = reloaded[name]
        with torch.no_grad():
            want = model(ids, attention_mask=mask)
        config = model.config
        assert got["class"] == "MultiHeadForCausalLM"
        assert got["fields"] == [
            config.num_output_heads,
            config.blocks_in_head,
            config.ensemble,
            config.combine,
            config.reference_quirks,
        ]
        assert torch.equal(got["head_logits"], torch.stack(want.head_logits))
        assert torch.equal(got["logits"], want.logits)
