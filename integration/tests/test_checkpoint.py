"""A checkpoint write that fails midway leaves the previous checkpoint and `latest` intact."""

from __future__ import annotations

import pytest
import torch

from layerwise.train import latest_checkpoint, load_checkpoint, save_checkpoint


def _save(root, step, value):
    return save_checkpoint(
        root,
        step,
        model_state={"w": torch.full((4, 3), float(value)), "b": torch.arange(3.0)},
        optimizer_state={
            "optimizer": {"state": {}, "lr": value},
            "scheduler": {"last_epoch": step},
        },
        trainer_state={"data": {"epoch": 0, "index": step, "seed": 0}},
        config_yaml=f"train:\n  steps: {step}\n",
    )


@pytest.mark.parametrize("failing", ["save_safetensors", "torch_save_atomic", "atomic_write"])
def test_failure_midway_keeps_previous_checkpoint(tmp_path, monkeypatch, failing):
    root = tmp_path / "checkpoints"
    _save(root, 1, 1.0)
    before = {p.name: p.read_bytes() for p in (root / "step_1").iterdir()}

    import layerwise.train.checkpoint as ckpt

    real = getattr(ckpt, failing)
    # torch_save_atomic writes the RNG state first: fail on the optimizer state, its 2nd call
    fail_on_call = {"save_safetensors": 1, "torch_save_atomic": 2, "atomic_write": 1}[failing]
    calls = {"n": 0}

    def half_written(*args, **kwargs):  # write part of a file, then die
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            target = args[0] if failing == "atomic_write" else args[1]
            with open(str(target) + ".partial", "wb") as handle:
                handle.write(b"\x00" * 100)
            raise OSError("No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, failing, half_written)
    with pytest.raises(OSError, match="No space left"):
        _save(root, 2, 2.0)
    monkeypatch.undo()

    assert (root / "latest").read_text().strip() == "step_1"
    assert latest_checkpoint(root) == root / "step_1"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1"]  # no step_2, no temp
    assert {p.name: p.read_bytes() for p in (root / "step_1").iterdir()} == before
    loaded = load_checkpoint(root / "step_1", restore_rng=False)
    assert torch.equal(loaded.model_state["w"], torch.full((4, 3), 1.0))
    assert loaded.trainer_state["data"]["index"] == 1

    _save(root, 2, 2.0)  # the next attempt succeeds and moves the pointer
    assert latest_checkpoint(root) == root / "step_2"
    assert (
        load_checkpoint(root / "step_2", restore_rng=False).optimizer_state["optimizer"]["lr"]
        == 2.0
    )


def test_stale_temp_folder_is_replaced_and_dangling_pointer_reported(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".step_3.tmp").mkdir(parents=True)
    (root / ".step_3.tmp" / "model.safetensors").write_bytes(b"garbage from a crash")
    _save(root, 3, 3.0)
    assert load_checkpoint(root / "step_3", restore_rng=False).model_state["w"][0, 0] == 3.0
    (root / "latest").write_text("step_9\n")
    with pytest.raises(FileNotFoundError, match="step_9"):
        latest_checkpoint(root)
