import json

import pytest
import torch

import depth_probe as dp
from depth_probe.cli import main
from layerwise_core import tiny_bidirectional, tiny_llama

TEXTS = ["the cat sat on the mat", "1 plus 2 is 3 the dog sat on a mat", "3 plus 4 is 7"]


def test_report_writes_json_markdown_and_figures_that_match_the_probe(tmp_path, tokenizer):
    model = tiny_llama(num_hidden_layers=4, vocab_size=40)
    ids, mask = dp.encode_texts(tokenizer, TEXTS, max_length=8)
    scorers = [
        dp.PerplexityScorer(ids, mask),
        dp.ExactMatchScorer(tokenizer, ["1 plus 2 is"], ["3"], max_new_tokens=1),
    ]
    result = dp.report(
        model,
        tokenizer,
        TEXTS,
        tmp_path,
        max_length=8,
        scorers=scorers,
        title="T",
        with_skip_effect=True,
    )
    payload = json.loads((tmp_path / "depth_probe.json").read_text())
    direct = dp.probe(model, ids, mask)
    assert payload["probe"]["block_influence"] == pytest.approx(direct.block_influence.tolist())
    assert payload["probe"]["num_tokens"] == int(mask.sum())
    kinds = [s["kind"] for s in payload["sweeps"]]
    assert kinds == ["single_layer", "lowest_influence", "angular_best_block"]
    single = payload["sweeps"][0]
    assert single["scores"]["perplexity"][2] == pytest.approx(
        dp.single_layer_sweep(model, scorers[:1]).scores["perplexity"][2]
    )
    markdown = (tmp_path / "depth_probe.md").read_text()
    assert markdown.startswith("# T")
    assert "## Removal sweep: single_layer" in markdown
    for name in (
        "per_layer",
        "angular_distance",
        "logit_lens",
        "cka",
        "similarity",
        "massive_activations",
        "sweep_single_layer",
        "skip_effect",
    ):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in markdown
    skip = dp.skip_effect(model, ids[:2, :6], positions=[3])  # shortest text: 6 tokens
    assert payload["skip_effect"]["output_change"] == pytest.approx(skip.output_change.tolist())
    assert "## Skip effect" in markdown
    assert set(result.files) >= {tmp_path / "depth_probe.json", tmp_path / "depth_probe.md"}


def test_cli_on_a_saved_masked_diffusion_model(tmp_path, tokenizer):
    model = tiny_bidirectional(num_hidden_layers=3, vocab_size=40, mask_token_id=39)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(TEXTS * 10))
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"prompt": "1 plus 2 is", "answer": "3"}\n')
    code = main(
        [
            "--model",
            str(tmp_path / "model"),
            "--text",
            str(text),
            "--out",
            str(tmp_path / "out"),
            "--max-length",
            "12",
            "--rows",
            "2",
            "--sweep",
            "--qa",
            str(qa),
            "--no-figures",
        ]
    )
    assert code == 0
    payload = json.loads((tmp_path / "out" / "depth_probe.json").read_text())
    assert payload["probe"]["num_layers"] == 3
    assert payload["probe"]["num_tokens"] == 24
    assert set(payload["sweeps"][0]["scores"]) == {"perplexity", "exact_match"}
    assert payload["command"].startswith("depth-probe ")
    assert not list((tmp_path / "out").glob("*.png"))
    assert torch.isfinite(torch.tensor(payload["probe"]["block_influence"])).all()
