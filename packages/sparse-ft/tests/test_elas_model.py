"""ELAS on a Hugging Face Llama (sparse_ft.elas): FFN width rounding, config validation and dumps,
the paper's parameter counts, apply on the meta device, save / reload through the Auto classes in a
second process (logits and warm-up counters), merge of the low-rank factors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, MistralConfig

from layerwise_core import ConfigError, llama_config
from sparse_ft import (
    ELASConfig,
    ElasLlamaConfig,
    ElasLlamaForCausalLM,
    LowRankConfig,
    LowRankLinear,
    ReLU2MLPConfig,
    apply_elas,
    merge_elas,
)

VOCAB = 64
IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def _tiny_config(**overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,  # F = ceil(1.5 * 48 / 16) * 16 = 80 with multiple_of=16
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def _tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(_tiny_config(**overrides)).eval()


def _elas(rank: int | None = 8, warmup_steps: int = 0, grad: str = "ste", **mlp) -> ELASConfig:
    return ELASConfig(
        low_rank=LowRankConfig(rank=rank),
        mlp=ReLU2MLPConfig(multiple_of=16, warmup_steps=warmup_steps, grad=grad, **mlp),
    )


def _elas_steps(model) -> dict[str, int]:
    return {n: int(b) for n, b in model.named_buffers() if n.endswith("elas_step")}


# --- FFN width ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d_ff", "multiple_of", "expected"),
    [
        # spec 2.1: SwiGLU d_ff of 60M / 130M / 350M / 1B; 1.5 d_ff = 2064, 3072, 4104, 8191.5
        (1376, 64, 2112),  # 2064 = 32.25 * 64 -> 33 * 64
        (2048, 64, 3072),  # exactly 48 * 64: not rounded
        (2736, 64, 4160),  # 4104 = 64.125 * 64 -> 65 * 64
        (5461, 64, 8192),  # 8191.5 -> 128 * 64
        (1376, 4, 2064),  # the authors' int(1.5 d_ff) where that is whole groups of 4
        (5461, 4, 8192),  # ... and 8191 (theirs) is not: 8191.5 -> 2048 * 4
    ],
)
def test_ffn_dim_rounds_up_to_multiple_of(d_ff, multiple_of, expected):
    assert ReLU2MLPConfig(multiple_of=multiple_of).ffn_dim(d_ff) == expected


def test_ffn_dim_is_exact_in_decimal():
    # 1.1 * 40 is 44.00000000000001 in floats, which a float ceil would round up to 48
    assert ReLU2MLPConfig(ffn_multiplier=1.1, multiple_of=4).ffn_dim(40) == 44
    assert ReLU2MLPConfig(ffn_multiplier=1.1, multiple_of=4).ffn_dim(41) == 48  # 45.1 -> 48


# --- config validation and dumps ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"mlp": {"multiple_of": 6}}, "multiple of 4"),
        ({"mlp": {"multiple_of": 0}}, "mlp.multiple_of"),
        ({"mlp": {"activation_sparsity": "2:8"}}, "mlp.activation_sparsity"),
        ({"mlp": {"activation_sparsity": 125}}, "mlp.activation_sparsity"),  # 2:5 in YAML 1.1
        ({"mlp": {"grad": "exact"}}, "mlp.grad"),
        ({"mlp": {"warmup_steps": -1}}, "mlp.warmup_steps"),
        ({"mlp": {"ffn_multiplier": 0}}, "mlp.ffn_multiplier"),
        ({"mlp": {"backend": "cutlass"}}, "mlp.backend"),
        ({"mlp": {"warmup_step": 3}}, "did you mean .mlp.warmup_steps"),
        ({"low_rank": 0}, "low_rank.rank"),
        ({"low_rank": True}, "not a boolean"),
        ({"mlp": None}, "changes nothing"),
        ({"mlp": None, "low_rank": {"rank": 4, "attention": False, "mlp": False}}, "nothing"),
    ],
)
def test_config_errors_name_the_field(data, words):
    with pytest.raises(ConfigError, match=words):
        ELASConfig.from_dict(data)


def test_mlp_config_matches_the_ffn_constructor():
    import inspect
    import typing

    from sparse_ft import elas_ffn

    fields = ReLU2MLPConfig.model_fields
    assert typing.get_args(fields["backend"].annotation) == elas_ffn.BACKENDS
    assert typing.get_args(fields["grad"].annotation) == elas_ffn.GRAD_MODES
    defaults = inspect.signature(elas_ffn.ELASFFN).parameters
    for name in ("warmup_steps", "grad", "backend"):
        assert fields[name].default == defaults[name].default, name
    assert ReLU2MLPConfig().sparse is defaults["sparse"].default


def test_yaml_reads_unquoted_2_4(tmp_path):
    text = "low_rank: 128\nmlp:\n  activation_sparsity: 2:4\n  grad: masked\n"
    assert yaml.safe_load(text)["mlp"]["activation_sparsity"] == 124  # YAML 1.1 base 60
    (tmp_path / "elas.yaml").write_text(text)
    cfg = ELASConfig.from_yaml(tmp_path / "elas.yaml")
    assert cfg.mlp.activation_sparsity == "2:4" and cfg.mlp.sparse
    assert cfg.low_rank == LowRankConfig(rank=128, attention=True, mlp=True)
    assert cfg.mlp.grad == "masked"
    none = ELASConfig.from_dict({"mlp": {"activation_sparsity": "none"}})
    assert not none.mlp.sparse


def test_config_dump_round_trip(tmp_path):
    cfg = ELASConfig(
        low_rank=LowRankConfig(rank=16, attention=False),
        mlp=ReLU2MLPConfig(ffn_multiplier=2.0, grad="masked", warmup_steps=7, backend="torch"),
    )
    assert ELASConfig.from_dict(cfg.to_dict()) == cfg
    assert ELASConfig.from_yaml(_write(tmp_path / "c.yaml", cfg.to_yaml())) == cfg
    assert ELASConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    swiglu = ELASConfig(low_rank=32, mlp=None)
    assert ELASConfig.from_dict(swiglu.to_dict()) == swiglu
    # the HF config carries the dump; its own dict round trip keeps it
    hf = ElasLlamaConfig(elas=cfg.to_dict(), hidden_size=32, intermediate_size=48)
    again = ElasLlamaConfig.from_dict(hf.to_dict())
    assert again.elas_config == cfg and again.to_dict()["model_type"] == "elas_llama"
    assert ElasLlamaConfig().elas_config == ELASConfig()  # no dump: the defaults


def test_hf_config_refuses_a_bad_dump():
    with pytest.raises(ValueError, match="multiple of 4"):
        ElasLlamaConfig(elas={"mlp": {"multiple_of": 10}})


def _write(path, text):
    path.write_text(text)
    return path


# --- apply_elas ---------------------------------------------------------------------------------


def _hand_count(d, layers, d_ff, vocab, rank, ffn=None):
    """LLaMA with untied embeddings, no GQA, low-rank q/k/v/o, and a low-rank SwiGLU (ffn None)
    or a low-rank squared-ReLU FFN of width ffn; r (in + out) per factorised linear."""
    attention = 4 * rank * (d + d)
    mlp = 3 * rank * (d + d_ff) if ffn is None else 2 * rank * (d + ffn)
    return 2 * vocab * d + layers * (attention + mlp + 2 * d) + d


@pytest.mark.parametrize(
    ("preset", "rank", "millions"),
    # spec 1.1 / 2.2: ELAS's parameter counts (computed with the SwiGLU d_ff) at LORO's ranks
    [
        ("llama-60m", 128, 43),
        ("llama-130m", 256, 94),
        ("llama-350m", 256, 185),
        ("llama-1b", 512, 609),
    ],
)
def test_paper_parameter_counts(preset, rank, millions):
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(preset))
    c = model.config
    apply_elas(model, ELASConfig(low_rank=rank, mlp=None))
    count = sum(p.numel() for p in model.parameters())
    d, layers, d_ff = c.hidden_size, c.num_hidden_layers, c.intermediate_size
    assert count == _hand_count(d, layers, d_ff, 32000, rank)
    assert round(count / 1e6) == millions
    # 60M by hand: 2*32000*512 + 8*(4*128*1024 + 3*128*1888 + 1024) + 512
    if preset == "llama-60m":
        assert count == 42_770_944


def test_relu2_parameter_count_60m():
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config("llama-60m"))
    apply_elas(model, ELASConfig(low_rank=128))
    ffn = model.model.layers[0].mlp
    assert ffn.up_proj.weight_out.shape == (2112, 128)  # F = 2112
    assert ffn.down_proj.weight_in.shape == (2112, 128)
    count = sum(p.numel() for p in model.parameters())
    assert count == _hand_count(512, 8, 1376, 32000, 128, ffn=2112)
    # full rank: two d x F matrices per block instead of SwiGLU's three d x d_ff
    with torch.device("meta"):
        dense = LlamaForCausalLM(llama_config("llama-60m"))
    swiglu = sum(p.numel() for p in dense.parameters())
    apply_elas(dense, ELASConfig())
    assert sum(p.numel() for p in dense.parameters()) - swiglu == 8 * (
        2 * 512 * 2112 - 3 * 512 * 1376
    )


def test_apply_replaces_the_right_modules():
    from sparse_ft.elas_ffn import ELASFFN

    model = apply_elas(_tiny_llama(), _elas(rank=8))
    assert type(model) is ElasLlamaForCausalLM and type(model.config) is ElasLlamaConfig
    block = model.model.layers[1]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert isinstance(getattr(block.self_attn, name), LowRankLinear)
    assert block.self_attn.k_proj.weight_out.shape == (16, 8)  # GQA: 2 kv heads of 8
    assert isinstance(block.mlp, ELASFFN)
    assert block.mlp.up_proj.weight_out.shape == (80, 8)
    assert isinstance(model.lm_head, torch.nn.Linear) and model.model.embed_tokens.weight.shape == (
        VOCAB,
        32,
    )
    swiglu = apply_elas(
        _tiny_llama(), ELASConfig(low_rank=LowRankConfig(rank=4, attention=False), mlp=None)
    )
    block = swiglu.model.layers[0]
    assert type(block.self_attn.q_proj) is torch.nn.Linear
    assert [type(block.mlp.gate_proj), type(block.mlp.up_proj)] == [LowRankLinear] * 2
    assert block.mlp.down_proj.weight_in.shape == (48, 4)


def test_apply_refuses_what_it_cannot_save():
    model = apply_elas(_tiny_llama(), _elas())
    with pytest.raises(ValueError, match="already an ELAS model"):
        apply_elas(model, _elas())
    with pytest.raises(ValueError, match="mlp_bias"):
        apply_elas(_tiny_llama(mlp_bias=True), _elas())
    from transformers import MistralForCausalLM

    mistral = MistralForCausalLM(
        MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
    )
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        apply_elas(mistral, _elas())
    with pytest.raises(TypeError, match="apply_elas"):
        merge_elas(_tiny_llama())


def test_apply_on_meta_then_materialise_by_name():
    from sparse_ft import set_elas_step

    cfg = _elas(rank=8)
    real = apply_elas(_tiny_llama(seed=3), cfg)
    with torch.device("meta"):
        meta = LlamaForCausalLM(_tiny_config())
    apply_elas(meta, cfg)
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    shapes = {n: t.shape for n, t in real.state_dict().items()}
    assert {n: t.shape for n, t in meta.state_dict().items()} == shapes
    meta.to_empty(device="cpu")
    with torch.no_grad():  # every parameter and buffer by name, as the integration does
        values = dict(real.named_parameters()) | dict(real.named_buffers())
        for name, tensor in [*meta.named_parameters(), *meta.named_buffers()]:
            tensor.copy_(values[name])
    set_elas_step(meta, 0)
    assert set(_elas_steps(meta).values()) == {0}
    meta.eval()
    assert torch.equal(meta(IDS).logits, real(IDS).logits)


# --- merge ---------------------------------------------------------------------------------------


def test_merge_gives_the_same_logits():
    from sparse_ft import set_elas_step

    model = apply_elas(_tiny_llama(seed=1), _elas(rank=8, warmup_steps=2))
    set_elas_step(model, 2)  # the 2:4 selector is on
    want = model(IDS).logits
    merge_elas(model)
    assert type(model) is ElasLlamaForCausalLM
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    ffn = model.model.layers[0].mlp
    assert type(ffn.up_proj) is torch.nn.Linear and ffn.up_proj.weight.shape == (80, 32)
    assert model.config.elas_config == _elas(rank=None, warmup_steps=2)
    assert set(_elas_steps(model).values()) == {2}
    torch.testing.assert_close(model(IDS).logits, want, rtol=0, atol=1e-5)


def test_merge_of_low_rank_swiglu_is_a_plain_llama():
    model = apply_elas(_tiny_llama(seed=2), ELASConfig(low_rank=4, mlp=None))
    want = model(IDS).logits
    merge_elas(model)
    assert type(model) is LlamaForCausalLM and type(model.config) is LlamaConfig
    assert "elas" not in model.config.to_dict()
    torch.testing.assert_close(model(IDS).logits, want, rtol=0, atol=1e-5)


# --- save, then load in a second process ---------------------------------------------------------

_LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cases, ids = json.loads(sys.argv[1]), torch.load(sys.argv[2])
    out = {}
    try:  # before `import sparse_ft`, transformers does not know the model type
        AutoConfig.from_pretrained(cases[0][1])
        out["unregistered"] = "loaded"
    except (ValueError, KeyError) as err:
        out["unregistered"] = str(err)
    import layerwise_core

    assert "sparse_ft" not in sys.modules
    model = layerwise_core.load_pretrained(cases[0][1])  # imports sparse_ft: config.json says so
    out["load_pretrained"] = {"class": type(model).__name__, "logits": model(ids).logits}
    import sparse_ft

    for name, path in cases:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        steps = {n: b.clone() for n, b in model.named_buffers() if n.endswith("elas_step")}
        result = {"class": type(model).__name__, "logits": model(ids).logits, "steps": steps}
        if name == "warmup":  # the switch after the reload: one more completed update
            sparse_ft.set_elas_step(model, 3)
            result["after_switch"] = model(ids).logits
        out[name] = result
    torch.save(out, sys.argv[3])
    """
)


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """Models saved here and reloaded by `AutoModelForCausalLM` in one second process."""
    from sparse_ft import set_elas_step

    root = tmp_path_factory.mktemp("elas_saved")
    models = {}
    sparse = apply_elas(_tiny_llama(seed=4), _elas(rank=8, warmup_steps=3))
    set_elas_step(sparse, 5)
    models["sparse"] = sparse
    masked = apply_elas(_tiny_llama(seed=5), _elas(rank=None, warmup_steps=0, grad="masked"))
    models["full_rank_masked"] = masked
    warmup = apply_elas(_tiny_llama(seed=6), _elas(rank=8, warmup_steps=3))
    set_elas_step(warmup, 2)  # still dense; sparse from step 3
    models["warmup"] = warmup
    models["swiglu"] = apply_elas(_tiny_llama(seed=7), ELASConfig(low_rank=4, mlp=None))
    merged = apply_elas(_tiny_llama(seed=8), _elas(rank=8, warmup_steps=1))
    set_elas_step(merged, 1)
    models["merged"] = merge_elas(merged)
    cases = []
    for name, model in models.items():
        model.save_pretrained(root / name)
        cases.append((name, str(root / name)))
    torch.save(IDS, root / "ids.pt")
    (root / "load.py").write_text(_LOADER)
    subprocess.run(
        [
            sys.executable,
            str(root / "load.py"),
            json.dumps(cases),
            str(root / "ids.pt"),
            str(root / "out.pt"),
        ],
        check=True,
        env=dict(os.environ),
        timeout=300,
    )
    return models, torch.load(root / "out.pt")


def test_unknown_model_type_without_sparse_ft(reloaded):
    _, out = reloaded
    assert "elas_llama" in out["unregistered"]


def test_load_pretrained_imports_sparse_ft(reloaded):
    models, out = reloaded
    assert out["load_pretrained"]["class"] == "ElasLlamaForCausalLM"
    assert torch.equal(out["load_pretrained"]["logits"], models["sparse"](IDS).logits)


@pytest.mark.parametrize("name", ["sparse", "full_rank_masked", "warmup", "swiglu", "merged"])
def test_reload_in_a_second_process(reloaded, name):
    models, out = reloaded
    model, got = models[name], out[name]
    assert got["class"] == "ElasLlamaForCausalLM"
    assert torch.equal(got["logits"], model(IDS).logits)
    assert {n: int(b) for n, b in got["steps"].items()} == _elas_steps(model)


def test_saved_config_json(reloaded, tmp_path):
    models, _ = reloaded
    models["sparse"].save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "elas_llama"
    assert saved["architectures"] == ["ElasLlamaForCausalLM"]
    assert ELASConfig.from_dict(saved["elas"]) == _elas(rank=8, warmup_steps=3)
    assert saved["intermediate_size"] == 48  # the SwiGLU width F is derived from
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is ElasLlamaConfig and config.elas_config == _elas(rank=8, warmup_steps=3)


def test_warmup_switch_survives_the_reload(reloaded):
    from sparse_ft import set_elas_step

    models, out = reloaded
    got = out["warmup"]
    assert set(int(b) for b in got["steps"].values()) == {2}
    model = models["warmup"]
    dense = model(IDS).logits
    set_elas_step(model, 3)
    sparse = model(IDS).logits
    set_elas_step(model, 2)
    assert not torch.allclose(sparse, dense, atol=1e-4)  # the selector drops real mass
    assert torch.equal(got["after_switch"], sparse)
