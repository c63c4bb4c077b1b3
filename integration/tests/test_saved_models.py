"""Saved models load as trained through every command, each in a fresh process: `depth-probe`,
`layerwise probe` and `layerwise eval decode` on a model trained with `objective: mdm` (whose
model type nothing registers before the command loads it), and the two probes on an LNS + Mix-LN
model and on a Chain-of-Experts model. What each command reports is compared with the same
computation on the model in this, the saving, process; the logits of the loaders with those of
that model, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

import depth_probe as dp
from layerwise.eval.decode import DecodeConfig, evaluate_decoding
from layerwise.eval.depth import validation_windows
from layerwise.train import pretrain
from layerwise_core import tiny_llama
from layerwise_core.testing import run_python

WINDOW, ROWS = 32, 2
PROMPTS = ["Thou art", "What light through yonder window", "To be"]


def _block_influence(model, tokenizer, texts) -> list[float]:
    ids, mask = dp.encode_texts(tokenizer, texts, WINDOW)
    return dp.probe(model, ids, mask).block_influence.tolist()


def _save_logits(model, folder, ids) -> None:
    with torch.no_grad():
        torch.save(model(ids).logits, folder / "expected.pt")
    torch.save(ids, folder / "ids.pt")


@pytest.fixture(scope="module")
def saved(small_data, tmp_path_factory, tiny_run):
    """Three saved models with the corpus tokenizer: an mdm run's final/, LNS + Mix-LN, CoE; the
    models as this process holds them (the masked-diffusion one read with its own class); a small
    local corpus (`jsonl:PATH`, 40 documents of Shakespeare) and the windows the commands probe."""
    from coe_moe import CoEConfig, CoEForCausalLM
    from layerwise_core.bidirectional_llama import BidirectionalLlamaForMaskedDiffusion
    from ln_scaling import apply_norm_scheme

    tmp_path = tmp_path_factory.mktemp("saved")
    tokenizer, vocab = small_data.tokenizer, len(small_data.tokenizer)
    pretrain(tiny_run(tmp_path / "mdm", "objective=mdm", "train.steps=3"), data=small_data)
    models = {"mdm": BidirectionalLlamaForMaskedDiffusion.from_pretrained(tmp_path / "mdm/final")}
    models["lns"] = apply_norm_scheme(
        tiny_llama(num_hidden_layers=4, vocab_size=vocab), "mix_ln+lns", post_ln_fraction=0.5
    )
    torch.manual_seed(0)
    coe = CoEConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        moe_intermediate_size=16,
        num_experts=4,
        top_k=2,
        expert_backend="torch",
    )
    models["coe"] = CoEForCausalLM(coe).eval()
    folders = {"mdm": tmp_path / "mdm" / "final", "lns": tmp_path / "lns", "coe": tmp_path / "coe"}
    ids = torch.stack([small_data.validation[i][:16] for i in range(2)])
    for name, model in models.items():
        if name != "mdm":
            model.save_pretrained(folders[name])
            tokenizer.save_pretrained(folders[name])
        _save_logits(model.eval(), folders[name], ids)
    from layerwise.data import load_corpus

    play = next(iter(load_corpus("shakespeare").texts("train")))
    docs = [play[i * 1500 : (i + 1) * 1500] for i in range(40)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    source = f"jsonl:{tmp_path / 'corpus.jsonl'}"
    texts = validation_windows(tokenizer, source, WINDOW, ROWS)[0]
    return models, folders, tokenizer, source, texts


_DEPTH_PROBE = """
import sys
import torch
from depth_probe.cli import load_model, main

text, out = sys.argv[1], sys.argv[2]
for folder, package in zip(sys.argv[3::2], sys.argv[4::2]):
    assert package not in sys.modules, f"{package} imported before {folder} was loaded"
    args = ["--model", folder, "--text", text, "--out", f"{out}/{package}", "--max-length", "32"]
    assert main([*args, "--rows", "2", "--no-figures"]) == 0
    with torch.no_grad():
        logits = load_model(folder)(torch.load(f"{folder}/ids.pt")).logits
    assert torch.equal(logits, torch.load(f"{folder}/expected.pt")), folder
"""


def test_depth_probe_cli_loads_each_model_as_trained(saved, tmp_path):
    models, folders, tokenizer, _, texts = saved
    text = tmp_path / "text.txt"
    text.write_text("".join(texts))  # the command cuts the same windows back out of it
    packages = {"lns": "ln_scaling", "coe": "coe_moe", "mdm": "layerwise_core.bidirectional_llama"}
    pairs = [str(x) for name in packages for x in (folders[name], packages[name])]
    run_python(_DEPTH_PROBE, text, tmp_path / "out", *pairs)
    for name, package in packages.items():
        report = json.loads((tmp_path / "out" / package / "depth_probe.json").read_text())
        texts = dp.cli.text_windows(tokenizer, text.read_text(), WINDOW, ROWS)
        assert report["probe"]["block_influence"] == _block_influence(
            models[name], tokenizer, texts
        )


_LAYERWISE = """
import sys
import torch
from layerwise.cli import main
from layerwise.train import load_saved_model

# layerwise imports every model package it trains (its dependencies); the route that imports a
# saved model's package on demand is checked through the depth-probe command above
for folder in sys.argv[2:]:
    assert main(sys.argv[1].format(folder=folder).split()) == 0
    with torch.no_grad():
        logits = load_saved_model(folder)(torch.load(f"{folder}/ids.pt")).logits
    assert torch.equal(logits, torch.load(f"{folder}/expected.pt")), folder
"""


def test_layerwise_probe_loads_each_model_as_trained(saved, tmp_path):
    models, folders, tokenizer, source, texts = saved
    command = f"probe --model {{folder}} --out {{folder}}/report --source {source}"
    names = ["mdm", "lns", "coe"]
    run_python(
        _LAYERWISE, f"{command} --max-length {WINDOW} --rows {ROWS}", *map(folders.get, names)
    )
    for name in names:
        report = json.loads((folders[name] / "report" / "depth_probe.json").read_text())
        assert report["probe"]["block_influence"] == _block_influence(
            models[name], tokenizer, texts
        )


def test_layerwise_eval_decode_loads_the_mdm_run_as_trained(saved, tmp_path):
    models, folders, tokenizer, _, _ = saved
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    overrides = "decode.steps=8 decode.block_length=8 gen_length=8"
    command = f"eval decode --model {{folder}} --prompts {prompts} --json {tmp_path}/decode.json"
    run_python(_LAYERWISE, f"{command} {overrides}", folders["mdm"])
    cfg = DecodeConfig.from_dict({}, overrides=overrides.split())
    expected = evaluate_decoding(models["mdm"], tokenizer, PROMPTS, None, cfg)
    got = json.loads((tmp_path / "decode.json").read_text())
    assert (got["outputs"], got["nfe"]) == (expected.outputs, expected.nfe)


_REGISTERS = """
import importlib, json, sys
from transformers import CONFIG_MAPPING
from layerwise_core import MODEL_PACKAGES

missing = []
for model_type, package in MODEL_PACKAGES.items():
    importlib.import_module(package.module)
    if model_type not in CONFIG_MAPPING:
        missing.append(f"{model_type}: import {package.module}")
print(json.dumps(missing))
"""


def test_every_registered_model_type_is_registered_by_the_package_it_names():
    # layerwise_core.MODEL_PACKAGES tells loaders which package to import for a model type: each
    # package, imported in a fresh interpreter, must register exactly the types it is named for
    out = run_python(_REGISTERS).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
