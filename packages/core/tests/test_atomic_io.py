"""Atomic checkpoint writes: a crash between temp write and rename leaves the old file intact;
files get the user's umask; loads never run code from a file."""

import os
import pickle
import stat

import pytest
import torch

from layerwise_core import (
    CheckpointFileError,
    atomic_write,
    load_safetensors,
    save_safetensors,
    torch_load_safe,
    torch_save_atomic,
)


class Poison:
    """Unpickling this calls os.mkdir(marker): the way a malicious checkpoint runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


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
    assert torch_load_safe(path) == {"step": 1}
    assert len(list(tmp_path.iterdir())) == 1
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")


def test_poisoned_pickles_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "marker"
    zipped, raw = tmp_path / "optimizer.pt", tmp_path / "raw.pt"
    torch.save({"state": {0: {"exp_avg": torch.ones(2)}}, "x": Poison(marker)}, zipped)
    raw.write_bytes(pickle.dumps(Poison(marker)))
    reasons = []
    for path in (zipped, raw):
        with pytest.raises(CheckpointFileError) as err:
            torch_load_safe(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message and "refused" in message
        assert not marker.exists()
        reasons.append(message)
    assert "GLOBAL posix.mkdir" in reasons[0]  # names what it refused
    # the poison is real: an unrestricted load runs it
    torch.load(zipped, weights_only=False)
    assert marker.is_dir()


def test_unreadable_files_are_named_in_one_line(tmp_path):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x80\x04 not a safetensors header")
    with pytest.raises(CheckpointFileError, match="model.safetensors is not a readable"):
        load_safetensors(junk)
    truncated = tmp_path / "optimizer.pt"
    torch_save_atomic({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointFileError, match="optimizer.pt is not a readable torch file"):
        torch_load_safe(truncated)


def test_optimizer_and_scheduler_states_load_weights_only(tmp_path):
    """torch.optim state dicts (tensors, ints, floats, tuples, None) need no pickled objects."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    w.sum().backward()
    opt.step()
    sched.step()
    torch_save_atomic(
        {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / "o.pt"
    )
    loaded = torch_load_safe(tmp_path / "o.pt")
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], opt.state[w]["exp_avg"])
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert loaded["scheduler"]["last_epoch"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        torch_save_atomic({"step": 1}, tmp_path / "s.pt")
        with atomic_write(tmp_path / "t.json", "w") as handle:
            handle.write("{}")
        with open(tmp_path / "plain", "w") as handle:  # what open() gives: the reference
            handle.write("x")
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("w.safetensors", "s.pt", "t.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
