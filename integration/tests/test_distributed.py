"""2 processes with half the per-process batch == 1 process with the full batch (DDP, launched by
`accelerate launch`: the same process group as torchrun's, which test_fsdp.py uses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import yaml

from layerwise.train import pretrain, read_metrics, read_model_state
from layerwise_core.testing import assert_close

STEPS = 4


def _params(out_dir):
    return read_model_state(out_dir / "checkpoints" / f"step_{STEPS}")


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.distributed
def test_torchrun_two_processes_match_one(small_data, tmp_path, tiny_run):
    common = (
        f"train.steps={STEPS}",
        "train.grad_accum=2",
        "schedule.warmup_steps=1",
        "train.eval_batches=2",
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(tiny_run(tmp_path / "ddp", *common, "train.batch_size=2").to_dict())
    )
    with socket.socket() as probe:  # a free rendezvous port: parallel test runs do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # on CPU: 2 gloo processes (`--cpu` would run one)
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "layerwise.cli",
        "pretrain",
        "--config",
        str(config),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("validation loss") == 1  # printed by rank 0 only

    # one process, same global batch: 4 blocks x 2 micro-batches
    pretrain(tiny_run(tmp_path / "single", *common, "train.batch_size=4"), data=small_data)
    # one process, half the global batch: what the 2-process run would be without DDP
    pretrain(tiny_run(tmp_path / "half", *common, "train.batch_size=2"), data=small_data)

    ddp, single, half = (
        _params(tmp_path / "ddp"),
        _params(tmp_path / "single"),
        _params(tmp_path / "half"),
    )
    for name in single:  # fp32 tolerance: atol 1e-5, rtol 1e-4 (measured max difference ~5e-6)
        assert_close(ddp[name], single[name])
    assert _max_diff(half, single) > 100 * 1e-5  # the tolerance tells a different batch apart

    ddp_log, single_log = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    assert [r["tokens"] for r in ddp_log] == [r["tokens"] for r in single_log]
    for a, b in zip(ddp_log, single_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
