"""FSDP2 (2 CPU processes, gloo) gives the single-process trajectory: AdaClip's max|g| and AdaGN's
||g|| are those of the full gradient although every rank holds a shard (see _fsdp_worker.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("_fsdp_worker.py")


@pytest.mark.distributed
def test_fsdp2_two_ranks_equal_one_process(tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*cmd, str(WORKER), str(out)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    control = results.pop("control_without_all_reduce")
    assert len(results) == 6
    for case, result in results.items():
        assert result["moved"] > 1e-3, f"{case}: training did not move the parameters"
        diff = result["difference"]
        assert diff <= 1e-12, f"{case}: FSDP2 differs from one process by {diff}"
    assert control["difference"] > 1e-6, (
        "the test cannot tell a missing all-reduce from a correct one"
    )
