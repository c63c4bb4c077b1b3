"""The `layerwise` command: YAML + dotted overrides, errors that name the field."""

from __future__ import annotations

import yaml

from layerwise.cli import main
from layerwise.train import PretrainConfig, read_metrics


def _config_file(tmp_path, tiny_run):
    path = tmp_path / "run.yaml"
    cfg = tiny_run(tmp_path / "out").to_dict()
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pretrain_with_overrides(small_data, tmp_path, capsys, tiny_run):
    path = _config_file(tmp_path, tiny_run)
    code = main(
        [
            "pretrain",
            "--config",
            str(path),
            "train.steps=3",
            "optimizer.lr=2e-3",
            f"train.out_dir={tmp_path / 'cli'}",
        ]
    )
    assert code == 0
    assert "step 3: validation loss" in capsys.readouterr().out
    saved = PretrainConfig.from_yaml(tmp_path / "cli" / "config.yaml")
    assert (saved.train.steps, saved.optimizer.lr) == (3, 2e-3)
    assert saved.train.batch_size == 4  # untouched fields come from the file
    assert [r["step"] for r in read_metrics(tmp_path / "cli") if r["split"] == "train"] == [1, 2, 3]
    assert read_metrics(tmp_path / "cli")[0]["lr"] == 2e-3 / 2  # warm-up step 1 of 2


def test_unknown_field_is_named(tmp_path, capsys, tiny_run):
    path = _config_file(tmp_path, tiny_run)
    assert main(["pretrain", "--config", str(path), "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'train.stepz'" in err
    assert "did you mean 'train.steps'" in err
    assert not (tmp_path / "out").exists()  # nothing ran

    assert main(["pretrain", "--config", str(path), "model.norm=post_ln"]) == 2
    assert "model.norm" in capsys.readouterr().err
