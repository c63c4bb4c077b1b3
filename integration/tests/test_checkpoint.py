"""Checkpoints (torch.distributed.checkpoint, one process here; 2 processes in test_fsdp.py): a write
that fails midway leaves the previous checkpoint and `latest` intact; a load reproduces the model
and optimizer; SPAM's sparse moments survive the dense round trip; an old-format checkpoint is
refused with what to do."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import layerwise.train.checkpoint as ckpt
from layerwise.train import (
    latest_checkpoint,
    load_checkpoint,
    load_training_state,
    read_model_state,
    save_checkpoint,
)
from layerwise_core import CheckpointFileError


class _Net(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.full((4, 3), value))
        self.b = nn.Parameter(torch.arange(3.0))


def _trained(value: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    net = _Net(value)
    optimizer = torch.optim.AdamW(net.parameters(), lr=value)
    (net.w.sum() + net.b.square().sum()).backward()
    optimizer.step()
    optimizer.zero_grad()
    return net, optimizer


def _save(root, step, value):
    net, optimizer = _trained(value)
    return save_checkpoint(
        root,
        step,
        model=net,
        optimizer=optimizer,
        scheduler_state={"scheduler": {"last_epoch": step}},
        trainer_state={"data": {"epoch": 0, "index": step, "seed": 0}},
        config_yaml=f"train:\n  steps: {step}\n",
    )


def _failing_writer(failing: str, monkeypatch) -> None:
    """Make the first call of `failing` write part of a file, then raise (a full disk)."""
    if failing == "dcp":

        class HalfWriter(ckpt.FileSystemWriter):
            def write_data(self, plan, planner):
                (self.path / "__0_0.distcp").write_bytes(b"\x00" * 100)
                raise OSError("No space left on device")

        monkeypatch.setattr(ckpt, "FileSystemWriter", HalfWriter)
        return

    def half_written(*args, **kwargs):
        target = args[0] if failing == "atomic_write" else args[1]
        with open(str(target) + ".partial", "wb") as handle:
            handle.write(b"\x00" * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt, failing, half_written)


@pytest.mark.parametrize("failing", ["dcp", "torch_save_atomic", "atomic_write"])
def test_failure_midway_keeps_previous_checkpoint(tmp_path, monkeypatch, failing):
    root = tmp_path / "checkpoints"
    _save(root, 1, 1.0)
    before = {p.relative_to(root): p.read_bytes() for p in (root / "step_1").rglob("*.*")}

    _failing_writer(failing, monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        _save(root, 2, 2.0)
    monkeypatch.undo()

    assert (root / "latest").read_text().strip() == "step_1"
    assert latest_checkpoint(root) == root / "step_1"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1"]  # no step_2, no temp
    assert {p.relative_to(root): p.read_bytes() for p in (root / "step_1").rglob("*.*")} == before
    assert torch.equal(read_model_state(root / "step_1")["w"], _trained(1.0)[0].w.detach())
    assert load_checkpoint(root / "step_1", restore_rng=False).trainer_state["data"]["index"] == 1

    _save(root, 2, 2.0)  # the next attempt succeeds and moves the pointer
    assert latest_checkpoint(root) == root / "step_2"
    assert load_checkpoint(root / "step_2", restore_rng=False).scheduler_state == {
        "scheduler": {"last_epoch": 2}
    }


def test_stale_temp_folder_is_replaced_and_dangling_pointer_reported(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".step_3.tmp" / "state").mkdir(parents=True)
    (root / ".step_3.tmp" / "state" / "__0_0.distcp").write_bytes(b"garbage from a crash")
    _save(root, 3, 3.0)
    assert read_model_state(root / "step_3")["w"][0, 0] == _trained(3.0)[0].w[0, 0]
    (root / "latest").write_text("step_9\n")
    with pytest.raises(FileNotFoundError, match="step_9"):
        latest_checkpoint(root)


def test_load_training_state_restores_model_and_optimizer_exactly(tmp_path):
    root = tmp_path / "checkpoints"
    folder = _save(root, 1, 0.5)
    net, optimizer = _trained(0.5)
    fresh = _Net(9.0)  # other values, an optimizer that never stepped
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    load_training_state(folder, fresh, fresh_optimizer)
    assert torch.equal(fresh.w, net.w) and torch.equal(fresh.b, net.b)
    want, got = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert want["param_groups"] == got["param_groups"]
    for index, state in want["state"].items():
        for key, value in state.items():
            assert torch.equal(got["state"][index][key], value), (index, key)


def test_spam_sparse_moments_round_trip_through_the_dense_checkpoint(tmp_path):
    from spam_opt import SPAM

    def build():
        torch.manual_seed(0)  # the same masks
        net = nn.Linear(8, 6)
        groups = [{"params": [net.weight], "density": 0.25}, {"params": [net.bias]}]
        return net, SPAM(groups, lr=1e-2, warmup_steps=1)

    net, optimizer = build()
    for _ in range(3):
        net(torch.randn(5, 8)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    compressed = optimizer.state[net.weight]["exp_avg"]
    assert compressed.shape == (int(8 * 6 * 0.25),)  # the masked entries only
    folder = save_checkpoint(
        tmp_path,
        3,
        model=net,
        optimizer=optimizer,
        scheduler_state={},
        trainer_state={},
        config_yaml="{}\n",
    )
    dense = read_model_state(folder)  # the model part; the moments are checked through a load
    assert torch.equal(dense["weight"], net.weight.detach())
    fresh, fresh_optimizer = build()
    load_training_state(folder, fresh, fresh_optimizer)
    got = fresh_optimizer.state[fresh.weight]
    mask = optimizer.state[net.weight]["mask"]
    assert torch.equal(got["mask"], mask)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(got[key], optimizer.state[net.weight][key]), key
    assert optimizer.state[net.weight]["exp_avg"] is compressed  # the saved optimizer untouched


def test_a_checkpoint_of_the_earlier_format_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "step_4"  # what layerwise 0.1 wrote
    old.mkdir()
    (old / "trainer_state.json").write_text(json.dumps({"step": 4, "data": {}}))
    (old / "model.safetensors").write_bytes(b"weights")
    (old / "optimizer.pt").write_bytes(b"state")
    with pytest.raises(CheckpointFileError) as err:
        load_checkpoint(old, restore_rng=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(old) in message and "model.safetensors + optimizer.pt" in message
    assert "train.overwrite=true" in message and "version that started it" in message
