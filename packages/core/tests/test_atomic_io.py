"""Atomic checkpoint writes: a crash between temp write and rename leaves the old file intact."""

import os

import pytest
import torch

from layerwise_core import atomic_write, load_safetensors, save_safetensors, torch_save_atomic


def test_safetensors_round_trip_with_metadata(tmp_path):
    base = torch.randn(4, 3)
    tensors = {
        "a": base,
        "b": base.t(),
        "c": base[1:3],
        "i": torch.arange(5),
    }  # shared + non-contiguous
    save_safetensors(tensors, tmp_path / "x.safetensors", metadata={"step": "7"})
    loaded, meta = load_safetensors(tmp_path / "x.safetensors")
    assert meta == {"step": "7"}
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)
    with pytest.raises(TypeError, match="must be str"):
        save_safetensors(tensors, tmp_path / "y.safetensors", metadata={"step": 7})


def test_crash_before_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_safetensors({"w": torch.zeros(3)}, path)

    def crash(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        save_safetensors({"w": torch.ones(3)}, path)
    monkeypatch.undo()
    loaded, _ = load_safetensors(path)
    assert torch.equal(loaded["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp left


def test_exception_inside_atomic_write(tmp_path):
    path = tmp_path / "state.pt"
    torch_save_atomic({"step": 1}, path)
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write(b"half")
        raise RuntimeError("interrupted")
    assert torch.load(path) == {"step": 1}
    assert len(list(tmp_path.iterdir())) == 1
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")
