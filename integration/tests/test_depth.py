"""`layerwise probe` and `load_saved_model`: the model is probed as it was trained, on real text."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

import depth_probe
from depth_probe.report import encode_texts
from layerwise.cli import main
from layerwise.eval.depth import validation_windows
from layerwise.train import load_saved_model, load_trained_model, pretrain

ROWS, LENGTH = 2, 32


@pytest.fixture
def lns_run(small_data, tmp_path, tiny_run):
    """A tiny Llama trained 10 steps with LayerNorm Scaling (its final/ has no LNS in the weights)."""
    out = tmp_path / "run"
    cfg = tiny_run(out, "model.norm=lns")
    pretrain(cfg, data=small_data)
    return out / "final", cfg, small_data


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_saved_run_loads_as_trained(lns_run):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    final, cfg, _ = lns_run
    ids = torch.arange(3, 35).view(1, -1)
    ours = _logits(load_saved_model(final), ids)
    assert torch.equal(ours, _logits(load_trained_model(final, cfg.model).eval(), ids))
    # saved as model type "ln_scaling": with ln_scaling imported the Auto classes restore LNS
    assert torch.equal(ours, _logits(AutoModelForCausalLM.from_pretrained(final).eval(), ids))
    plain = _logits(LlamaForCausalLM.from_pretrained(final).eval(), ids)
    assert (ours - plain).abs().max() > 1e-3  # the stock class by name: no LNS, other logits


def test_saved_model_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_saved_model(tmp_path)


def test_probe_command_reports_the_trained_model(lns_run, tmp_path, capsys):
    final, cfg, data = lns_run
    out = tmp_path / "depth"
    args = ["probe", "--model", str(final), "--out", str(out), "--sweep"]
    assert main([*args, "--rows", str(ROWS), "--max-length", str(LENGTH)]) == 0
    assert str(out / "depth_probe.md") in capsys.readouterr().out
    saved = json.loads((out / "depth_probe.json").read_text())
    assert saved["command"].startswith("layerwise probe --model")

    # single-pass metrics: the first ROWS windows of the validation text, model with LNS
    model = load_trained_model(final, cfg.model).eval()
    texts, held = validation_windows(data.tokenizer, data.corpus, LENGTH, ROWS, held_out=True)
    assert texts == validation_windows(data.tokenizer, data.corpus, LENGTH, ROWS)[0]
    ids, mask = encode_texts(data.tokenizer, texts, LENGTH)
    expected = depth_probe.block_influence(model, ids, mask)
    assert saved["probe"]["block_influence"] == pytest.approx(expected.tolist(), abs=1e-6)

    # sweeps: perplexity of the next ROWS windows of the same text (held out), by hand
    joined = "\n\n".join(data.corpus.texts("validation"))
    tokens = data.tokenizer(joined, add_special_tokens=False)["input_ids"]
    assert held[0] == data.tokenizer.decode(tokens[ROWS * LENGTH : (ROWS + 1) * LENGTH])
    assert held[0] != texts[0]
    hids, hmask = encode_texts(data.tokenizer, held, LENGTH)
    logits = _logits(model, hids)[:, :-1]
    nll = F.cross_entropy(logits.transpose(1, 2), hids[:, 1:], reduction="none")
    keep = hmask[:, 1:].bool() & hmask[:, :-1].bool()
    by_hand = math.exp(nll[keep].mean().item())
    single = next(s for s in saved["sweeps"] if s["kind"] == "single_layer")
    assert single["baseline"]["val_ppl"] == pytest.approx(by_hand, rel=1e-5)
    assert single["removals"] == [[0], [1]]
    assert all(math.isfinite(v) and v != by_hand for v in single["scores"]["val_ppl"])


def test_probe_command_bad_input(tmp_path, capsys):
    assert main(["probe", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
