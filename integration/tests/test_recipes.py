"""The paper-scale recipes (layerwise.recipes, docs/recipes.md).

Each recipe validates as a PretrainConfig, says what its name says (norm scheme, optimizer,
spectral controller, objective, MLP, quantisation), trains on the paper's sequence length and
batch, and builds at full size on the meta device (no memory) with the paper's dimensions: its
parameter count equals the hand formula for those dimensions exactly and rounds to the paper's
label. The smoke runner of `nox -s gpu` is tested for its pieces that need no GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from layerwise.recipes import list_recipes, load_recipe, recipe_path, resolve_config, smoke
from layerwise_core import MissingPathError, llama_param_count

DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


@dataclass(frozen=True)
class Paper:
    """What a paper (or its reference code) states for one model: its dimensions, vocabulary rows,
    sequence length and batch (sequences per step), and the size label it gives the model."""

    hidden: int
    layers: int
    ffn: int  # SwiGLU width (dense) or the width of one expert (MoE)
    vocab: int
    seq: int
    batch: int
    label: str | None  # "130M", "1B"; None: the paper states no size
    kv_hidden: int | None = None  # grouped-query attention: key/value width
    label_matches: bool = True  # False: the reference's dimensions do not count to its label
    experts: int = 0  # MoE / CoE: routed experts (+ shared ones) and routers per layer
    routers: int = 0
    shared_experts: int = 1
    rank: int = 0  # ELAS: attention and FFN linears as two rank-r factors, squared-ReLU FFN
    heads: tuple[int, int] | None = None  # NeuroTrails: (K heads, b blocks in each head)


# GaLore's LLaMA configs (specs/ln-scaling.md table; specs/spam-opt.md: "LLaMA configs of GaLore"),
# C4 at 256 tokens x 512 sequences, t5-base vocabulary as the configs' 32000 rows
def _galore(size: str) -> Paper:
    hidden, layers, ffn, label = {
        "60m": (512, 8, 1376, "60M"),
        "130m": (768, 12, 2048, "130M"),
        "135m": (768, 12, 2048, "135M"),  # AlphaDecay / LLR call the 130M config 135M
        "250m": (768, 24, 2560, "250M"),
        "350m": (1024, 24, 2736, "350M"),
        "1b": (2048, 24, 5461, "1B"),
    }[size]
    return Paper(hidden, layers, ffn, vocab=32000, seq=256, batch=512, label=label)


PAPERS: dict[str, Paper] = {}
for _size in ("130m", "250m", "350m", "1b"):
    PAPERS[f"lns-{_size}"] = PAPERS[f"mix-ln-{_size}"] = _galore(_size)
for _size in ("60m", "135m", "350m", "1b"):
    PAPERS[f"alphadecay-{_size}"] = _galore(_size)
    # LLR (reference configs/llama_1024/*-t5.yaml): FineWeb at 1024 x 512, vocabulary 32128 rows
    PAPERS[f"llr-{_size}"] = Paper(**{**_galore(_size).__dict__, "vocab": 32128, "seq": 1024})
# the reference's LLR "60M" is hidden 768, 6 layers, ffn 1512: 84.4M parameters
PAPERS["llr-60m"] = Paper(768, 6, 1512, 32128, 1024, 512, "60M", label_matches=False)
for _size in ("60m", "130m", "350m", "1b"):
    PAPERS[f"spam-{_size}"] = PAPERS[f"stable-spam-{_size}"] = _galore(_size)
for _size in ("350m", "1b"):
    PAPERS[f"stable-spam-int4-{_size}"] = _galore(_size)
# MEAP (specs/meap.md; lit-gpt tiny_LLaMA_1b_mask): 2 key/value heads of 64, vocabulary padded
# to 32064 rows, 4096 tokens x 256 sequences
PAPERS["meap-1b"] = Paper(2048, 24, 5632, 32064, 4096, 256, "1B", kv_hidden=128)
# Chain-of-Experts (specs/coe-moe.md): hidden 1024, 4 layers, 63 routed + 1 shared experts of
# width 704, vocabulary 102400, 512 tokens x 64; C = 2 routers per layer (CoE) or 1 (MoE K=8).
# The paper's model has MLA attention and states no total: no label.
PAPERS["coe-k4c2"] = Paper(1024, 4, 704, 102400, 512, 64, None, experts=63, routers=2)
PAPERS["coe-moe-k8"] = Paper(1024, 4, 704, 102400, 512, 64, None, experts=63, routers=1)
# ELAS (specs/elas.md 2.1): GaLore's sizes with LORO's ranks; labels: the parameter counts of the
# paper's table (43M / 94M / 185M / 609M, counted with the SwiGLU width; ours with the 1.5x ReLU^2
# width rounded to 64 count 42.3M / 91.6M / 179.6M / 584.2M)
for _size, _rank, _label in (("60m", 128, "43M"), ("130m", 256, "94M"), ("350m", 256, "185M")):
    PAPERS[f"elas-{_size}"] = Paper(**{**_galore(_size).__dict__, "label": _label, "rank": _rank})
PAPERS["elas-1b"] = Paper(**{**_galore("1b").__dict__, "label": "609M", "rank": 512})
# The sparsity-vs-depth recipe (specs/studies.md A.4 / A.7): OLMoE's olmoe-1B-7B-ablation (d 1120,
# 32 layers, 64 experts of 1120, no shared expert, "7.9B total") with G = 2 (8 key/value heads of
# 70), GPT-NeoX vocabulary (len 50277), 4096 tokens x 256; its CPU twin (A.8): d 128, 24 layers,
# 8 experts of 176, 2 key/value heads of 32, BPE 4096, 256 tokens x 16 (4096 tokens per step)
PAPERS["depth-recipe-7b"] = Paper(
    1120, 32, 1120, 50277, 4096, 256, "7B", kv_hidden=560, experts=64, routers=1, shared_experts=0
)
PAPERS["depth-recipe-cpu"] = Paper(
    128, 24, 176, 4096, 256, 16, None, kv_hidden=64, experts=8, routers=1, shared_experts=0
)
# NeuroTrails (specs/neurotrails.md 3, 7, 9): GaLore's 130M split into 4 shared blocks and K = 3
# heads of 8 (label: the single model's "130M"; the multi-head net counts 296.5M); the CPU arm
# (e): d 128, 6 blocks, 3 heads of 4, BPE 2048, 128 tokens x 32
PAPERS["neurotrails-130m"] = Paper(**{**_galore("130m").__dict__, "label": None, "heads": (3, 8)})
PAPERS["neurotrails-cpu"] = Paper(128, 6, 352, 2048, 128, 32, None, heads=(3, 4))


def hand_count(paper: Paper) -> int:
    """Parameters of the paper's model, from its dimensions alone."""
    if paper.rank:  # ELAS: a d x d linear as [d, r] + [d, r]; FFN F = ceil(1.5 d_ff / 64) x 64
        d, r = paper.hidden, paper.rank
        ffn = math.ceil(1.5 * paper.ffn / 64) * 64
        block = 4 * 2 * d * r + 2 * r * (d + ffn) + 2 * d  # q k v o, up + down, two RMSNorms
        return 2 * paper.vocab * d + paper.layers * block + d
    if paper.heads:  # embedding + s shared blocks + K x (b blocks + final norm + LM head)
        d, (k, b) = paper.hidden, paper.heads
        block = 4 * d * d + 3 * d * paper.ffn + 2 * d
        return paper.vocab * d + (paper.layers - b) * block + k * (b * block + d + paper.vocab * d)
    if not paper.experts:
        return llama_param_count(
            paper.hidden, paper.layers, paper.ffn, paper.vocab, kv_hidden=paper.kv_hidden
        )
    d = paper.hidden
    attention = 2 * d * d + 2 * d * (paper.kv_hidden or d)  # q, o; k, v (grouped-query)
    experts = (paper.experts + paper.shared_experts) * 3 * d * paper.ffn  # routed + shared
    routers = paper.routers * paper.experts * d
    block = attention + experts + routers + 2 * d  # + input / post-attention RMSNorm
    return 2 * paper.vocab * d + paper.layers * block + d  # untied embeddings, final norm


def rounds_to(count: int, label: str) -> bool:
    """Whether `count` is what a paper calls `label`: "xM" within 6% (GaLore's "350M" counts
    368M); "1B" anything in [1.0B, 1.5B) (the papers' "1B" models count 1.18B and 1.34B)."""
    if label.endswith("B"):
        return 1.0e9 * float(label[:-1]) <= count < 1.5e9 * float(label[:-1])
    return abs(count / (float(label[:-1]) * 1e6) - 1) <= 0.06


def build_on_meta(name: str):
    from layerwise.models import build_model

    cfg = load_recipe(name)
    with torch.device("meta"):
        model = build_model(cfg.model, PAPERS[name].vocab, cfg.train.block_size)
    return cfg, model


def test_every_recipe_has_its_paper_entry_and_a_docs_row():
    assert sorted(PAPERS) == list_recipes()
    docs = DOCS.read_text()
    missing = [name for name in list_recipes() if f"`{name}`" not in docs]
    assert not missing, f"docs/recipes.md does not list {missing}"


def test_hand_formulas():
    # GaLore 130M by hand: embeddings 2 x 32000 x 768, per block 4 x 768^2 + 3 x 768 x 2048
    # + 2 x 768, final norm 768
    assert (
        hand_count(_galore("130m"))
        == 2 * 32000 * 768 + 12 * (4 * 768**2 + 3 * 768 * 2048 + 1536) + 768
        == 134_105_856
    )
    # MEAP: q and o 2048 x 2048, k and v 2048 x 128
    meap = PAPERS["meap-1b"]
    per_block = 2 * 2048**2 + 2 * 2048 * 128 + 3 * 2048 * 5632 + 2 * 2048
    assert hand_count(meap) == 2 * 32064 * 2048 + 24 * per_block + 2048 == 1_175_816_192
    assert rounds_to(134_105_856, "130M") and not rounds_to(84_416_256, "60M")
    assert rounds_to(1_339_082_752, "1B") and not rounds_to(0.9e9, "1B")


@pytest.mark.parametrize("name", list_recipes())
def test_full_size_model_has_the_papers_parameter_count(name):
    paper = PAPERS[name]
    _, model = build_on_meta(name)
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)  # built without memory
    count = sum(p.numel() for p in params)
    assert count == hand_count(paper)
    if paper.label is not None:
        assert rounds_to(count, paper.label) == paper.label_matches, (name, count, paper.label)
    assert model.config.hidden_size == paper.hidden
    assert model.config.num_hidden_layers == paper.layers


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_trains_on_the_papers_sequences_and_batch(name):
    cfg = load_recipe(name)
    paper = PAPERS[name]
    assert cfg.train.block_size == paper.seq
    # sequences per optimizer step on one process (the recipes say how to split it over GPUs)
    assert cfg.train.batch_size * cfg.train.grad_accum == paper.batch
    assert cfg.schedule.warmup_steps <= cfg.train.steps
    assert cfg.train.out_dir == f"runs/{name}"


# token budgets the papers state: LLR's 1B checkpoints "with 20B tokens" (reference README), MEAP's
# 1B pre-training on 200B tokens (190K steps x 256 x 4096 in meap_1b.py), the sparsity-depth recipe
# 5e9 tokens (specs/studies.md A.4) and its CPU twin 1M (A.8)
TOKENS = {"llr-1b": 20e9, "meap-1b": 200e9, "depth-recipe-7b": 5e9, "depth-recipe-cpu": 1e6}


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_recipe_trains_on_the_papers_token_budget(name):
    cfg = load_recipe(name)
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.train.grad_accum * cfg.train.block_size
    assert abs(tokens / TOKENS[name] - 1) < 0.05


def _switches(cfg) -> dict[str, str]:
    return {
        "norm": cfg.model.norm.scheme,
        "optimizer": cfg.optimizer.name,
        "spectral": cfg.spectral.name,
        "objective": cfg.objective.name,
        "mlp": cfg.model.mlp.name,
        "quant": cfg.model.quant.format,
        "low_rank": cfg.model.low_rank.enabled,
        "heads": cfg.model.heads.count,
        "density": cfg.sparsity.density,
    }


PLAIN = dict(
    norm="pre_ln",
    optimizer="adamw",
    spectral="none",
    objective="ntp",
    mlp="dense",
    quant="none",
    low_rank=False,
    heads=1,
    density=1.0,
)
SWITCHES = {  # recipe name prefix -> the switches that differ from a plain Pre-LN AdamW run
    "lns-": dict(norm="lns"),
    "mix-ln-": dict(norm="mix_ln"),
    "alphadecay-": dict(spectral="alphadecay"),
    "llr-": dict(spectral="llr"),
    "spam-": dict(optimizer="spam"),
    "stable-spam-int4-": dict(optimizer="stable_spam", quant="int4"),
    "stable-spam-": dict(optimizer="stable_spam"),
    "meap-": dict(objective="meap"),
    "coe-moe-": dict(mlp="moe"),
    "depth-recipe-": dict(mlp="moe"),
    "coe-": dict(mlp="coe"),
    "elas-": dict(optimizer="loro", mlp="relu2", low_rank=True),
    "neurotrails-": dict(heads=3, density=0.9),
}


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_switches_what_its_name_says(name):
    prefix = next(p for p in SWITCHES if name.startswith(p))
    assert _switches(load_recipe(name)) == {**PLAIN, **SWITCHES[prefix]}


def test_int4_recipes_quantise_every_block_linear_but_not_the_head():
    from layerwise_kernels.fake_quant.module import FakeQuantLinear

    for name in ("stable-spam-int4-350m", "stable-spam-int4-1b"):
        cfg, model = build_on_meta(name)
        quantised = [n for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
        assert len(quantised) == 7 * PAPERS[name].layers  # q k v o gate up down
        assert not any("lm_head" in n for n in quantised)
        assert (cfg.model.quant.weight_group_size, cfg.model.quant.act_group_size) == (256, 64)


def test_load_recipe_applies_overrides_and_refuses_unknown_names():
    cfg = load_recipe("lns-130m", ["train.steps=30000", "optimizer.lr=3e-4"])
    assert (cfg.train.steps, cfg.optimizer.lr, cfg.schedule.warmup_steps) == (30000, 3e-4, 2000)
    with pytest.raises(MissingPathError, match=r"unknown recipe 'lns-13m' \(did you mean the "):
        load_recipe("lns-13m")


def test_resolve_config_takes_a_file_or_a_recipe_name(tmp_path):
    own = tmp_path / "run.yaml"
    own.write_text("train:\n  steps: 3\n")
    assert resolve_config(str(own)) == own
    assert resolve_config("meap-1b") == resolve_config("recipe:meap-1b") == recipe_path("meap-1b")
    with pytest.raises(MissingPathError, match="neither a file nor a packaged recipe"):
        resolve_config(str(tmp_path / "missing.yaml"))


def test_cli_pretrain_takes_a_recipe_name(monkeypatch, capsys):
    import layerwise.commands.pretrain
    from layerwise.cli import main

    seen = []

    def fake_pretrain(cfg):  # stands in for the 20K-step run
        seen.append(cfg)
        return type("Result", (), {"final_eval": None})()

    monkeypatch.setattr(layerwise.commands.pretrain, "pretrain", fake_pretrain)
    assert main(["pretrain", "--config", "lns-130m", "train.seed=3"]) == 0
    assert seen == [load_recipe("lns-130m", ["train.seed=3"])]
    assert main(["pretrain", "--config", "lns-13m"]) == 2
    assert capsys.readouterr().err.startswith(
        "layerwise: error: --config 'lns-13m' is neither a file nor a packaged recipe (did you "
        "mean the recipe 'lns-130m'?)"
    )


@pytest.mark.parametrize("name", list_recipes())
def test_smoke_overrides_keep_the_recipes_model_and_micro_batch(name, tmp_path):
    recipe = load_recipe(name)
    cfg = load_recipe(name, smoke.smoke_overrides(5, tmp_path / name))
    assert cfg.model == recipe.model and cfg.optimizer.name == recipe.optimizer.name
    assert (cfg.train.block_size, cfg.train.batch_size) == (
        recipe.train.block_size,
        recipe.train.batch_size,
    )
    assert (cfg.train.steps, cfg.train.grad_accum, cfg.data.source) == (5, 1, "shakespeare")
    assert cfg.train.out_dir == str(tmp_path / name)


def test_summarize_metrics_medians_after_the_first_step():
    # steps 1..4 at 100 tokens each, 1.0 s, 0.5 s and 1.0 s for steps 2..4: rates 100, 200, 100
    records = [
        {"step": s, "split": "train", "tokens": 100 * s, "elapsed_s": t}
        for s, t in zip((1, 2, 3, 4), (5.0, 6.0, 6.5, 7.5))
    ]
    records.append({"step": 4, "split": "validation", "loss": 3.0})
    assert smoke.summarize_metrics(records) == (100.0, None, True)
    for record, rate, mfu in zip(records, (999.0, 10.0, 30.0, 20.0), (0.5, 0.1, 0.3, 0.2)):
        record.update(tokens_per_s=rate, mfu=mfu)  # the first step (warm-up) is not counted
    assert smoke.summarize_metrics(records) == (20.0, 0.2, False)
    assert smoke.summarize_metrics(records[:1]) == (None, None, False)


def test_smoke_refuses_without_cuda(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert smoke.main(["lns-130m", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerwise: error: the recipe smoke runs need a CUDA GPU")
    assert not any(tmp_path.iterdir())  # nothing ran


def test_smoke_table_reports_each_recipe():
    table = smoke.format_table(
        [
            smoke.SmokeResult("lns-130m", "ok", 5, 123456.0, 0.412),
            smoke.SmokeResult("meap-1b", "ok", 5, 9876.4, None, derived=True),
            smoke.SmokeResult("coe-k4c2", "exit 1: CUDA out of memory"),
        ],
        "NVIDIA H100",
    )
    rows = table.splitlines()[-3:]
    assert rows == [
        "| lns-130m | ok | 5 | 123,456 | 41.2% |",
        "| meap-1b | ok | 5 | 9,876 (derived) | n/a |",
        "| coe-k4c2 | exit 1: CUDA out of memory | 0 | - | n/a |",
    ]
