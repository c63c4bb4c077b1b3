"""The quickstart recipe: arms share data, seed and order; the report carries their numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from layerwise.quickstart import (
    QuickstartConfig,
    RunResult,
    _depth_table,
    run_quickstart,
    unigram_perplexity,
)
from layerwise.train import read_metrics


def test_unigram_perplexity_by_hand():
    train = torch.tensor([0, 0, 0, 1])  # add-one counts over vocab 3: [4, 2, 1] / 7
    target = torch.tensor([0, 2])
    expected = math.exp(-(math.log(4 / 7) + math.log(1 / 7)) / 2)
    assert unigram_perplexity(train, target, vocab=3) == pytest.approx(expected)


def test_depth_table_with_runs_of_different_depth():
    def run(name, bi, ppl, full):
        return RunResult(name, 1, 1, 1, 0.0, 1.0, 1, 0.0, bi, ppl, full)

    table = _depth_table([run("a", [0.9, 0.1], [50.0, 12.0], 10.0), run("b", [0.8], [40.0], 9.0)])
    lines = table.strip().splitlines()
    assert "| none (full model) | - | - | 10.0 | 9.0 |" in lines
    assert "| 0 | 0.900 | 0.800 | 50.0 | 40.0 |" in lines
    assert "| 1 | 0.100 |  | 12.0 |  |" in lines  # run b has no layer 1
    assert _depth_table([run("c", None, None, None)]) == ""


def test_default_recipe_and_overrides_merge_into_it():
    cfg = QuickstartConfig.from_dict({}, ["base.train.steps=20", "base.schedule.warmup_steps=5"])
    assert cfg.base.train.steps == 20
    assert cfg.base.model.overrides["hidden_size"] == 256  # from the packaged recipe
    assert [run.name for run in cfg.runs] == ["pre_ln", "lns"]


def test_runs_share_data_and_seed(small_data, tmp_path, capsys):
    cfg = QuickstartConfig.from_dict(
        {
            "base": {
                "data": {"vocab_size": 512, "max_documents": 20},
                "model": {"overrides": {"hidden_size": 64, "intermediate_size": 128}},
                "schedule": {"warmup_steps": 2},
                "train": {
                    "steps": 6,
                    "batch_size": 4,
                    "block_size": 64,
                    "eval_every": 3,
                    "eval_batches": 2,
                    "log_every": 2,
                },
            },
            "runs": [
                {"name": "a"},
                {"name": "a_again"},
                {"name": "higher_lr", "overrides": ["optimizer.lr=1e-2"]},
                {"name": "lns", "overrides": ["model.norm=lns"]},
            ],
            "eval_all_validation": False,
        }
    )
    results = {r.name: r for r in run_quickstart(cfg, tmp_path / "qs")}
    assert results["a"].val_loss == results["a_again"].val_loss  # same data, seed and order
    assert results["a"].val_loss != results["higher_lr"].val_loss  # one change, one difference
    assert results["a"].val_tokens == 2 * 4 * 64

    report = (tmp_path / "qs" / "report.md").read_text()
    for r in results.values():
        assert f"| {r.name} | " in report and f"{r.val_perplexity:.2f}" in report
    assert (tmp_path / "qs" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "qs" / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["a", "a_again", "higher_lr", "lns"]
    # the reported score is that of the model as trained (LNS re-applied on reload): it equals
    # the last validation the training loop logged on the same blocks
    for name, result in results.items():
        last = [r for r in read_metrics(tmp_path / "qs" / name) if r["split"] == "validation"][-1]
        assert result.val_loss == pytest.approx(last["loss"], abs=1e-5), name
    assert "unigram baseline" in capsys.readouterr().out

    # a depth report of every final model, as trained, on validation windows of block_size tokens
    import depth_probe
    from depth_probe.report import encode_texts
    from layerwise.eval.depth import validation_windows
    from layerwise.train import load_trained_model

    assert "How each run uses its depth" in report
    windows, _ = validation_windows(small_data.tokenizer, small_data.corpus, 64, cfg.depth_rows)
    ids, mask = encode_texts(small_data.tokenizer, windows, 64)
    for run in cfg.runs:
        folder = tmp_path / "qs" / run.name
        probed = json.loads((folder / "depth" / "depth_probe.json").read_text())
        run_cfg = cfg.base.with_overrides(run.overrides)
        model = load_trained_model(folder / "final", run_cfg.model).eval()
        expected = depth_probe.block_influence(model, ids, mask).tolist()
        assert probed["probe"]["block_influence"] == pytest.approx(expected, abs=1e-6)
        assert results[run.name].block_influence == probed["probe"]["block_influence"]
        assert len(results[run.name].removal_perplexity) == model.config.num_hidden_layers
        [single] = [s for s in probed["sweeps"] if s["kind"] == "single_layer"]
        assert results[run.name].probe_perplexity == single["baseline"]["val_ppl"]
        [full_row] = [line for line in report.splitlines() if line.startswith("| none (full")]
        assert f" {single['baseline']['val_ppl']:.1f} |" in full_row
        assert f"[{run.name}]({run.name}/depth/depth_probe.md)" in report
    assert results["a"].removal_perplexity == results["a_again"].removal_perplexity
    assert results["a"].block_influence != results["lns"].block_influence
