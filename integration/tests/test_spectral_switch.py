"""`spectral: alphadecay | llr` in the pre-training loop: alphas recomputed on schedule and logged,
and a run stopped and resumed continues exactly (controller state in the checkpoint)."""

import pytest
import torch

from layerwise.train import pretrain, read_metrics, read_model_state
from layerwise.train.metrics import TIMING_FIELDS


@pytest.mark.parametrize("method", ["alphadecay", "llr"])
def test_spectral_run_logs_alphas_and_resumes_exactly(small_data, tmp_path, tiny_run, method):
    common = (
        f"spectral.name={method}",
        "spectral.interval=4",
        "spectral.min_eigs=8",
        # LLR only: adapt during the first half, each new peak reached in 2 steps
        *(["spectral.ramp_steps=2", "spectral.active_fraction=0.5"] if method == "llr" else []),
        "train.steps=12",
        "train.save_every=6",
        "optimizer.weight_decay=0.1",
        "model.overrides.hidden_size=32",
        "model.overrides.intermediate_size=64",
    )
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(tiny_run(straight, *common), data=small_data)
    pretrain(tiny_run(resumed, *common), stop_at=6, data=small_data)
    torch.manual_seed(7)
    pretrain(tiny_run(resumed, *common, "train.resume=true"), data=small_data)

    records = [r for r in read_metrics(straight) if r["split"] == "spectral"]
    expected_steps = [1, 4, 8, 12] if method == "alphadecay" else [1, 4]  # llr freezes at 50%
    assert [r["step"] for r in records] == expected_steps
    assert any(key.startswith("alpha/model.layers.0.") for key in records[0])

    def timeless(folder):
        return [
            {k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(folder)
        ]

    assert timeless(straight) == timeless(resumed)  # losses, LRs and logged alphas
    a = read_model_state(straight / "checkpoints" / "step_12")
    b = read_model_state(resumed / "checkpoints" / "step_12")
    assert all(torch.equal(a[k], b[k]) for k in a)
